"""Where a notebook's results go and what made them: :class:`ResultsDir` and ``provenance.json``.

This is the book pipeline's layer, not the library's: a results folder records the notebook's key
(:func:`rnorm.book.notebook_key`) and the profile its parameters match
(:func:`rnorm.book.matching_profile`). :meth:`ResultsDir.save` writes all of a
:class:`rnorm.results.StudyResult` -- ``<frame>.csv``, ``summary.csv``, ``summary.json``, each
figure as PDF, SVG and PNG beside the CSV it was drawn from, and ``provenance.json`` -- into a
staging folder and then puts that folder in place of the old one in one step
(:func:`rnorm._io.replace_dir`): a failure part-way never leaves old and new files mixed.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from ._io import FileLock, atomic_write_text, replace_dir
from .results import RESULTS_ROOT_ENV, StudyResult, results_root


class ResultsDir:
    """The results folder of one notebook; its parent is created and checked writable on construction.

    Given the notebook's parameters, the notebook's key (:func:`rnorm.book.notebook_key`) is taken
    now, at the start, so that results record the source and code they were computed with even if
    a file is edited while the notebook runs.
    """

    def __init__(self, notebook: str, root=None, params=None):
        self.notebook = notebook
        self.path = results_root(root) / notebook
        self.key = _key(notebook, params.as_dict() if hasattr(params, "as_dict") else params) \
            if params is not None else None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path.parent, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise PermissionError(f"results folder {self.path.parent} is not writable ({e.strerror}); set "
                                  f"{RESULTS_ROOT_ENV} or the notebook's results_dir to a writable folder.") from None
        self.started = time.time()

    def save(self, result: StudyResult, *, extra: dict | None = None) -> Path:
        """Write all of ``result`` (plus ``extra`` JSON files by name) into the folder, all or nothing
        (one save at a time per notebook: a lock file beside the folder)."""
        with FileLock(self.path.parent / f".{self.notebook}.save.lock", poll=0.2):
            return self._save(result, extra)

    def _save(self, result: StudyResult, extra: dict | None) -> Path:
        from .plots import save as save_figure

        staged = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.notebook}.staged-"))
        try:
            for name, frame in result.frames.items():
                atomic_write_text(staged / f"{name}.csv", frame.to_csv(index=False))
            atomic_write_text(staged / "summary.csv", result.summary.to_csv(index=False))
            _write_json(staged / "summary.json", result.headline)
            for name, obj in (extra or {}).items():
                _write_json(staged / f"{name}.json", obj)
            for name, (fig, data) in result.figures.items():
                save_figure(fig, staged / name, data=data)
            params = result.params.as_dict() if hasattr(result.params, "as_dict") else dict(result.params)
            _write_json(staged / "provenance.json", provenance(self.notebook, params, device=result.device,
                                                               runs=result.run_records(), key=self.key,
                                                               wall_seconds=time.time() - self.started))
            for f in staged.iterdir():
                os.chmod(f, 0o644)
            os.chmod(staged, 0o755)
            replace_dir(staged, self.path)
        except BaseException:
            import shutil
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return self.path


def _key(notebook: str, params: dict) -> str | None:
    from .book import notebook_key
    try:
        return notebook_key(notebook, params)
    except FileNotFoundError:  # rnorm installed without its notebooks: the book cannot be kept up to date
        return None


def provenance(notebook: str, params: dict, *, device=None, runs=None, wall_seconds=None, key=None) -> dict:
    """What made a results folder: the matching profile, the parameters, their key, code and machine."""
    from .book import matching_profile
    from .hardware import environment
    key = key or _key(notebook, params)
    return {
        "notebook": notebook,
        "profile": matching_profile(notebook, params),
        "parameters": params,
        "key": key,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "device": device,
        "environment": environment(device),
        "python": platform.python_version(),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
        "runs": runs or [],
    }


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable, allow_nan=True) + "\n")


def git_commit() -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("rnorm", "torch", "torchvision", "torchattacks", "numpy", "pandas", "papermill", "myst-nb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


__all__ = ["ResultsDir", "provenance", "git_commit", "package_versions"]
