"""Clean and robust accuracy as tidy frames, over the grid the papers and their critics vary.

:func:`evaluate` scores one model on one fixed set of test images for every combination of

``attack``      ``clean``, ``fgsm``, ``pgd``, ``easy``, ``autoattack`` (:mod:`rnorm.attacks`)
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

and returns one row per combination (see :func:`evaluate` for the columns and the skips).
:func:`precise_bn`, :func:`accuracy`, :func:`test_subset` and :func:`summarize` are the helpers
the notebooks use around it.

Batching. The images are put in a seeded random order once, so every row sees the same images
in the same batches and no batch is made of one class (``cifar10_jpeg`` is stored by class).
When the number of images is not a multiple of the batch size, the last batch is *completed by
wrapping around* to the first images of the order: it has the full batch size (its statistics
are as honest as the others') but only its new images are scored, so every image is scored
exactly once and ``n`` is the same for every ``all`` row (AutoAttack rows, which use a subset,
aside). A batch size larger than the number of images is an error.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import numbers
import time
import warnings
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
import torch.nn as nn

from . import norms as _norms
from ._validate import ConfigError, check_choice, check_float, check_int
from .attacks import ATTACKS, format_eps, make_attack, parse_eps
from .runs import resolve_device

EVAL_ATTACKS = ("clean",) + ATTACKS
EVAL_STATS = _norms.STATS_MODES + ("precise",)
MAKEUPS = ("all", "mixed")
GRADIENTS = ("white-box", "transfer")
COLUMNS = ["attack", "eps", "eps_label", "stats", "batch_size", "branch", "makeup", "gradient",
           "n", "correct", "accuracy", "seconds", "params"]
MEASURES = ("n", "correct", "accuracy", "seconds", "params", "seed", "mean", "std", "n_seeds")
AUTOATTACK_N = 200
# statistics modes whose output for one image depends on the other images of its batch
_BATCH_DEPENDENT = ("batch", "population_mean")


# ----------------------------------------------------------------------------- small helpers


def _stable_seed(*parts) -> int:
    """A seed in [0, 2**31) from a stable hash of ``parts`` (not Python's salted ``hash``)."""
    text = "rnorm.evaluate:" + ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % (2**31)


def _as_tuple(value) -> tuple:
    if isinstance(value, (str, numbers.Number)) or value is None:
        return (value,)
    return tuple(value)


def _nonempty(param: str, value) -> tuple:
    out = _as_tuple(value)
    if not out:
        raise ConfigError(f"{param}=() is empty; give at least one value.")
    return tuple(dict.fromkeys(out))  # drop repeats, keep order




def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _as_float_images(param: str, images) -> torch.Tensor:
    """uint8 images -> float / 255; float images are checked to lie in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{param} must be a torch.Tensor [N, C, H, W]; got {type(images).__name__}.")
    if images.dim() != 4:
        raise ConfigError(f"{param} must have shape [N, C, H, W]; got {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ConfigError(f"{param} must be uint8 or float in [0, 1]; got dtype {images.dtype}.")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ConfigError(f"{param} must lie in [0, 1] (pixel scale); got values in "
                          f"[{images.min().item():.3g}, {images.max().item():.3g}].")
    return images


def _check_labels(labels, n: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ConfigError("labels must be an integer torch.Tensor of shape [N].")
    if labels.shape[0] != n:
        raise ConfigError(f"labels has {labels.shape[0]} entries but there are {n} images.")
    return labels.long()


class _Preserved:
    """Restores, on exit, every module's training flag and the model's device."""

    def __init__(self, model: nn.Module, device: torch.device | None = None):
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]
        self.device = _model_device(model)
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


def _plain_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, _norms.STATEFUL)
               for m in model.modules())


def _stats_context(model: nn.Module, stats: str):
    """``use_stats`` that also accepts plain ``nn.BatchNorm2d`` layers for ``population``."""
    if not _plain_bn(model):
        return _norms.use_stats(model, stats)
    if stats != "population":
        raise ConfigError(f"stats={stats!r} needs rnorm normalization layers, but the model has plain "
                          f"nn.BatchNorm layers; call rnorm.norms.convert_norms(model, 'bn') first.")
    layers = [m for n, m in model.named_modules() if isinstance(m, _norms.STATEFUL) and not _norms._is_aux(n)]
    return _norms._Setting(model, layers, "stats", "population")


# ----------------------------------------------------------------------------- test data


def test_subset(dataset: str, n: int | None = None, seed: int = 0, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded, class-stratified subset of the test split: (float32 images in [0, 1], labels).

    ``n=None`` takes the whole split. The subset (:func:`rnorm.data.subset`) is returned in a
    seeded random order, so its first images are a random sample too and consecutive images are
    not of one class. The same arguments give the same images, so every row of a table (and
    every notebook) can be scored on the same set.
    """
    from . import data
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
    images = _as_float_images("images", images)
    labels = _check_labels(labels, images.shape[0])
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if images.shape[0] == 0:
        raise ConfigError("images is empty.")
    dev = _model_device(model)
    correct = 0
    with _Preserved(model):
        model.eval()
        for s in range(0, images.shape[0], batch_size):
            x = images[s:s + batch_size].to(dev)
            y = labels[s:s + batch_size].to(dev)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / images.shape[0]


# ----------------------------------------------------------------------------- PreciseBN


def _has_running(m: nn.Module) -> bool:
    if isinstance(m, _norms.RobustNorm2d):
        return True
    return (isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
            and m.running_mean is not None)


def _running_buffers(m: nn.Module) -> dict[str, torch.Tensor]:
    names = ("running_mean", "running_range" if isinstance(m, _norms.RobustNorm2d) else "running_var",
             "num_batches_tracked")
    return {k: getattr(m, k) for k in names if getattr(m, k, None) is not None}


def _reset_running(m: nn.Module) -> None:
    if isinstance(m, _norms.RobustNorm2d):
        m.running_mean.zero_()
        m.running_range.fill_(1.0)
        m.num_batches_tracked.zero_()
    else:
        m.reset_running_stats()


def _precise_batches(images, labels, batch_size, num_batches, shuffle, seed, augment):
    n = images.shape[0]
    full = n // batch_size
    if full == 0:
        raise ConfigError(f"batch_size={batch_size} is larger than the {n} images given for PreciseBN.")
    if num_batches is None:
        num_batches = full
    elif num_batches > full:
        raise ConfigError(f"num_batches={num_batches} is more than the {full} full batches of "
                          f"{batch_size} that {n} images make.")
    if augment:
        if images.dtype != torch.uint8:
            raise ConfigError("augment=True needs uint8 images (as rnorm.data.load returns).")
        from . import data
        lab = labels if labels is not None else torch.zeros(n, dtype=torch.long)
        it = data.batches(images, lab, batch_size, shuffle=shuffle, seed=seed, augment=True, drop_last=True)
        for k, (x, _) in enumerate(it):
            if k >= num_batches:
                break
            yield x
        return
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_stable_seed("precise_bn", seed)))
    else:
        order = torch.arange(n)
    for k in range(num_batches):
        x = images[order[k * batch_size:(k + 1) * batch_size]]
        yield x.float().div_(255.0) if x.dtype == torch.uint8 else x


