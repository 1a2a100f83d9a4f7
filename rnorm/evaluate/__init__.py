"""Clean and robust accuracy as tidy frames, over the grid the papers and their critics vary.

:func:`evaluate` scores one model on one fixed set of test images for every combination of

``attack``      ``clean``, ``fgsm``, ``pgd``, ``easy``, ``autoattack``, ``apgd`` and the noise
                controls ``noise_sign``, ``noise_uniform`` (:mod:`rnorm.attacks`)
``eps``         L-inf radius in pixel units (``8/255``)
``stats``       ``population`` (running estimates, what BN does at inference), ``batch`` (the
                stats swap), ``population_mean`` (running mean, batch scale) and ``precise``
                (PreciseBN: population statistics recomputed exactly over training data, see
                :func:`precise_bn`)
``batch_size``  the *inference* batch size: the attack and the scoring both run on batches of it
``branch``      which branch of a multi-branch BN model normalizes (AdvProp / EBN)
``makeup``      ``all`` (the whole batch is adversarial) or ``mixed`` (a few adversarial images
                among clean ones; only those are scored)
``gradient``    ``white-box`` (the attack differentiates through exactly what is scored,
                including the batch statistics) or ``transfer`` (examples crafted with the
                model's population statistics, scored in the row's statistics mode)

and returns one row per combination (see :func:`evaluate` for the columns).
:func:`precise_bn`, :func:`accuracy`, :func:`test_subset` and :func:`summarize` are the helpers
the notebooks use around it. The grid is :class:`EvalGrid` (:mod:`rnorm.evaluate.grid`); how a row
is computed is in :mod:`rnorm.evaluate.scoring`. Every name of both that this module had is
importable from here.

Rows and skips:

* ``clean`` rows have eps 0, gradient ``none`` and makeup ``all``: one per (stats,
  batch_size, branch), not repeated per eps, makeup or gradient.
* ``transfer`` rows are skipped for ``stats="population"`` (they would repeat the white-box
  row: the examples are crafted with population statistics in both).

What a row means:

* ``white-box``: the attack (:func:`rnorm.attacks.make_attack`) runs on the model with the
  row's statistics mode and branch set, so with ``stats="batch"`` its gradient goes through
  the statistics of the batch it attacks. ``transfer``: the examples are crafted with the
  model's own population (running) statistics, same weights and branch, then scored in the
  row's mode; for ``precise`` too (crafted with the EMA statistics, scored with PreciseBN's).
* ``all``: every image of each batch is attacked and scored. ``mixed``: in each batch of
  ``batch_size`` only the first ``k = max(1, round(adv_fraction * batch_size))`` images are
  attacked and scored, the rest stay clean, so ``n`` counts the adversarial images only.
  In a batch-dependent mode the white-box attack differentiates ``model(cat([x_adv,
  clean]))[:k]``, i.e. through the statistics of the *mixed* batch.
* ``precise``: a copy of the model with PreciseBN statistics (:func:`precise_bn` on
  ``precise_bn_data = (train images, train labels)``, one copy per branch, options from
  ``precise_bn_options``, e.g. ``{"batch_size": 128, "num_batches": 200}``), evaluated in
  population mode. Its computing time is in ``frame.attrs["precise_bn_seconds"]``.
* ``autoattack`` rows use only ``images[:autoattack_n]`` (default ``min(200, n)``), batched
  in the same seeded way, so ``evaluate(model, images[:autoattack_n], ..., attacks=
  ("clean",))`` gives the clean accuracy of exactly that subset in the same batches
  (:func:`test_subset` returns its images in random order, so they are a random sample).
  AutoAttack's ``n_classes`` is read from the model's output and its seed derives from
  ``seed``. Caveat: torchattacks' AutoAttack (its APGD too) attacks only the
  images not yet fooled, as a sub-batch, so in a batch-dependent mode (``batch``,
  ``population_mean``) its components optimize against the statistics of those sub-batches
  while the scoring uses the full batch: there it is *not* a white-box attack and may
  overstate robustness (a warning says so). White-box PGD is the adaptive attack there.
* ``apgd`` rows use all the images; its seed, like AutoAttack's, derives from ``seed`` (unless
  ``attack_params`` gives one), and the sub-batch caveat above applies to it too (a warning
  says so). ``noise_sign`` / ``noise_uniform`` rows are the random-noise controls, drawn from
  torch's generator seeded for the row. ``pgd`` with ``restarts > 1`` combines, per image, the
  examples of several runs; in a batch-dependent mode that changes the batch, and the row
  scores the combined batch as it is.

Batching. The images are put in a seeded random order once (``shuffle=False`` keeps theirs), so
every row sees the same images in the same batches and no batch is made of one class
(``cifar10_jpeg`` is stored by class). When the number of images is not a multiple of the batch
size, the last batch is *completed by wrapping around* to the first images of the order: it has
the full batch size (its statistics are as honest as the others') but only its new images are
scored, so every image is scored exactly once and ``n`` is the same for every ``all`` row
(AutoAttack rows, which use a subset, aside). A batch size larger than the number of images is
an error.

Reproducibility: torch is seeded before each row with a seed derived from ``seed`` and the
row; the caller's random state is restored afterwards. The examples crafted with population
statistics for a (attack, eps, batch_size, branch, makeup) are made once and shared by the
population white-box row and the transfer rows.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn as nn

from .._tensors import (check_images_labels, check_labels, model_device, num_outputs, pack_bits,  # noqa: F401
                        unpack_bits)  # pack_bits/unpack_bits: re-exported
from .._validate import ConfigError, as_sequence, check_choice, check_int
from ..attacks import ATTACKS, format_eps, make_attack, parse_eps  # noqa: F401 - importable from here before the split
from ..hardware import resolve_device
from ..precise_bn import precise_bn
from .grid import (_BATCH_DEPENDENT, AUTOATTACK_N, EVAL_ATTACKS, EVAL_STATS, GRADIENTS, MAKEUPS,  # noqa: F401
                   EvalGrid, _nonempty, _plain_bn, _stable_seed, _stats_context)
from .scoring import (_adv_count, _attack_params, _craft, _craft_all, _layout, _MixedBatch,  # noqa: F401
                      _ordered, _Scorer)

COLUMNS = ["attack", "eps", "eps_label", "stats", "batch_size", "branch", "makeup", "gradient",
           "n", "correct", "accuracy", "seconds", "params"]
PER_IMAGE_COLUMNS = ["correct_bits", "scored_bits"]
MEASURES = ("n", "correct", "accuracy", "seconds", "params", "seed", "mean", "std", "n_seeds", *PER_IMAGE_COLUMNS)


class _Preserved:
    """Restores, on exit, every module's training flag and the model's device."""

    def __init__(self, model: nn.Module, device: torch.device | None = None):
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]
        self.device = model_device(model)
        self.target = device

    def __enter__(self):
        if self.target is not None and self.target != self.device:
            self.model.to(self.target)
        return self.model

    def __exit__(self, *exc):
        if self.target is not None and self.target != self.device:
            self.model.to(self.device)
        for m, flag in self.flags:
            m.training = flag


# ----------------------------------------------------------------------------- test data


def test_subset(dataset: str, n: int | None = None, seed: int = 0, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded, class-stratified subset of the test split: (float32 images in [0, 1], labels).

    ``n=None`` takes the whole split. The subset (:func:`rnorm.data.subset`) is returned in a
    seeded random order, so its first images are a random sample too and consecutive images are
    not of one class. The same arguments give the same images, so every row of a table (and
    every notebook) can be scored on the same set.
    """
    from .. import data
    images, labels = data.load(dataset, "test", root=root)
    seed = check_int("seed", seed, min_value=0)
    if n is not None:
        n = check_int("n", n, min_value=1, max_value=labels.shape[0])
        images, labels = data.subset(images, labels, n, seed=seed, stratified=True)
    g = torch.Generator().manual_seed(_stable_seed("test_subset", dataset, n, seed))
    order = torch.randperm(labels.shape[0], generator=g)
    return images[order].float().div_(255.0), labels[order].long()


