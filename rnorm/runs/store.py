"""The folders of training runs: where a run lives (:func:`run_path` under :func:`runs_root`), a finished
run loaded and checked against its key (:func:`load_run`, :class:`Run`), and the archive of published runs
(``models/``) that runs are copied from instead of trained again (:func:`publish_run`,
:func:`restore_published`, :func:`find_run`)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import _io
from .._validate import ConfigError
from ..hardware import resolve_device
from .config import RunConfig, build_model


class RunError(RuntimeError):
    """A run folder cannot be used: not writable, incomplete, or its files do not match its key."""


def runs_root(runs_dir=None) -> Path:
    """The runs folder: ``runs_dir``, else ``$RNORM_RUNS``, else ``./runs`` (absolute)."""
    if runs_dir is None:
        runs_dir = os.environ.get("RNORM_RUNS") or "runs"
    return Path(os.path.expanduser(os.fspath(runs_dir))).absolute()


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check a file can be written in it; else a :class:`RunError` saying how to fix it."""
    hint = "pass runs_dir=... or set RNORM_RUNS to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"runs folder {str(folder)!r} cannot be created ({e.strerror or e}); {hint}.") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunError(f"runs folder {str(folder)!r} is not writable ({e.strerror or e}); {hint}.") from None


@dataclass
class Run:
    """A finished training run: its config, folder, per-epoch history and environment."""

    config: RunConfig
    path: Path
    history: "object"  # pandas.DataFrame
    environment: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.config.key()

    def state_dict(self) -> dict:
        """The final weights (loaded with ``weights_only=True`` and checked against the key)."""
        blob = _torch_load(self.path / "model.pt")
        if not isinstance(blob, dict) or "model" not in blob:
            raise RunError(_damaged(self.path / "model.pt", "it holds no weights"))
        if blob.get("config_key") != self.key:
            raise RunError(f"{self.path / 'model.pt'} belongs to config {blob.get('config_key')!r}, "
                           f"not to this run's {self.key!r}; delete the folder and train again.")
        return blob["model"]

    def model(self, device="cpu") -> torch.nn.Module:
        """The trained model on ``device``, in ``eval()`` mode (inference through the main branch)."""
        dev = resolve_device(device)
        m = build_model(self.config)
        m.load_state_dict(self.state_dict())
        return m.to(dev).eval()

    def __repr__(self) -> str:
        return f"Run({self.config.folder_name()!r}, epochs={len(self.history)}, path={str(self.path)!r})"


def run_path(config: RunConfig, runs_dir=None) -> Path:
    """The folder of ``config``'s run under :func:`runs_root` (whether or not it exists)."""
    return runs_root(runs_dir) / config.folder_name()


def is_complete(path) -> bool:
    """True when the run in ``path`` is marked done (its files are checked by :func:`load_run`)."""
    return (Path(path) / "done").exists()


#: The files a finished run must have; :func:`load_run` refuses a done run that lacks or garbles one.
FINISHED_FILES = ("config.json", "history.csv", "model.pt")


def _damaged(file: Path, why: str) -> str:
    return (f"run file {file} is damaged ({why}). Delete the folder {file.parent} and the run will be trained "
            f"again from scratch; nothing else is affected.")


def _torch_load(file: Path):
    """``torch.load(weights_only=True)`` that names a truncated or foreign file instead of torch's message."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(_damaged(file, "the file is missing")) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle errors, foreign objects...
        raise RunError(_damaged(file, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")) from None


def _read_config(path: Path) -> RunConfig:
    try:
        d = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{path} has no config.json; it is not a run folder.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(_damaged(path / "config.json", f"not valid JSON: {exc}")) from None
    try:
        cfg = RunConfig.from_dict(d)
    except ConfigError as exc:
        raise RunError(_damaged(path / "config.json", str(exc))) from None
    if not path.name.endswith("-" + cfg.key()):
        raise RunError(f"{path / 'config.json'} hashes to {cfg.key()!r}, which does not match the folder "
                       f"name {path.name!r}; the folder was edited or renamed. Delete it and train again.")
    return cfg


def _read_history(path: Path):
    import pandas as pd

    f = path / "history.csv"
    if not f.exists():
        return pd.DataFrame()
    try:
        return _io.read_csv_exact(f)
    except Exception as exc:  # noqa: BLE001 - pandas parser errors of a hand-edited file
        raise RunError(_damaged(f, f"{type(exc).__name__}: {exc}")) from None


def load_run(path) -> Run:
    """Load a finished run from its folder (checks that config, folder name and weights agree)."""
    path = Path(path).absolute()
    cfg = _read_config(path)
    if not is_complete(path):
        raise RunError(f"run {path} is not complete (no 'done' marker); call rnorm.runs.train(config) to "
                       f"finish it.")
    for name in FINISHED_FILES[1:]:
        if not (path / name).is_file():
            raise RunError(_damaged(path / name, "the run is marked done but the file is missing"))
    env = {}
    if (path / "environment.json").exists():
        try:
            env = json.loads((path / "environment.json").read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RunError(_damaged(path / "environment.json", f"not valid JSON: {exc}")) from None
    run = Run(cfg, path, _read_history(path), env)
    if len(run.history) != cfg.epochs or "loss" not in run.history:
        raise RunError(_damaged(path / "history.csv", f"it holds {len(run.history)} epoch row(s) for a run of "
                                                      f"{cfg.epochs} epoch(s)"))
    run.state_dict()  # the weights load and carry the run's key
    return run


def find_run(config: RunConfig, runs_dir=None, *, archive=None) -> Run | None:
    """The finished run of ``config`` under ``runs_dir`` (restored from the archive when only
    published there, see :func:`restore_published`), or None if absent or incomplete."""
    path = run_path(config, runs_dir)
    if not is_complete(path) and not (path / "lock").exists():
        restore_published(config, path, archive=archive)
    return load_run(path) if is_complete(path) else None


#: The files of a finished run that are published: enough to load, evaluate and audit it
#: (no optimizer checkpoint, no evaluation caches).
PUBLISHED_FILES = ("config.json", "environment.json", "history.csv", "model.pt")


ARCHIVE_README = """# Published training runs