def precise_bn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
               batch_size: int = 128, num_batches: int | None = None, branch="main", device="auto",
               shuffle: bool = True, seed: int = 0, augment: bool = False) -> nn.Module:
    """A deep copy of ``model`` whose population statistics are recomputed exactly (PreciseBN).

    PreciseBN (Wu & Johnson, *Rethinking "Batch" in BatchNorm*, 2021; fvcore's
    ``update_bn_stats``): for every normalization layer with running buffers -- rnorm
    ``BatchNorm2d`` (including the branches of ``MultiBatchNorm2d``), ``RobustNorm2d`` and
    plain ``nn.BatchNorm*`` -- the buffers are reset and then ``num_batches`` batches of
    ``images`` (training data, uint8 or float in [0, 1]) are forwarded with the norm layers in
    train mode (every other layer in eval mode) and without gradients, the momentum set to
    ``1 / (k + 1)`` on batch ``k``. Then ``running = (1 - m) running + m stat_k`` makes each
    buffer the exact *average of the per-batch statistics*, instead of the EMA of training.
    The original momentum is restored; ``num_batches_tracked`` ends at the number of batches.

    What the buffers hold afterwards, with equal batches (the remainder that does not fill a
    batch is left out, so all batches are equal):

    * BatchNorm: ``running_mean`` = the mean of batch means (= the mean over all the images
      used); ``running_var`` = the mean of per-batch *unbiased* variances, since PyTorch's BN
      stores the unbiased (n / (n - 1)) batch variance in its buffer. This is the variance each
      training batch was normalized with, not the pooled variance of the data (which would add
      the variance of the batch means); fvcore does the same.
    * RobustNorm: ``running_mean`` as above, ``running_range`` = the mean of per-batch ranges
      (the power p is still applied at inference, as the layer does).

    ``branch`` routes the batches through one branch of every ``MultiBatchNorm2d``; only the
    statistics that branch updates are recomputed (``main``: the main buffers; ``adv``: the
    ``aux.adv`` buffers; with ``share="stats"`` the shared main buffers). Every other buffer is
    left as it was. ``shuffle`` (seeded by ``seed``) draws random batches, as training did;
    ``augment=True`` (uint8 images only) uses :func:`rnorm.data.batches`' random crop and flip,
    matching training with augmentation. The original model is not modified; the copy is on
    ``device`` (``auto``: CUDA when available) with the original's training flags.
    """
    images_t = images
    if not isinstance(images_t, torch.Tensor) or images_t.dim() != 4:
        raise ConfigError("images must be a tensor [N, C, H, W] (uint8, or float in [0, 1]).")
    if images_t.dtype != torch.uint8:
        _as_float_images("images", images_t)
    if labels is not None:
        labels = _check_labels(labels, images_t.shape[0])
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if num_batches is not None:
        num_batches = check_int("num_batches", num_batches, min_value=1)
    if isinstance(branch, str):
        check_choice("branch", branch, _norms.branches_of(model))
    seed = check_int("seed", seed, min_value=0)
    dev = resolve_device(device)

    out = copy.deepcopy(model).to(dev)
    flags = [(m, m.training) for m in out.modules()]
    layers = [m for m in out.modules() if _has_running(m)]
    saved = {id(m): (m.momentum, {k: v.clone() for k, v in _running_buffers(m).items()}) for m in layers}
    batches = _precise_batches(images_t, labels, batch_size, num_batches, bool(shuffle), seed, bool(augment))
    try:
        with torch.no_grad():
            for m in layers:
                _reset_running(m)
            out.eval()
            for m in layers:
                m.train()
            with _norms.route(out, branch):
                for k, x in enumerate(batches):
                    for m in layers:
                        m.momentum = 1.0 / (k + 1)
                    out(x.to(dev))
    finally:
        for m in layers:
            momentum, bufs = saved[id(m)]
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:  # not reached by this branch: keep what it had
                with torch.no_grad():
                    for k, v in bufs.items():
                        getattr(m, k).copy_(v)
        for m, flag in flags:
            m.training = flag
    return out


