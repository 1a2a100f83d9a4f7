"""Pieces shared by the experiments: training the runs a notebook needs, devices, test sets."""
from __future__ import annotations

import torch

from ..runs import RunConfig, resolve_device, train


def setup(params) -> torch.device:
    """Apply a notebook's ``threads`` setting (torch's intra-op threads) and resolve its device.

    On a busy 2-core machine two intra-op threads can be many times slower than one (the threads
    spin-wait for a core); profiles set ``threads`` where that was measured.
    """
    if params.threads is not None:
        torch.set_num_threads(params.threads)
    return resolve_device(params.device)


def train_runs(configs, params) -> dict:
    """Train (or load from the cache) every config with a notebook's device, progress and layout
    settings; returns ``{config: Run}`` in order."""
    out = {}
    for cfg in configs:
        if cfg not in out:
            out[cfg] = train(cfg, device=params.device, progress=params.progress,
                             channels_last=getattr(params, "channels_last", "auto"))
    return out


__all__ = ["RunConfig", "resolve_device", "setup", "train_runs"]


def dataset_note(names) -> str:
    """A markdown admonition for notebooks whose numbers come from the lossy CIFAR-10 copy ("" if none)."""
    names = [names] if isinstance(names, str) else list(names)
    if "cifar10_jpeg" not in names:
        return ""
    return ("```{warning}\nNumbers labelled *CIFAR-10 (lossy JPEG copy)* come from a third-party JPEG "
            "re-encoding of CIFAR-10 (quality 75, 4:2:0 chroma), not from the original CIFAR-10 files, which "
            "could not be obtained offline. They are not CIFAR-10 numbers and should not be compared with "
            "published CIFAR-10 results as if they were.\n```")


EVAL_CACHE_VERSION = 2
_UNCACHED_KEYS = ("device", "progress")
# The modules that define what an evaluation computes: their code (without docstrings) is part of
# the cache key, so a change of evaluation semantics is never answered from an old cache.
_EVAL_MODULES = "from rnorm import evaluate, attacks, norms, precise_bn, _tensors"


def cached_evaluate(run, model, images, labels, **kwargs):
    """:func:`rnorm.evaluate.evaluate`, cached in the run's folder by the hash of everything it depends on.

    The key hashes the run's config key, the test images and labels (their bytes), every keyword
    argument except ``device`` and ``progress``, a cache version, and the code of the modules that
    define the evaluation (:data:`_EVAL_MODULES`, docstrings aside). A cached frame is read back
    (exactly, :func:`rnorm.results.read_csv_exact`) from ``<run>/eval-<key>.csv`` (written
    atomically); re-running a notebook then skips its evaluation.
    """
    import hashlib
    import json


    from .._io import atomic_write_text
    from ..evaluate import evaluate

    from ..book import code_version
    from ..results import read_csv_exact

    h = hashlib.sha256()
    h.update(f"v{EVAL_CACHE_VERSION}:{run.config.key()}".encode())
    h.update(json.dumps(code_version(_EVAL_MODULES), sort_keys=True).encode())
    for t in (images, labels):
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    args = {k: v for k, v in kwargs.items() if k not in _UNCACHED_KEYS}
    h.update(json.dumps(args, sort_keys=True, default=repr).encode())
    path = run.path / f"eval-{h.hexdigest()[:16]}.csv"
    if path.is_file():
        return read_csv_exact(path, keep_default_na=False, na_values=[""])
    frame = evaluate(model, images, labels, **kwargs)
    atomic_write_text(path, frame.to_csv(index=False))
    return frame


def accuracy_table(acc, by: list[str], labelled=()):
    """Accuracy (%) "mean ± sd" over seeds per group of ``by`` (in the order the rows come; pivot alone
    would sort names), one column per attack and ε (``clean`` first, as they come); the columns in
    ``labelled`` are shown with their display labels (:func:`rnorm.plots.label`). For display only."""
    import pandas as pd

    from ..plots import attack_label, label
    sub = acc.copy()
    sub["column"] = attack_label(sub)
    for c in by:
        sub[c] = pd.Categorical(sub[c], categories=list(dict.fromkeys(sub[c])), ordered=True)
    stat = sub.groupby(by + ["column"], sort=False, observed=True)["accuracy"].agg(["mean", "std"]).reset_index()
    stat["std"] = stat["std"].fillna(0.0)
    stat["value"] = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(stat["mean"], stat["std"])]
    columns = list(dict.fromkeys(stat["column"]))
    out = stat.pivot(index=by, columns="column", values="value").reset_index()[by + columns]
    out[columns] = out[columns].fillna("—")  # not evaluated under that attack (e.g. APGD on headline rows only)
    for c in by:
        out[c] = out[c].astype(str).map(label) if c in labelled else out[c].astype(str)
    return out.rename_axis(columns=None)


def full_test_accuracy(run, model, batch_size: int = 500) -> float:
    """Clean accuracy on the dataset's whole test set with population statistics (main branch),
    cached in the run's folder like any evaluation. The ledger's convergence floors use it."""
    from ..evaluate import test_subset
    x, y = test_subset(run.config.dataset, None)
    frame = cached_evaluate(run, model, x, y, attacks=("clean",), stats=("population",),
                            batch_sizes=(min(batch_size, len(y)),), shuffle=False)
    return float(frame["accuracy"].iloc[0])


def models_frame(trained: dict, device):
    """One row per trained model: dataset, arch, width, norm, norm_p, recipe, share, seed, epochs,
    train_subset, lr, train_eps, train_steps, train_alpha (None: the default step), loss_weighting, clean_full (clean accuracy on the
    full test set: what the ledger checks convergence on) and the run's key."""
    import pandas as pd
    rows = []
    for cfg, r in trained.items():
        model = r.model(device=device)
        rows.append({"dataset": cfg.dataset, "arch": cfg.arch, "width": cfg.width, "norm": cfg.norm,
                     "norm_p": cfg.norm_p if cfg.norm == "robustnorm" else float("nan"), "recipe": cfg.recipe,
                     "share": getattr(cfg, "share", "none"), "seed": cfg.seed, "epochs": cfg.epochs,
                     "train_subset": cfg.train_subset, "lr": cfg.lr, "train_eps": cfg.train_eps,
                     "train_steps": cfg.train_steps, "train_alpha": cfg.train_alpha,
                     "loss_weighting": cfg.loss_weighting,
                     "clean_full": full_test_accuracy(r, model),
                     "key": cfg.key()})
    return pd.DataFrame(rows)