# ----------------------------------------------------------------------------- clean accuracy


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Clean accuracy (0..1) of ``model`` in eval mode, as the model is set up (stats, route).

    Images are uint8 or float in [0, 1]; batches of ``batch_size`` in the given order (the last
    one may be smaller). Runs on the model's device; the model's training flags are restored.
    """
    images, labels = check_images_labels(images, labels)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if images.shape[0] == 0:
        raise ConfigError("images is empty.")
    check_labels(labels, images.shape[0], num_outputs(model, images))
    dev = model_device(model)
    correct = 0
    with _Preserved(model):
        model.eval()
        for s in range(0, images.shape[0], batch_size):
            x = images[s:s + batch_size].to(dev)
            y = labels[s:s + batch_size].to(dev)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / images.shape[0]


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, grid: EvalGrid | None = None, *,
             device="auto", progress: bool | Callable[[dict], None] | None = None,
             precise_bn_data: tuple | None = None, **grid_fields) -> pd.DataFrame:
    """Clean and robust accuracy of ``model`` on ``images`` over a grid; one row per combination.

    The grid is an :class:`EvalGrid` (``grid``), or its fields given as keywords: ``attacks``
    (``clean`` and the names of :mod:`rnorm.attacks`), ``eps`` (numbers or strings like
    ``"8/255"``, in [0, 1]), ``stats`` (``population``, ``batch``, ``population_mean``,
    ``precise``), ``batch_sizes``, ``branches`` (of a multi-branch model,
    :func:`rnorm.norms.branches_of`), ``makeups`` (``all``, ``mixed``), ``gradients``
    (``white-box``, ``transfer``), ``adv_fraction``, ``attack_params``, ``autoattack_n``,
    ``seed``, ``shuffle``, ``precise_bn_options`` and ``per_image``. Each sequence may be a
    single value: a bare string is one name (``branches="adv"`` is ``("adv",)``), never split into
    its characters; a set (no fixed order) is refused. The rows, their skips and what each means
    (``precise`` needs ``precise_bn_data = (train images, train labels)``): module docstring.

    Columns: attack, eps, eps_label (``8/255``), stats, batch_size, branch, makeup, gradient,
    n (images scored), correct, accuracy (0..1), seconds (wall clock of the row), params (the
    attack's parameters as JSON, e.g. PGD's steps and step size); with ``per_image=True`` also
    ``correct_bits`` and ``scored_bits``: which images (by their index in ``images``) were
    scored and classified correctly, packed (:func:`unpack_bits`), so that two rows scored on the
    same images can be compared pair by pair (:func:`rnorm.stats.paired_rows`).

    The model is put in eval mode for the evaluation and left as found (training flags,
    statistics modes, routes, device, the caller's random state); no running buffer changes.
    ``progress``: ``True`` shows a tqdm bar, a callable is called with each finished row.
    """
    grid, images, labels, n_aa, dev, n_classes = _checked(model, images, labels, grid, device, progress,
                                                          precise_bn_data, grid_fields)
    params = _attack_params(grid, model, n_classes)
    rows, out_rows, precise_models, precise_seconds = grid.rows(), [], {}, 0.0
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []))
        stack.enter_context(_Preserved(model, dev))
        bar = stack.enter_context(_progress_bar(progress is True, len(rows)))
        model.eval()
        sets = {n: _ordered(images, labels, n, grid, dev) for n in dict.fromkeys([images.shape[0], n_aa]) if n}
        if "precise" in grid.stats:
            t0 = time.perf_counter()
            precise_models = {br: precise_bn(model, *precise_bn_data, branch=br, device=dev,
                                             **grid.precise_bn_options).eval() for br in grid.branches}
            precise_seconds = time.perf_counter() - t0
        scorer = _Scorer(grid, model, sets, n_aa, params, precise_models, images.shape[0])
        for row in rows:
            out_rows.append(scorer.score(row))
            if bar is not None:
                bar.update(1)
            elif callable(progress) and not isinstance(progress, bool):
                progress(dict(out_rows[-1]))
    frame = pd.DataFrame(out_rows, columns=COLUMNS + (PER_IMAGE_COLUMNS if grid.per_image else []))
    frame.attrs.update(precise_bn_seconds=precise_seconds, seed=grid.seed)
    return frame


def _checked(model, images, labels, grid, device, progress, precise_bn_data, grid_fields) -> tuple:
    """The checks :func:`evaluate` makes before computing anything: ``(grid, images, labels, number of
    AutoAttack images or None, device, number of classes)``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} must be a torch.nn.Module.")
    if grid is not None and grid_fields:
        raise ConfigError(f"give either grid= or its fields ({', '.join(grid_fields)}), not both.")
    grid = grid if grid is not None else EvalGrid(**grid_fields)
    images, labels = check_images_labels(images, labels)  # the check every attack makes
    if images.shape[0] == 0:
        raise ConfigError("images is empty.")
    n_aa = grid.check(model, images.shape[0], precise_bn_data)
    dev = resolve_device(device)
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ConfigError(f"progress={progress!r} must be None, True/False or a callable taking a row dict.")
    n_classes = num_outputs(model, images)
    check_labels(labels, images.shape[0], n_classes)  # a label the model cannot output would score as silently wrong
    return grid, images, labels, n_aa, dev, n_classes