# ----------------------------------------------------------------------------- evaluation


class _MixedBatch(nn.Module):
    """``x -> model(cat([x, rest]))[:len(x)]``: the adversarial part of a mixed batch.

    Attacking this module makes the attack's gradient flow through the statistics of the whole
    mixed batch (clean images included) when the model normalizes with batch statistics.
    An ``nn.Module`` holding the model as a submodule, because torchattacks calls
    ``.eval()`` / ``.train()`` on what it attacks and looks for parameters to find the device.
    """

    def __init__(self, model: nn.Module, rest: torch.Tensor):
        super().__init__()
        self.model = model
        self.rest = rest.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, self.rest]))[: x.shape[0]]


def _layout(n: int, batch_size: int) -> list[tuple[torch.Tensor, int]]:
    """Batches as (positions, number of new images); the last one wraps around to the start."""
    return [(torch.arange(s, s + batch_size) % n, min(batch_size, n - s)) for s in range(0, n, batch_size)]


def _adv_count(batch_size: int, adv_fraction: float) -> int:
    return max(1, min(batch_size, int(round(adv_fraction * batch_size))))


def _craft(model, name, eps, params, x, y, k, batch_dependent):
    """Adversarial batch: the first ``k`` images attacked (all when k == len(x)), the rest clean."""
    if k >= x.shape[0]:
        return make_attack(name, model, eps, **params)(x, y)
    rest = x[k:]
    target = _MixedBatch(model, rest).eval() if batch_dependent else model
    adv = make_attack(name, target, eps, **params)(x[:k], y[:k])
    return torch.cat([adv.detach(), rest])


