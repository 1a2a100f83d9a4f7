"""Training runs keyed by the hash of their configuration: train once, reuse everywhere.

``train(RunConfig(...))`` trains a model (or returns the finished run if it exists) in
``<runs_dir>/<name>-<key>/``, where ``runs_dir`` is the argument, else ``$RNORM_RUNS``, else
``./runs``, ``name`` is readable (``fashion_mnist-resnet18w16-bn-standard-e1-s0``) and ``key`` is
12 hex digits of the sha256 of the canonical JSON of the config and :data:`SCHEMA_VERSION`.
Device, threads and progress display are not part of the key.

A run folder holds:

``config.json``       the configuration (``RunConfig.from_dict`` reads it back)
``environment.json``  torch version, device, threads, CPU name and flags, precision (resolved),
                      memory layout (``channels_last``), rnorm version, ``trained_by`` (host, pid)
``history.csv``       one row per epoch: ``epoch``, ``loss`` (the loss minimized), per
                      branch ``loss_<b>`` and ``acc_<b>`` (training accuracy on that slice), ``lr``
                      (at the epoch's first step), ``images``, ``test_acc`` (clean accuracy of the
                      main branch on a fixed 1,000-image stratified test subset, population
                      statistics: a learning curve for "epochs to an accuracy"; nothing is chosen
                      on it), ``val_acc`` (the same on the held-out images, when ``holdout > 0``:
                      what a learning-rate sweep selects on), and the timing columns
                      ``images_per_s`` (clean training images per second, attacks included),
                      ``epoch_seconds``, ``wall_seconds`` (cumulative training time)
``checkpoint.pt``     written atomically at the end of every epoch: model, optimizer and
                      scheduler state, epoch, RNG states, history, config key
``model.pt``, ``done`` the final weights and the completion marker
``lock``              present while a process trains the run (pid, host); see :class:`rnorm._io.FileLock`

Reproducibility: the model is initialised from ``seed``; every epoch reseeds the global torch RNG
from ``(seed, epoch)`` and draws data order and augmentation from ``(seed, epoch)``
(:func:`rnorm.data.batches`), so a run resumed from a checkpoint at an epoch boundary ends with
the same weights and history (timing columns aside) as an uninterrupted run on CPU (same thread
count). A training subset (``train_subset=n``) is a stratified sample drawn with a fixed seed (0),
the same for every ``seed``, so a seed sweep measures training randomness, not which images.
``holdout=k`` first sets aside a stratified sample of ``k`` training images (also seed 0) for
validation; the run trains on the rest.

Schema 2 (this version) renamed ``subset`` to ``train_subset``, added ``holdout`` and
``loss_weighting``, made ``precision`` default to ``"auto"`` (resolved before hashing, so the key
holds ``fp32`` or ``bf16``) and moved ``channels_last`` out of the key into :func:`train`.
Every file is loadable with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import _io
from . import hardware
from .hardware import resolve_device  # re-exported: runs.resolve_device is public
from . import train as _train
from ._validate import ConfigError, check_bool, check_choice, check_float, check_int, suggest
from .norms import NORMS, SHARE_MODES

SCHEMA_VERSION = 2
TIMING_COLUMNS = ("images_per_s", "epoch_seconds", "wall_seconds")
NORM_NAMES = tuple(NORMS)
_SUBSET_SEED = 0


class RunError(RuntimeError):
    """A run folder cannot be used: not writable, incomplete, or its files do not match its key."""


def _datasets() -> tuple[str, ...]:
    from .data import DATASETS
    return tuple(DATASETS)


def _archs() -> tuple[str, ...]:
    from .models import ARCHS
    return ARCHS


def _check_eps(name: str, value) -> float:
    if isinstance(value, str):
        from .attacks import parse_eps
        try:
            value = parse_eps(value)
        except ConfigError:
            raise ConfigError(f"{name}={value!r} is not a number in [0, 1]; write e.g. 0.03 or '8/255'.") from None
    return check_float(name, value, min_value=0.0, max_value=1.0)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a trained model. Validated on construction.

    Fields: ``dataset`` (``fashion_mnist``, ``cifar10``, ``cifar10_jpeg``), ``arch``
    (``resnet18``, ``resnet50``, ``resnet20``), ``width`` (base channels), ``norm`` (``bn``,
    ``robustnorm``, ``multibn``, ``none``), ``norm_p`` (RobustNorm's power, > 0; used only by
    ``robustnorm``), ``share`` (multibn ablation ``none``/``affine``/``stats``; only with
    ``multibn``), ``recipe`` (see :data:`rnorm.train.RECIPES`; ``advprop``, ``ebn`` and
    ``advprop_ebn`` need ``norm="multibn"``, whose branches the recipe decides), ``epochs``,
    ``batch_size``, ``lr``, ``momentum``, ``weight_decay``, ``schedule`` (``cosine``, ``step``:
    x0.1 at 50 % and 75 % of training, ``constant``; stepped per iteration), ``warmup_epochs``
    (linear warmup), ``train_eps`` (L-inf radius in [0, 1]; ``"8/255"`` accepted), ``train_steps``,
    ``train_alpha`` (None: ``2.5 * eps / steps``), ``attack_stats`` (``batch`` or ``population``:
    the statistics the training attacks see), ``loss_weighting`` (``mean``: the mean over the
    recipe's slices of their mean cross-entropies, so every recipe takes gradient steps of the
    same scale at one learning rate -- this equals the AdvProp reference implementation's mean
    over the concatenated batch; ``sum``: the sum of the per-slice means, as the AdvProp/EBN
    equations are written, an effective learning rate 2x (3x) larger for two (three) slices),
    ``seed``, ``precision`` (``auto``, ``fp32``, ``bf16`` autocast; ``auto`` is resolved on
    construction by :func:`rnorm.hardware.resolve_precision`, so the stored value and the key are
    always ``fp32`` or ``bf16``), ``train_subset`` (None or number of training images),
    ``holdout`` (training images set aside for validation), ``augment`` (None: the dataset's
    default).
    """

    dataset: str = "fashion_mnist"
    arch: str = "resnet18"
    width: int = 16
    norm: str = "bn"
    norm_p: float = 0.2
    share: str = "none"
    recipe: str = "standard"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int = 0
    train_eps: float = 8 / 255
    train_steps: int = 5
    train_alpha: float | None = None
    attack_stats: str = "batch"
    loss_weighting: str = "mean"
    seed: int = 0
    precision: str = "auto"
    train_subset: int | None = None
    holdout: int = 0
    augment: bool | None = None

    def __post_init__(self):
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        check_choice("dataset", self.dataset, _datasets())
        check_choice("arch", self.arch, _archs())
        s("width", check_int("width", self.width, min_value=1))
        check_choice("norm", self.norm, NORM_NAMES)
        s("norm_p", check_float("norm_p", self.norm_p, min_value=0.0, min_inclusive=False))
        check_choice("share", self.share, SHARE_MODES)
        if self.share != "none" and self.norm != "multibn":
            raise ConfigError(f"share={self.share!r} applies only to norm='multibn' (got norm={self.norm!r}); "
                              f"use share='none'.")
        check_choice("recipe", self.recipe, tuple(_train.RECIPES))
        rec = _train.RECIPES[self.recipe]
        if rec.needs_multibn and self.norm != "multibn":
            raise ConfigError(f"recipe={self.recipe!r} trains auxiliary branches {rec.branches} and needs "
                              f"norm='multibn'; got norm={self.norm!r}.")
        s("epochs", check_int("epochs", self.epochs, min_value=1))
        s("batch_size", check_int("batch_size", self.batch_size, min_value=2))
        s("lr", check_float("lr", self.lr, min_value=0.0, min_inclusive=False))
        s("momentum", check_float("momentum", self.momentum, min_value=0.0, max_value=1.0, max_inclusive=False))
        s("weight_decay", check_float("weight_decay", self.weight_decay, min_value=0.0))
        check_choice("schedule", self.schedule, _train.SCHEDULES)
        s("warmup_epochs", check_int("warmup_epochs", self.warmup_epochs, min_value=0, max_value=self.epochs))
        s("train_eps", _check_eps("train_eps", self.train_eps))
        s("train_steps", check_int("train_steps", self.train_steps, min_value=1))
        if self.train_alpha is not None:
            alpha = _check_eps("train_alpha", self.train_alpha)
            if alpha == 0:
                raise ConfigError("train_alpha=0.0 is out of range; allowed: None (2.5*eps/steps) or a number in (0, 1].")
            s("train_alpha", alpha)
        check_choice("attack_stats", self.attack_stats, _train.ATTACK_STATS)
        check_choice("loss_weighting", self.loss_weighting, _train.LOSS_WEIGHTINGS)
        self._canonicalize()
        s("seed", check_int("seed", self.seed, min_value=0))
        s("precision", hardware.resolve_precision(self.precision))
        if self.train_subset is not None:
            s("train_subset", check_int("train_subset", self.train_subset, min_value=1))
        s("holdout", check_int("holdout", self.holdout, min_value=0))
        if self.augment is not None:
            check_bool("augment", self.augment)

    _ATTACK_FIELDS = ("train_eps", "train_steps", "train_alpha", "attack_stats")

    def _canonicalize(self) -> None:
        """Set the fields a run does not use to their defaults, so that runs that train the same
        model share one key (and one cache entry): the training-attack fields of a recipe without
        attacks (``standard``), ``loss_weighting`` of a one-slice recipe, and ``norm_p`` of a norm
        other than RobustNorm."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        rec = _train.RECIPES[self.recipe]
        unused = []
        if all(kind == "clean" for _, kind in rec.slices):
            unused += self._ATTACK_FIELDS
        if len(rec.slices) == 1:
            unused.append("loss_weighting")
        if self.norm != "robustnorm":
            unused.append("norm_p")
        for name in unused:
            object.__setattr__(self, name, defaults[name])

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Build from a dict (e.g. a profile or ``config.json``); unknown keys are errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a dict of fields; got {type(d).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise ConfigError(f"unknown run config field {k!r}; allowed: {', '.join(names)}." + suggest(k, names))
        return cls(**d)

    @classmethod
    def make(cls, **kw) -> "RunConfig":
        """``RunConfig.from_dict(kw)``: keyword form with the same checks."""
        return cls.from_dict(kw)

    def replace(self, **kw) -> "RunConfig":
        """A copy with some fields changed (validated)."""
        return type(self).from_dict({**self.to_dict(), **kw})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- identity ------------------------------------------------------------------------------
    def canonical_json(self) -> str:
        """Sorted-key JSON of the config and the schema version (floats written by ``repr``, exact)."""
        return json.dumps({"schema": SCHEMA_VERSION, "config": self.to_dict()}, sort_keys=True,
                          separators=(",", ":"), allow_nan=False)

    def key(self) -> str:
        """12 hex digits of the sha256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def name(self) -> str:
        """A readable folder prefix, e.g. ``fashion_mnist-resnet18w16-bn-standard-e1-s0``."""
        norm = self.norm
        if norm == "robustnorm":
            norm += f"p{self.norm_p:g}"
        if norm == "multibn" and self.share != "none":
            norm += f"-share{self.share}"
        return f"{self.dataset}-{self.arch}w{self.width}-{norm}-{self.recipe}-e{self.epochs}-s{self.seed}"

    def folder_name(self) -> str:
        return f"{self.name()}-{self.key()}"

    @property
    def branches(self) -> tuple[str, ...]:
        """Auxiliary branches of the model (from the recipe; ``()`` unless ``norm='multibn'``)."""
        return _train.branches_for(self.recipe) if self.norm == "multibn" else ()

    def resolved_augment(self) -> bool:
        from .data import info
        return info(self.dataset).augment_default if self.augment is None else self.augment