@contextlib.contextmanager
def _progress_bar(show: bool, total: int):
    if not show:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="evaluate", leave=False)
    try:
        yield bar
    finally:
        bar.close()


# ----------------------------------------------------------------------------- seeds


def summarize(df: pd.DataFrame, by: Iterable[str] | None = None, value: str = "accuracy") -> pd.DataFrame:
    """Mean and standard deviation of ``value`` over seeds: columns ``by`` + mean, std, n_seeds.

    ``df`` holds one row per seed and setting, with a ``seed`` column (e.g. frames of
    :func:`evaluate` for models trained with different seeds, concatenated with a ``seed``
    column added). ``by`` defaults to every column that is not a measurement (n, correct,
    accuracy, seconds, params) or the seed. ``std`` is the sample standard deviation (ddof 1),
    NaN with a single seed. A group with more rows than distinct seeds is an error: ``by`` then
    does not identify a setting (average those rows first, on purpose).
    """
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"df must be a pandas DataFrame; got {type(df).__name__}.")
    if "seed" not in df.columns:
        raise ConfigError("df has no 'seed' column; add one (e.g. frame.assign(seed=s)) before summarize.")
    check_choice("value", value, tuple(c for c in df.columns if c != "seed"))
    if by is None:
        by = [c for c in df.columns if c not in MEASURES and c != value]
    else:
        by = list(as_sequence("by", by, nonempty=False))  # a bare column name is one column
        for c in by:
            check_choice("by", c, tuple(df.columns))
    if not by:
        raise ConfigError("by is empty; name the columns that identify a setting.")
    g = df.groupby(by, dropna=False, sort=False)
    out = g.agg(mean=(value, "mean"), std=(value, "std"), n_seeds=("seed", "nunique"), _rows=(value, "size"))
    bad = out[out["_rows"] != out["n_seeds"]]
    if len(bad):
        raise ConfigError(f"by={by} leaves {int(bad['_rows'].iloc[0])} rows for {int(bad['n_seeds'].iloc[0])} "
                          f"seeds in a group ({bad.index[0]!r}); add the columns that tell them apart.")
    return out.drop(columns="_rows").reset_index()