Each folder is one finished training run of the published book, named `<name>-<key>` like the
folders under `RNORM_RUNS`, holding its configuration, environment, per-epoch history and final
weights (no optimizer state). `rnorm.runs.train` and `find_run` copy a run from here into
`RNORM_RUNS` instead of training it again when the key matches exactly, so the notebooks can be
re-executed with new evaluation parameters without hours of training. Written by
`rnorm publish --profile PROFILE`; a run here is always complete (the files are copied only after
training finished). Set `RNORM_ARCHIVE` to use other folders (`os.pathsep`-separated), or to an
empty string to use none.
"""


def archive_roots(archive=None) -> list[Path]:
    """Folders searched for published runs: ``archive`` (a path or a list), else ``$RNORM_ARCHIVE``
    (``os.pathsep``-separated; empty: none), else the repository's ``models/`` folder if it exists."""
    if archive is None:
        env = os.environ.get("RNORM_ARCHIVE")
        if env is None:
            default = Path(__file__).resolve().parents[2] / "models"
            return [default] if default.is_dir() else []
        archive = [p for p in env.split(os.pathsep) if p]
    if isinstance(archive, (str, os.PathLike)):
        archive = [archive]
    return [Path(os.path.expanduser(os.fspath(a))).absolute() for a in archive]


def publish_run(run: Run, archive) -> Path:
    """Copy the published files of the finished ``run`` into ``<archive>/<folder>/``, all or nothing
    (staged beside the target, then renamed into place); returns the folder."""
    import shutil

    if not is_complete(run.path):
        raise RunError(f"run {run.path} is not complete; only finished runs are published.")
    run.state_dict()  # refuses weights that do not belong to the key
    root = Path(archive).absolute()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "README.md").exists():
        _io.atomic_write_text(root / "README.md", ARCHIVE_README)
    target = root / run.path.name
    staged = Path(tempfile.mkdtemp(dir=root, prefix=f".{run.path.name}."))
    try:
        for name in PUBLISHED_FILES:
            if (run.path / name).exists():
                shutil.copy2(run.path / name, staged / name)
        _io.replace_dir(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def restore_published(config: RunConfig, path: Path, *, archive=None) -> bool:
    """Copy the published run of ``config`` from the first archive that has it into ``path`` and mark
    it done; True if it did. The archived config must hash to the folder name and the weights must
    carry the key, or :class:`RunError` names the damaged file. A run being trained (a checkpoint in
    ``path``) is left alone."""
    import shutil

    if (path / "checkpoint.pt").exists():
        return False
    for root in archive_roots(archive):
        src = root / config.folder_name()
        if not (src / "model.pt").is_file():
            continue
        if _read_config(src) != config:  # pragma: no cover - the folder name carries the key
            raise RunError(f"{src / 'config.json'} does not describe this run.")
        blob = _torch_load(src / "model.pt")
        if not isinstance(blob, dict) or blob.get("config_key") != config.key():
            raise RunError(_damaged(src / "model.pt", f"its weights do not carry the key {config.key()!r}"))
        path.mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED_FILES:
            if (src / name).exists():
                tmp = path / f".{name}.tmp"
                shutil.copy2(src / name, tmp)
                os.replace(tmp, path / name)
        _io.atomic_write_text(path / "done", f"restored from {src}\n")
        return True
    return False