def build_model(config: RunConfig) -> torch.nn.Module:
    """The (untrained) model of a config: :func:`rnorm.models.for_dataset` with the config's norm."""
    from .models import for_dataset

    kw = {}
    if config.norm == "robustnorm":
        kw["p"] = config.norm_p
    elif config.norm == "multibn":
        kw["branches"] = config.branches
        kw["share"] = config.share
    return for_dataset(config.arch, config.dataset, width=config.width, norm=config.norm, **kw)


# ------------------------------------------------------------------------------------- devices
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


# ------------------------------------------------------------------------------------- runs
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


# ------------------------------------------------------------------------------------- archive
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
            default = Path(__file__).resolve().parent.parent / "models"
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


def environment(device: torch.device, precision: str, channels_last: bool) -> dict:
    """What the run was trained on (not part of the key): :func:`rnorm.hardware.environment`."""
    return hardware.environment(device, precision=precision, channels_last=channels_last)


def trained_by() -> dict:
    """This process, as recorded in a run's ``environment.json`` (``trained_by``): host and pid."""
    import socket
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(path: Path, blob: dict) -> None:
    """Write ``checkpoint.pt`` atomically."""
    _io.atomic_torch_save(blob, path / "checkpoint.pt")


def load_checkpoint(path: Path, config: RunConfig) -> dict:
    """Read ``checkpoint.pt`` with ``weights_only=True``; refuse one that belongs to another config."""
    f = Path(path) / "checkpoint.pt"
    blob = _torch_load(f)
    if not isinstance(blob, dict):
        raise RunError(_damaged(f, "it holds no checkpoint"))
    if blob.get("config_key") != config.key() or blob.get("schema") != SCHEMA_VERSION:
        raise RunError(f"checkpoint {f} was written for config key {blob.get('config_key')!r} (schema "
                       f"{blob.get('schema')!r}), but this run's key is {config.key()!r} (schema "
                       f"{SCHEMA_VERSION}); refusing to resume from it. Delete the file to start over.")
    return blob


