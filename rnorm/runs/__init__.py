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

The package: :mod:`~rnorm.runs.config` (the config and its key), :mod:`~rnorm.runs.store` (run folders,
loading, the archive of published runs) and, here, the training of a run (:func:`train`: the lock, resume
from a checkpoint, the epochs, the finished files). Every public name is importable from ``rnorm.runs``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from .. import _io
from .. import hardware
from .. import train as _train
from .._validate import ConfigError, check_int
from ..hardware import resolve_device  # re-exported: runs.resolve_device is public
from .config import NORM_NAMES, SCHEMA_VERSION, RunConfig, build_model
from .store import (ARCHIVE_README, FINISHED_FILES, PUBLISHED_FILES, Run, RunError, _damaged, _read_config,
                    _torch_load, archive_roots, ensure_writable, find_run, is_complete, load_run, publish_run,
                    restore_published, run_path, runs_root)

__all__ = [
    "ARCHIVE_README", "DIVERGING_LOSS_FACTOR", "FINISHED_FILES", "MONITOR_N", "NORM_NAMES", "PUBLISHED_FILES",
    "SCHEMA_VERSION", "TIMING_COLUMNS", "Run", "RunConfig", "RunError", "archive_roots", "build_model",
    "ensure_writable", "environment", "find_run", "is_complete", "load_checkpoint", "load_run", "publish_run",
    "resolve_device", "restore_published", "run_path", "runs_root", "save_checkpoint", "train", "trained_by",
]


TIMING_COLUMNS = ("images_per_s", "epoch_seconds", "wall_seconds")


_SUBSET_SEED = 0


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
    from .. import data

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
    from ..data import load
    from ..evaluate import test_subset
    return test_subset(config.dataset, min(MONITOR_N, load(config.dataset, "test")[1].shape[0]), seed=0)


def _clean_accuracy(model, images, labels, device) -> float:
    from ..evaluate import accuracy
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

    from ..data import info
    chance = math.log(info(config.dataset).num_classes)
    if row["loss"] > DIVERGING_LOSS_FACTOR * chance:
        msg = (f"diverging: mean training loss {row['loss']:.3g} is above {DIVERGING_LOSS_FACTOR:g}x the "
               f"chance level ({chance:.2f}); its accuracies mean little")
        row["warning"] = msg
        env.setdefault("warnings", []).append(f"epoch {epoch + 1}: {msg}")
        _io.atomic_write_text(path / "environment.json", json.dumps(env, indent=2) + "\n")
        print(f"[rnorm] WARNING {config.folder_name()}: {msg}", file=sys.stderr, flush=True)


def _train_locked(config: RunConfig, path: Path, dev: torch.device, progress: bool, channels_last: bool) -> None:
    """Train the run in ``path`` (holding its lock): its data and config file first, then the model,
    optimizer and schedule, resumed from ``checkpoint.pt`` where there is one, each epoch checkpointed,
    and the final weights and ``done`` marker written last."""
    for tmp in path.glob(".*.tmp"):  # temp files of an atomic write interrupted by a crash
        tmp.unlink(missing_ok=True)
    images, labels, hold_x, hold_y = _load_data(config)  # data errors before any file is written
    monitor = _monitor_set(config)
    cfg_json = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    if (path / "config.json").exists():
        _read_config(path)  # refuses a config.json that does not hash to the folder name
    else:
        _io.atomic_write_text(path / "config.json", cfg_json + "\n")
    model, optimizer, scheduler = _training_state(config, dev, channels_last, labels.shape[0])
    env = environment(dev, config.precision, channels_last)
    env["trained_by"] = trained_by()
    start, rows, wall = _resume(path, config, model, optimizer, scheduler, env)
    _io.atomic_write_text(path / "environment.json", json.dumps(env, indent=2) + "\n")

    augment = config.resolved_augment()
    for epoch in range(start, config.epochs):
        row = _train_epoch(config, path, model, optimizer, scheduler, images, labels, epoch=epoch, augment=augment,
                           dev=dev, progress=progress, channels_last=channels_last)
        _warn_if_diverging(row, config, env, path, epoch)
        wall += row["epoch_seconds"]
        row["test_acc"] = _clean_accuracy(model, *monitor, dev)
        if config.holdout:
            row["val_acc"] = _clean_accuracy(model, hold_x, hold_y, dev)
        rows.append({"epoch": epoch + 1, **row, "wall_seconds": wall})
        save_checkpoint(path, _checkpoint(config, cfg_json, epoch, model, optimizer, scheduler, rows, wall))
        _write_history(path, rows)
    if start == config.epochs and not rows:
        raise RunError(f"{path}: nothing to train and no history")  # pragma: no cover
    _finish(path, config, model, rows)


def _training_state(config: RunConfig, dev: torch.device, channels_last: bool, n_images: int):
    """The model (initialised from the seed), its optimizer and its learning-rate schedule, untrained."""
    torch.manual_seed(_train.derive_seed(config.seed, "init"))
    model = build_model(config)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _train.make_optimizer(model, config.lr, config.momentum, config.weight_decay)
    per_epoch, _ = _train.epoch_plan(n_images, config.batch_size)
    scheduler = _train.make_scheduler(optimizer, config.schedule, per_epoch * config.epochs,
                                      per_epoch * config.warmup_epochs)
    return model, optimizer, scheduler


def _resume(path: Path, config: RunConfig, model, optimizer, scheduler, env: dict) -> tuple[int, list, float]:
    """``(first epoch to train, history rows, wall seconds so far)``: from ``checkpoint.pt`` when there is one
    (restoring the model, optimizer, schedule and RNG states, and noting the epoch in ``env``), else a start."""
    if not (path / "checkpoint.pt").exists():
        return 0, [], 0.0
    blob = load_checkpoint(path, config)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
    start = int(blob["epoch"])
    env["resumed_at_epoch"] = start
    return start, list(blob["history"]), float(blob["wall_seconds"])


def _train_epoch(config: RunConfig, path: Path, model, optimizer, scheduler, images, labels, *, epoch: int,
                 augment: bool, dev: torch.device, progress: bool, channels_last: bool) -> dict:
    """One epoch (:func:`rnorm.train.run_epoch`); a loss or weights no longer finite raise :class:`RunError`."""
    try:
        row = _train.run_epoch(model, optimizer, scheduler, images, labels, recipe=config.recipe, cfg=config,
                               batch_size=config.batch_size, seed=config.seed, epoch=epoch, augment=augment,
                               device=dev, progress=progress, channels_last=channels_last,
                               desc=f"{config.name()} epoch {epoch + 1}/{config.epochs}")
    except _train.NonFiniteLoss as exc:
        raise RunError(_diverged(path, config, f"{exc}", epoch)) from None
    _check_finite_weights(model, path, config, epoch)
    return row


def _checkpoint(config: RunConfig, cfg_json: str, epoch: int, model, optimizer, scheduler, rows: list,
                wall: float) -> dict:
    """What ``checkpoint.pt`` holds after ``epoch``: enough to resume bit-identically (:func:`_resume`)."""
    return {
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


def _finish(path: Path, config: RunConfig, model, rows: list) -> None:
    """The final weights (``model.pt``), the history and, last, the ``done`` marker."""
    final = {"schema": SCHEMA_VERSION, "config_key": config.key(),
             "model": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}}
    _io.atomic_torch_save(final, path / "model.pt")
    _write_history(path, rows)
    _io.atomic_write_text(path / "done", time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
