"""The checks made before a kernel starts or a model trains (:func:`preflight`), and the data sizes a study
needs (:func:`check_sizes`), each failing with one :class:`ConfigError` naming the value."""
from __future__ import annotations

import os
from pathlib import Path

from .._validate import ConfigError
from ..experiments import get


def preflight(notebook: str, params: dict, out_dir: Path | None = None) -> None:
    """Every check that can be made before a kernel starts or a model trains, as one ConfigError.

    The parameters (by the notebook's class), the device (CUDA requested without a GPU), the runs
    folder (writable), the data (every dataset the notebook reads is loaded and verified, so a
    missing file or ``RNORM_DATA`` pointing at a file is named here) and the sizes that depend
    on it (``test_n``, ``probe_n``, ``precise_n``, ``train_subset`` within the splits), and the
    results folder (writable).
    """
    from ..hardware import resolve_device
    from ..runs import RunError, ensure_writable, runs_root

    entry = get(notebook)
    p = entry.params.from_dict(params)
    if not entry.trains:
        return
    resolve_device(p.device)
    try:
        ensure_writable(runs_root())
    except RunError as e:
        raise ConfigError(str(e)) from None
    check_sizes(notebook, params)
    if out_dir is not None:
        import tempfile
        folder = Path(out_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"output folder {folder} is not writable ({e.strerror or e}); pass --out-dir.") from None


def check_sizes(notebook: str, params: dict) -> None:
    """The data a study reads is there and verified, and its sizes (``test_n``, ``probe_n``,
    ``precise_n``, ``train_subset``) fit within the splits, else one :class:`ConfigError` naming the
    value and the limit. Part of :func:`preflight`; :func:`planned_configs` applies it too, so
    ``rnorm plan``, ``rnorm train`` and ``rnorm book --dry-run`` never plan a run that cannot train."""
    from .. import data
    entry = get(notebook)
    if not entry.trains:
        return
    p = entry.params.from_dict(params)
    for d in getattr(p, "datasets", None) or (p.dataset,):
        try:
            n_train = data.load(d, "train")[1].shape[0]
            n_test = data.load(d, "test")[1].shape[0]
        except data.DataError as e:
            raise ConfigError(f"dataset {d!r}: {e}") from None
        for name, split, limit in (("test_n", "test", n_test), ("probe_n", "test", n_test),
                                   ("precise_n", "train", n_train), ("train_subset", "train", n_train)):
            value = getattr(p, name, None)
            if value is not None and value > limit:
                raise ConfigError(f"notebook {entry.name!r}: {name}={value} is larger than the {d!r} {split} "
                                  f"split ({limit} images); allowed: up to {limit}.")