def _write_history(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    _io.atomic_write_text(path / "history.csv", pd.DataFrame(rows).to_csv(index=False))


def _load_data(config: RunConfig):
    """``(train_images, train_labels, holdout_images, holdout_labels)`` of a config (holdout may be empty)."""
    from . import data

    images, labels = data.load(config.dataset, "train")
    n = labels.shape[0]
    wanted = config.holdout + (config.train_subset or 0)
    if config.holdout and wanted > n - 1:
        raise ConfigError(f"holdout={config.holdout} (+ train_subset={config.train_subset}) leaves no training "
                          f"images in the {config.dataset!r} train split ({n} images).")
    hold_x, hold_y = images[:0], labels[:0]
    if config.holdout:
        hold_x, hold_y, images, labels = data.split_off(images, labels, config.holdout, seed=_SUBSET_SEED)
    if config.train_subset is not None:
        if config.train_subset > labels.shape[0]:
            raise ConfigError(f"train_subset={config.train_subset} is larger than the {config.dataset!r} train "
                              f"split ({labels.shape[0]} images after the holdout); use train_subset <= "
                              f"{labels.shape[0]} or None.")
        images, labels = data.subset(images, labels, config.train_subset, seed=_SUBSET_SEED, stratified=True)
    return images, labels, hold_x, hold_y


MONITOR_N = 1000


def _monitor_set(config: RunConfig):
    """The fixed test images of the ``test_acc`` learning curve (stratified, seed 0; at most MONITOR_N)."""
    from .data import load
    from .evaluate import test_subset
    return test_subset(config.dataset, min(MONITOR_N, load(config.dataset, "test")[1].shape[0]), seed=0)


def _clean_accuracy(model, images, labels, device) -> float:
    from .evaluate import accuracy
    was = model.training
    try:
        return accuracy(model.eval(), images.to(device), labels.to(device))
    finally:
        model.train(was)


def train(config: RunConfig, *, runs_dir=None, device="auto", progress=None, threads=None,
          channels_last="auto", archive=None) -> Run:
    """Train ``config`` (or reuse its finished run) and return the :class:`Run`.

    * A finished run in ``<runs_dir>/<name>-<key>/`` is loaded, without training.
    * A run published in an archive (:func:`archive_roots`; ``archive`` overrides) is copied
      there first, then loaded, without training.
    * A run with a ``checkpoint.pt`` resumes from it (after checking it belongs to this config).
    * Another process training the same run holds its ``lock``: this call waits for it, then
      loads the result. A lock left by a dead process is recovered.

    ``device``: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``. ``threads``:
    ``torch.set_num_threads`` for the duration of the call. ``progress``: a tqdm bar per epoch
    (None: only when stderr is a terminal; False: silent). ``channels_last``: True, False or
    ``"auto"``, resolved by rule (:func:`rnorm.hardware.resolve_channels_last`: contiguous on CPU unless
    asked for, never for a layer shape oneDNN mis-computes). None of these enter the key; the resolved
    values are recorded in ``environment.json``.

    A run whose loss or weights stop being finite raises :class:`RunError` naming the epoch and step; its
    last good checkpoint (the previous epoch's) is kept and it is never marked done.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a RunConfig; got {type(config).__name__} (use RunConfig.from_dict).")
    dev = resolve_device(device)
    if threads is not None:
        threads = check_int("threads", threads, min_value=1)
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    elif not isinstance(progress, bool):
        raise ConfigError(f"progress={progress!r} must be None, True or False.")
    hardware.check_layout(channels_last)
    root = runs_root(runs_dir)
    ensure_writable(root)
    path = root / config.folder_name()
    if is_complete(path):
        return load_run(path)
    path.mkdir(exist_ok=True)

    def waiting(msg):
        print(f"[rnorm] {config.folder_name()}: another process is training this run; {msg}",
                  file=sys.stderr, flush=True)

    with _io.FileLock(path / "lock", poll=1.0, on_wait=waiting):
        if is_complete(path) or restore_published(config, path, archive=archive):
            return load_run(path)
        old_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            layout = _layout(config, channels_last, dev)
            _train_locked(config, path, dev, progress, layout)
        finally:
            if threads is not None:
                torch.set_num_threads(old_threads)
    return load_run(path)


def _layout(config: RunConfig, channels_last, dev: torch.device) -> bool:
    """``channels_last`` resolved by rule for this config's network (:func:`rnorm.hardware.resolve_channels_last`)."""
    return hardware.resolve_channels_last(channels_last, dev, build_model(config))


def _diverged(path: Path, config: RunConfig, what: str, epoch: int) -> str:
    kept = (f"its last good checkpoint (epoch {epoch}) is kept in {path / 'checkpoint.pt'}" if epoch
            else "no epoch finished, so no checkpoint was written")
    return (f"run {config.folder_name()} diverged: {what}. It is not marked done and will not be cached or "
            f"published; {kept}. A smaller lr (now {config.lr:g}) or a warmup usually helps.")


def _check_finite_weights(model: torch.nn.Module, path: Path, config: RunConfig, epoch: int) -> None:
    """Raise :class:`RunError` when a parameter or buffer of ``model`` holds NaN or inf after ``epoch``."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RunError(_diverged(path, config, f"after epoch {epoch + 1} the weights {', '.join(bad[:3])}"
                                               f"{' ...' if len(bad) > 3 else ''} are not finite", epoch))


#: An epoch's mean training loss above this multiple of chance-level cross-entropy (ln of the classes)
#: means the run is diverging, though still finite: warned about in its history and environment.
DIVERGING_LOSS_FACTOR = 10.0


def _warn_if_diverging(row: dict, config: RunConfig, env: dict, path: Path, epoch: int) -> None:
    """Mark the epoch's history row and the run's ``environment.json`` when its loss says it is diverging."""
    import math

    from .data import info
    chance = math.log(info(config.dataset).num_classes)
    if row["loss"] > DIVERGING_LOSS_FACTOR * chance:
        msg = (f"diverging: mean training loss {row['loss']:.3g} is above {DIVERGING_LOSS_FACTOR:g}x the "
               f"chance level ({chance:.2f}); its accuracies mean little")
        row["warning"] = msg
        env.setdefault("warnings", []).append(f"epoch {epoch + 1}: {msg}")
        _io.atomic_write_text(path / "environment.json", json.dumps(env, indent=2) + "\n")
        print(f"[rnorm] WARNING {config.folder_name()}: {msg}", file=sys.stderr, flush=True)


def _train_locked(config: RunConfig, path: Path, dev: torch.device, progress: bool, channels_last: bool) -> None:
    for tmp in path.glob(".*.tmp"):  # temp files of an atomic write interrupted by a crash
        tmp.unlink(missing_ok=True)
    images, labels, hold_x, hold_y = _load_data(config)  # data errors before any file is written
    mon_x, mon_y = _monitor_set(config)
    cfg_json = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    if (path / "config.json").exists():
        _read_config(path)  # refuses a config.json that does not hash to the folder name
    else:
        _io.atomic_write_text(path / "config.json", cfg_json + "\n")

    torch.manual_seed(_train.derive_seed(config.seed, "init"))
    model = build_model(config)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _train.make_optimizer(model, config.lr, config.momentum, config.weight_decay)
    per_epoch, _ = _train.epoch_plan(labels.shape[0], config.batch_size)
    scheduler = _train.make_scheduler(optimizer, config.schedule, per_epoch * config.epochs,
                                      per_epoch * config.warmup_epochs)
    start, rows, wall = 0, [], 0.0
    env = environment(dev, config.precision, channels_last)
    env["trained_by"] = trained_by()
    if (path / "checkpoint.pt").exists():
        blob = load_checkpoint(path, config)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"])
        start, rows, wall = int(blob["epoch"]), list(blob["history"]), float(blob["wall_seconds"])
        env["resumed_at_epoch"] = start
    _io.atomic_write_text(path / "environment.json", json.dumps(env, indent=2) + "\n")

    augment = config.resolved_augment()
    for epoch in range(start, config.epochs):
        try:
            row = _train.run_epoch(model, optimizer, scheduler, images, labels, recipe=config.recipe, cfg=config,
                                   batch_size=config.batch_size, seed=config.seed, epoch=epoch, augment=augment,
                                   device=dev, progress=progress, channels_last=channels_last,
                                   desc=f"{config.name()} epoch {epoch + 1}/{config.epochs}")
        except _train.NonFiniteLoss as exc:
            raise RunError(_diverged(path, config, f"{exc}", epoch)) from None
        _check_finite_weights(model, path, config, epoch)
        _warn_if_diverging(row, config, env, path, epoch)
        wall += row["epoch_seconds"]
        row["test_acc"] = _clean_accuracy(model, mon_x, mon_y, dev)
        if config.holdout:
            row["val_acc"] = _clean_accuracy(model, hold_x, hold_y, dev)
        rows.append({"epoch": epoch + 1, **row, "wall_seconds": wall})
        blob = {
            "schema": SCHEMA_VERSION,
            "config_key": config.key(),
            "config": cfg_json,
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "data_seed": config.seed,
            "history": rows,
            "wall_seconds": wall,
        }
        save_checkpoint(path, blob)
        _write_history(path, rows)
    if start == config.epochs and not rows:
        raise RunError(f"{path}: nothing to train and no history")  # pragma: no cover
    final = {"schema": SCHEMA_VERSION, "config_key": config.key(),
             "model": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}}
    _io.atomic_torch_save(final, path / "model.pt")
    _write_history(path, rows)
    _io.atomic_write_text(path / "done", time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