def _craft_all(net, mode, branch, layout, x_all, y_all, attack, eps, params, k, seed):
    """Adversarial batches for a row's layout, crafted on ``net`` in statistics mode ``mode``."""
    torch.manual_seed(seed)
    outs = []
    with _stats_context(net, mode), _norms.route(net, branch):
        for pos, _ in layout:
            outs.append(_craft(net, attack, eps, params, x_all[pos], y_all[pos], k, mode in _BATCH_DEPENDENT))
    return outs


def _plan(attacks, eps, stats, batch_sizes, branches, makeups, gradients):
    rows = []
    for a in attacks:
        if a == "clean":
            for b in batch_sizes:
                for br in branches:
                    for st in stats:
                        rows.append(dict(attack=a, eps=0.0, stats=st, batch_size=b, branch=br,
                                         makeup="all", gradient="none"))
            continue
        for e in eps:
            for b in batch_sizes:
                for br in branches:
                    for mk in makeups:
                        for st in stats:
                            for g in gradients:
                                if g == "transfer" and st == "population":
                                    continue  # identical to the white-box row
                                rows.append(dict(attack=a, eps=e, stats=st, batch_size=b, branch=br,
                                                 makeup=mk, gradient=g))
    return rows


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             attacks: Sequence[str] = ("clean", "fgsm", "pgd"), eps: Sequence[float] = (8 / 255,),
             stats: Sequence[str] = ("population",), batch_sizes: Sequence[int] = (128,),
             branches: Sequence[str] = ("main",), makeups: Sequence[str] = ("all",),
             gradients: Sequence[str] = ("white-box",), adv_fraction: float = 0.125,
             attack_params: dict | None = None, autoattack_n: int | None = None, device="auto",
             seed: int = 0, progress: bool | Callable[[dict], None] | None = None,
             precise_bn_data: tuple | None = None, precise_bn_options: dict | None = None,
             shuffle: bool = True) -> pd.DataFrame:
    """Clean and robust accuracy of ``model`` on ``images`` over a grid; one row per combination.

    Grid (each argument takes a sequence, or a single value): ``attacks`` (``clean`` and the
    names of :mod:`rnorm.attacks`), ``eps`` (numbers or strings like ``"8/255"``, in [0, 1]),
    ``stats`` (``population``, ``batch``, ``population_mean``, ``precise``), ``batch_sizes``,
    ``branches`` (of a multi-branch model, :func:`rnorm.norms.branches_of`), ``makeups``
    (``all``, ``mixed``) and ``gradients`` (``white-box``, ``transfer``).

    Columns: attack, eps, eps_label (``8/255``), stats, batch_size, branch, makeup, gradient,
    n (images scored), correct, accuracy (0..1), seconds (wall clock of the row), params (the
    attack's parameters as JSON, e.g. PGD's steps and step size).

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

    Batching: the images are put in a seeded random order (``shuffle=False`` keeps theirs);
    batches of ``batch_size`` follow it and the last batch is completed by wrapping around to
    the first images, whose predictions are not counted twice (module docstring).
    Reproducibility: torch is seeded before each row with a seed derived from ``seed`` and the
    row; the caller's random state is restored afterwards. The examples crafted with population
    statistics for a (attack, eps, batch_size, branch, makeup) are made once and shared by the
    population white-box row and the transfer rows.

    The model is put in eval mode for the evaluation and left as found (training flags,
    statistics modes, routes, device); no running buffer changes.
    ``progress``: ``True`` shows a tqdm bar, a callable is called with each finished row.
    """
    # ---- validate everything before computing anything
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} must be a torch.nn.Module.")
    images = _as_float_images("images", images)
    labels = _check_labels(labels, images.shape[0])
    n_all = images.shape[0]
    if n_all == 0:
        raise ConfigError("images is empty.")
    attacks = tuple(check_choice("attacks", a, EVAL_ATTACKS) for a in _nonempty("attacks", attacks))
    eps = tuple(parse_eps(e) if isinstance(e, str) else check_float("eps", e, min_value=0.0, max_value=1.0)
                for e in _nonempty("eps", eps))
    stats = tuple(check_choice("stats", s, EVAL_STATS) for s in _nonempty("stats", stats))
    batch_sizes = tuple(check_int("batch_sizes", b, min_value=1) for b in _nonempty("batch_sizes", batch_sizes))
    model_branches = _norms.branches_of(model)
    branches = tuple(check_choice("branches", b, model_branches) for b in _nonempty("branches", branches))
    makeups = tuple(check_choice("makeups", m, MAKEUPS) for m in _nonempty("makeups", makeups))
    gradients = tuple(check_choice("gradients", g, GRADIENTS) for g in _nonempty("gradients", gradients))
    adv_fraction = check_float("adv_fraction", adv_fraction, min_value=0.0, max_value=1.0, min_inclusive=False)
    seed = check_int("seed", seed, min_value=0)
    dev = resolve_device(device)
    if _plain_bn(model):
        for s in stats:
            if s not in ("population", "precise"):
                _stats_context(model, s)  # raises the ConfigError
    attack_params = {} if attack_params is None else attack_params
    if not isinstance(attack_params, dict):
        raise ConfigError(f"attack_params={attack_params!r} must be a dict such as {{'pgd': {{'steps': 20}}}}.")
    for k, v in attack_params.items():
        check_choice("attack_params", k, ATTACKS)
        if not isinstance(v, dict):
            raise ConfigError(f"attack_params[{k!r}]={v!r} must be a dict of parameters.")
    for b in batch_sizes:
        if b > n_all:
            raise ConfigError(f"batch_sizes: {b} is larger than the number of images ({n_all}); "
                              f"use more images or a smaller batch size.")
    n_aa = None
    if "autoattack" in attacks:
        n_aa = min(AUTOATTACK_N, n_all) if autoattack_n is None else \
            check_int("autoattack_n", autoattack_n, min_value=1, max_value=n_all)
        for b in batch_sizes:
            if b > n_aa:
                raise ConfigError(f"autoattack_n={n_aa} is smaller than batch size {b}; AutoAttack runs on "
                                  f"the first autoattack_n images, give at least the largest batch size.")
    elif autoattack_n is not None:
        check_int("autoattack_n", autoattack_n, min_value=1)
    if "precise" in stats:
        if precise_bn_data is None or not isinstance(precise_bn_data, (tuple, list)) or len(precise_bn_data) != 2:
            raise ConfigError("stats 'precise' needs precise_bn_data=(train_images, train_labels): "
                              "the training data PreciseBN recomputes the population statistics on.")
    precise_bn_options = dict(precise_bn_options or {})
    for k in precise_bn_options:
        check_choice("precise_bn_options", k, ("batch_size", "num_batches", "shuffle", "seed", "augment"))
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise ConfigError(f"progress={progress!r} must be None, True/False or a callable taking a row dict.")
    plan = _plan(attacks, eps, stats, batch_sizes, branches, makeups, gradients)
    if "autoattack" in attacks and any(s in _BATCH_DEPENDENT for s in stats) and "white-box" in gradients:
        warnings.warn("AutoAttack in a batch-dependent statistics mode attacks sub-batches of the images "
                      "not yet fooled, so it does not differentiate through the scored batch's statistics "
                      "and may overstate robustness; use white-box PGD as the adaptive attack there.",
                      stacklevel=2)

    with torch.no_grad():
        probe_dev = _model_device(model)
        with _Preserved(model):
            model.eval()
            n_classes = int(model(images[:2].to(probe_dev)).shape[1])
    base_params = {}
    for a in attacks:
        if a == "clean":
            continue
        p = dict(attack_params.get(a, {}))
        if a == "autoattack":
            p.setdefault("n_classes", n_classes)
            need = 3 if p.get("version", "standard") == "rand" else 4
            if n_classes < need:
                raise ConfigError(f"attacks: 'autoattack' needs a model with at least {need} classes "
                                  f"(its DLR losses); this model has {n_classes}.")
        make_attack(a, model, eps[0], **p)  # validates the parameters
        base_params[a] = p

    # ---- compute
    def ordered(n: int):
        """The first n images in the seeded batch order (the same order for the same n and seed)."""
        g = torch.Generator().manual_seed(_stable_seed("order", seed, n))
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        return images[:n][order].to(dev), labels[:n][order].to(dev)

    bar = None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(plan), desc="evaluate", leave=False)
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    out_rows = []
    precise_seconds = 0.0
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=rng_devices))
        stack.enter_context(_Preserved(model, dev))
        if bar is not None:
            stack.callback(bar.close)
        model.eval()
        sets = {n_all: ordered(n_all)}
        if n_aa is not None and n_aa not in sets:
            sets[n_aa] = ordered(n_aa)
        precise_models: dict = {}
        if "precise" in stats:
            t0 = time.perf_counter()
            for br in branches:
                precise_models[br] = precise_bn(model, *precise_bn_data, branch=br, device=dev, **precise_bn_options)
                precise_models[br].eval()
            precise_seconds = time.perf_counter() - t0
        crafted: dict = {}
        for row in plan:
            t0 = time.perf_counter()
            a, e, st, b, br, mk, g = (row[k] for k in ("attack", "eps", "stats", "batch_size", "branch",
                                                        "makeup", "gradient"))
            n_rows = n_aa if a == "autoattack" else n_all
            x_all, y_all = sets[n_rows]
            layout = _layout(n_rows, b)
            k = b if mk == "all" else _adv_count(b, adv_fraction)
            scored_model = precise_models[br] if st == "precise" else model
            scored_stats = "population" if st == "precise" else st
            group = (a, e, b, br, mk)
            tag = "population" if (g == "transfer" or st == "population") else st
            row_seed = _stable_seed(seed, a, repr(e), b, br, mk, tag)
            params = dict(base_params.get(a, {}))
            if a == "autoattack":
                params.setdefault("seed", row_seed)

            def craft(net, mode):
                return _craft_all(net, mode, br, layout, x_all, y_all, a, e, params, k, row_seed)

            if a == "clean":
                adv = [x_all[pos] for pos, _ in layout]
            elif g == "transfer" or st == "population":
                if crafted.get("key") != group:
                    crafted = {"key": group, "batches": craft(model, "population")}
                adv = crafted["batches"]
            else:
                adv = craft(scored_model, scored_stats)
            correct = scored = 0
            with torch.no_grad(), _stats_context(scored_model, scored_stats), _norms.route(scored_model, br):
                for (pos, new), x in zip(layout, adv):
                    m = min(new, k) if a != "clean" else new
                    pred = scored_model(x).argmax(1)
                    correct += int((pred[:m] == y_all[pos][:m]).sum())
                    scored += m
            if model.training or scored_model.training:
                raise RuntimeError("the model left eval mode during an attack; this is a bug in rnorm.evaluate.")
            used = make_attack(a, model, e, **params).params if a != "clean" else {}
            out = dict(row, eps_label="0" if a == "clean" else format_eps(e), n=scored, correct=correct,
                       accuracy=correct / scored if scored else math.nan,
                       seconds=time.perf_counter() - t0, params=json.dumps(used, sort_keys=True))
            out_rows.append(out)
            if bar is not None:
                bar.update(1)
            elif callable(progress) and not isinstance(progress, bool):
                progress(dict(out))
    frame = pd.DataFrame(out_rows, columns=COLUMNS)
    frame.attrs["precise_bn_seconds"] = precise_seconds
    frame.attrs["seed"] = seed
    return frame


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
        by = [by] if isinstance(by, str) else list(by)
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
