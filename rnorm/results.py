"""Where a notebook's results go: ``book/results/<notebook>/`` with data, figures and provenance.

:class:`ResultsDir` writes tidy CSV/JSON files and figures (PDF, SVG, PNG via
:func:`rnorm.plots.save`) atomically, and ``provenance.json``: the profile, the parameters, the
git commit, package versions, device and wall time of the run that made them.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd

from ._io import atomic_write_text

RESULTS_ROOT_ENV = "RNORM_RESULTS"


def results_root(root=None) -> Path:
    """``root``, else ``$RNORM_RESULTS``, else ``book/results`` under the current directory."""
    return Path(root or os.environ.get(RESULTS_ROOT_ENV) or "book/results")


class ResultsDir:
    """The results folder of one notebook; created (and checked writable) on construction."""

    def __init__(self, notebook: str, root=None):
        self.notebook = notebook
        self.path = results_root(root) / notebook
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise PermissionError(f"results folder {self.path} is not writable ({e.strerror}); set "
                                  f"{RESULTS_ROOT_ENV} or the notebook's results_dir to a writable folder.") from None
        self.started = time.time()

    def csv(self, name: str, frame: pd.DataFrame) -> Path:
        target = self.path / f"{name}.csv"
        atomic_write_text(target, frame.to_csv(index=False))
        return target

    def json(self, name: str, obj) -> Path:
        target = self.path / f"{name}.json"
        atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
        return target

    def figure(self, name: str, fig, data: pd.DataFrame | None = None) -> list[Path]:
        from .plots import save
        return save(fig, self.path / name, data=data)

    def provenance(self, params: dict, profile: str | None = None, device: str | None = None,
                   runs: list | None = None) -> Path:
        """Write ``provenance.json`` for this notebook's run."""
        return self.json("provenance", {
            "notebook": self.notebook,
            "profile": profile,
            "parameters": params,
            "git_commit": git_commit(),
            "versions": package_versions(),
            "device": device,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "wall_seconds": round(time.time() - self.started, 1),
            "runs": runs or [],
        })


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
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
