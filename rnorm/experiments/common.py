"""Pieces shared by the experiments: training the runs a notebook needs, devices, test sets."""
from __future__ import annotations

import torch

from ..hardware import resolve_device
from ..runs import RunConfig, train


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


#: What an evaluation computes, by version. A cache key holds the version's label, not a hash of the
#: library's code: a change that computes the same numbers (an input check, a refactoring, a new layout
#: rule) keeps every published cache valid, and a change of what is computed bumps the version by hand.
#: ``tests/test_golden.py`` fails on such a change, so the version cannot silently stay behind.
#: Version 2's label is the code fingerprint of the evaluation modules (``rnorm.book.code_version`` of
#: ``from rnorm import evaluate, attacks, norms, precise_bn, _tensors``) at the commit that computed the
#: published caches (47bfeda), so those caches keep their file names.
EVAL_CACHE_VERSION = 2
EVAL_SEMANTICS = {2: {
    "rnorm._io": "502b52d267572a85", "rnorm._tensors": "ca36d17f8cb8e3d8", "rnorm._validate": "160514067c79bf5a",
    "rnorm.attacks": "5b3c06f8a1bcfdb3", "rnorm.data": "6d39c45aa853a27e", "rnorm.evaluate": "16964078071f016a",
    "rnorm.hardware": "b74923eb72b1389c", "rnorm.models": "a8df7b48b4dd8e1e", "rnorm.norms": "caa6203419c76e0e",
    "rnorm.plots": "eb81be3838d45d45", "rnorm.precise_bn": "4a0530cd15df6b7c", "rnorm.results": "56445be5b8e14e90",
    "rnorm.runs": "661ae99cff79983f", "rnorm.train": "0f9168c92ab14560"}}
_UNCACHED_KEYS = ("device", "progress")
EVALUATION_FILES = "eval-*.csv"  # what evaluation_path names; `rnorm publish` copies these


def evaluation_path(run, images, labels, **kwargs):
    """Where :func:`cached_evaluate` keeps the evaluation of ``run`` on ``images``/``labels`` with
    ``kwargs``: ``<run>/eval-<key>.csv``. The key hashes the run's config key, the images and labels
    (their bytes), every keyword argument except ``device`` and ``progress``, and the evaluation
    version (:data:`EVAL_SEMANTICS`)."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(f"v{EVAL_CACHE_VERSION}:{run.config.key()}".encode())
    h.update(json.dumps(EVAL_SEMANTICS[EVAL_CACHE_VERSION], sort_keys=True).encode())
    for t in (images, labels):
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    args = {k: v for k, v in kwargs.items() if k not in _UNCACHED_KEYS}
    h.update(json.dumps(args, sort_keys=True, default=repr).encode())
    return run.path / f"eval-{h.hexdigest()[:16]}.csv"


def cached_evaluate(run, model, images, labels, **kwargs):
    """:func:`rnorm.evaluate.evaluate`, cached in the run's folder (:func:`evaluation_path`). A cached
    frame is read back (exactly, :func:`rnorm._io.read_csv_exact`) from ``<run>/eval-<key>.csv``
    (written atomically); re-running a notebook then skips its evaluation.
    """
    from .._io import atomic_write_text, read_csv_exact
    from ..evaluate import evaluate

    path = evaluation_path(run, images, labels, **kwargs)
    if path.is_file():
        return read_csv_exact(path, keep_default_na=False, na_values=[""])
    frame = evaluate(model, images, labels, **kwargs)
    atomic_write_text(path, frame.to_csv(index=False))
    return frame


def full_test_accuracy_args(dataset: str, batch_size: int = 500):
    """The images, labels and evaluation arguments of :func:`full_test_accuracy` (one definition for the
    evaluation and for the check that its published caches are found)."""
    from ..evaluate import test_subset
    x, y = test_subset(dataset, None)
    return x, y, dict(attacks=("clean",), stats=("population",), batch_sizes=(min(batch_size, len(y)),),
                      shuffle=False)


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
    x, y, args = full_test_accuracy_args(run.config.dataset, batch_size)
    frame = cached_evaluate(run, model, x, y, **args)
    return float(frame["accuracy"].iloc[0])


def full_test_correct(run, model, batch_size: int = 500) -> tuple[str, str]:
    """Which images of the dataset's whole test set the model classifies correctly (population
    statistics, main branch), as the packed ``(correct_bits, scored_bits)`` of
    :func:`rnorm.evaluate.evaluate` with ``per_image=True``: the per-image results a hierarchical CI
    over seeds and images needs. Cached beside :func:`full_test_accuracy`'s evaluation (a separate
    cache entry, so the published accuracies keep theirs)."""
    x, y, args = full_test_accuracy_args(run.config.dataset, batch_size)
    frame = cached_evaluate(run, model, x, y, per_image=True, **args)
    return str(frame["correct_bits"].iloc[0]), str(frame["scored_bits"].iloc[0])


def models_frame(trained: dict, device, per_image: bool = False):
    """One row per trained model: dataset, arch, width, norm, norm_p, recipe, share, seed, epochs,
    train_subset, lr, train_eps, train_steps, train_alpha (None: the default step), loss_weighting,
    clean_full (clean accuracy on the full test set: what the ledger checks convergence on) and the
    run's key; with ``per_image`` also ``clean_full_correct`` and ``clean_full_scored``, the packed
    per-image bits of :func:`full_test_correct`."""
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
        if per_image:
            rows[-1]["clean_full_correct"], rows[-1]["clean_full_scored"] = full_test_correct(r, model)
    return pd.DataFrame(rows)
