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
import dataclasses
import hashlib
import json
import math
import time
import warnings
from typing import Callable, Iterable

import pandas as pd
import torch
import torch.nn as nn

from . import norms as _norms
from ._validate import ConfigError, as_sequence, check_bool, check_choice, check_float, check_int
from .attacks import ATTACKS, format_eps, make_attack, parse_eps
from ._tensors import (check_images_labels, check_labels, model_device, num_outputs, pack_bits,  # noqa: F401
                       stable_seed, unpack_bits)  # pack_bits/unpack_bits: re-exported
from .precise_bn import precise_bn
from .hardware import resolve_device

EVAL_ATTACKS = ("clean",) + ATTACKS
EVAL_STATS = _norms.STATS_MODES + ("precise",)
MAKEUPS = ("all", "mixed")
GRADIENTS = ("white-box", "transfer")
COLUMNS = ["attack", "eps", "eps_label", "stats", "batch_size", "branch", "makeup", "gradient",
           "n", "correct", "accuracy", "seconds", "params"]
PER_IMAGE_COLUMNS = ["correct_bits", "scored_bits"]
MEASURES = ("n", "correct", "accuracy", "seconds", "params", "seed", "mean", "std", "n_seeds", *PER_IMAGE_COLUMNS)
AUTOATTACK_N = 200
# statistics modes whose output for one image depends on the other images of its batch
_BATCH_DEPENDENT = ("batch", "population_mean")


# ----------------------------------------------------------------------------- small helpers


def _stable_seed(*parts) -> int:
    """A seed in [0, 2**31) from a stable hash of ``parts`` (not Python's salted ``hash``)."""
    return stable_seed("rnorm.evaluate", *parts, modulus=2**31)


def _nonempty(param: str, value) -> tuple:
    """A grid field as a tuple without repeats, in order (:func:`rnorm._validate.as_sequence`: a
    single value, a bare string included, is one element)."""
    return tuple(dict.fromkeys(as_sequence(param, value)))  # drop repeats, keep order


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
    # .run: evaluate() checked every image and label once, as each attack's own call would
    if k >= x.shape[0]:
        return make_attack(name, model, eps, **params).run(x, y)
    rest = x[k:]
    target = _MixedBatch(model, rest).eval() if batch_dependent else model
    adv = make_attack(name, target, eps, **params).run(x[:k], y[:k])
    return torch.cat([adv.detach(), rest])


def _craft_all(net, mode, branch, layout, x_all, y_all, attack, eps, params, k, seed):
    """Adversarial batches for a row's layout, crafted on ``net`` in statistics mode ``mode``."""
    torch.manual_seed(seed)
    outs = []
    with _stats_context(net, mode), _norms.route(net, branch):
        for pos, _ in layout:
            outs.append(_craft(net, attack, eps, params, x_all[pos], y_all[pos], k, mode in _BATCH_DEPENDENT))
    return outs


@dataclasses.dataclass(frozen=True)
class EvalGrid:
    """What :func:`evaluate` computes, validated on construction (as :class:`rnorm.runs.RunConfig`).

    Sequences are stored as tuples without repeats; ``eps`` strings such as ``"8/255"`` become
    numbers. :meth:`rows` lists the rows in order (with the skips :func:`evaluate` documents),
    :meth:`key` hashes the grid for caching, and :meth:`check` makes the checks that need the
    model and the images, before anything is computed.
    """

    attacks: tuple = ("clean", "fgsm", "pgd")
    eps: tuple = (8 / 255,)
    stats: tuple = ("population",)
    batch_sizes: tuple = (128,)
    branches: tuple = ("main",)
    makeups: tuple = ("all",)
    gradients: tuple = ("white-box",)
    adv_fraction: float = 0.125
    attack_params: dict | None = None
    autoattack_n: int | None = None
    seed: int = 0
    shuffle: bool = True
    precise_bn_options: dict | None = None
    per_image: bool = False

    def __post_init__(self):
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        s("attacks", tuple(check_choice("attacks", a, EVAL_ATTACKS) for a in _nonempty("attacks", self.attacks)))
        s("eps", tuple(parse_eps(e) if isinstance(e, str) else check_float("eps", e, min_value=0.0, max_value=1.0)
                       for e in _nonempty("eps", self.eps)))
        s("stats", tuple(check_choice("stats", v, EVAL_STATS) for v in _nonempty("stats", self.stats)))
        s("batch_sizes", tuple(check_int("batch_sizes", b, min_value=1) for b in _nonempty("batch_sizes", self.batch_sizes)))
        s("branches", tuple(_nonempty("branches", self.branches)))
        s("makeups", tuple(check_choice("makeups", m, MAKEUPS) for m in _nonempty("makeups", self.makeups)))
        s("gradients", tuple(check_choice("gradients", g, GRADIENTS) for g in _nonempty("gradients", self.gradients)))
        s("adv_fraction", check_float("adv_fraction", self.adv_fraction, min_value=0.0, max_value=1.0, min_inclusive=False))
        s("seed", check_int("seed", self.seed, min_value=0))
        check_bool("shuffle", self.shuffle)
        check_bool("per_image", self.per_image)
        params = {} if self.attack_params is None else self.attack_params
        if not isinstance(params, dict):
            raise ConfigError(f"attack_params={params!r} must be a dict such as {{'pgd': {{'steps': 20}}}}.")
        for k, v in params.items():
            check_choice("attack_params", k, ATTACKS)
            if not isinstance(v, dict):
                raise ConfigError(f"attack_params[{k!r}]={v!r} must be a dict of parameters.")
        s("attack_params", {k: dict(v) for k, v in params.items()})
        if self.autoattack_n is not None:
            s("autoattack_n", check_int("autoattack_n", self.autoattack_n, min_value=1))
        options = dict(self.precise_bn_options or {})
        for k in options:
            check_choice("precise_bn_options", k, ("batch_size", "num_batches", "shuffle", "seed", "augment"))
        s("precise_bn_options", options)

    def rows(self) -> list[dict]:
        """The grid's rows in order: clean rows once per (batch size, branch, stats); no transfer
        row for population statistics (it would repeat the white-box row)."""
        out = []
        for a in self.attacks:
            for e in ((0.0,) if a == "clean" else self.eps):
                for b in self.batch_sizes:
                    for br in self.branches:
                        for mk in (("all",) if a == "clean" else self.makeups):
                            for st in self.stats:
                                for g in (("none",) if a == "clean" else self.gradients):
                                    if not (g == "transfer" and st == "population"):
                                        out.append(dict(attack=a, eps=e, stats=st, batch_size=b, branch=br,
                                                        makeup=mk, gradient=g))
        return out

    def key(self) -> str:
        """16 hex digits of the sha256 of the grid's canonical JSON."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check(self, model: nn.Module, n_images: int, precise_bn_data=None) -> int | None:
        """Checks against the model and the images; returns the number of AutoAttack images (or None)."""
        for b in self.branches:
            check_choice("branches", b, _norms.branches_of(model))
        if _plain_bn(model):
            for st in self.stats:
                if st not in ("population", "precise"):
                    _stats_context(model, st)  # raises the ConfigError
        for b in self.batch_sizes:
            if b > n_images:
                raise ConfigError(f"batch_sizes: {b} is larger than the number of images ({n_images}); "
                                  f"use more images or a smaller batch size.")
        if "precise" in self.stats and not (isinstance(precise_bn_data, (tuple, list)) and len(precise_bn_data) == 2):
            raise ConfigError("stats 'precise' needs precise_bn_data=(train_images, train_labels): "
                              "the training data PreciseBN recomputes the population statistics on.")
        if "apgd" in self.attacks and any(st in _BATCH_DEPENDENT for st in self.stats) \
                and "white-box" in self.gradients:
            warnings.warn("APGD in a batch-dependent statistics mode attacks sub-batches of the images not yet "
                          "fooled, so it does not differentiate through the scored batch's statistics and may "
                          "overstate robustness; use white-box PGD as the adaptive attack there.", stacklevel=3)
        if "autoattack" not in self.attacks:
            return None
        n_aa = min(AUTOATTACK_N, n_images) if self.autoattack_n is None else \
            check_int("autoattack_n", self.autoattack_n, min_value=1, max_value=n_images)
        for b in self.batch_sizes:
            if b > n_aa:
                raise ConfigError(f"autoattack_n={n_aa} is smaller than batch size {b}; AutoAttack runs on "
                                  f"the first autoattack_n images, give at least the largest batch size.")
        if any(st in _BATCH_DEPENDENT for st in self.stats) and "white-box" in self.gradients:
            warnings.warn("AutoAttack in a batch-dependent statistics mode attacks sub-batches of the images "
                          "not yet fooled, so it does not differentiate through the scored batch's statistics "
                          "and may overstate robustness; use white-box PGD as the adaptive attack there.",
                          stacklevel=3)
        return n_aa


def _attack_params(grid: EvalGrid, model: nn.Module, n_classes: int) -> dict:
    """Each attack's parameters (AutoAttack's class count from the model), validated by building it once.
    Each also holds ``num_classes`` (make_attack's keyword, not an attack parameter: it is not in
    the row's ``params``), so that the attacks check the labels without reading the model again."""
    out = {}
    for a in grid.attacks:
        if a == "clean":
            continue
        p = dict(grid.attack_params.get(a, {}))
        if a == "autoattack":
            p.setdefault("n_classes", n_classes)
            need = 3 if p.get("version", "standard") == "rand" else 4
            if n_classes < need:
                raise ConfigError(f"attacks: 'autoattack' needs a model with at least {need} classes "
                                  f"(its DLR losses); this model has {n_classes}.")
        make_attack(a, model, grid.eps[0], **p)
        out[a] = dict(p, num_classes=n_classes)
    return out


class _Scorer:
    """Scores the rows of one grid on one model and one ordered image set (state shared across rows:
    the ordered sets, the PreciseBN copies, the population-crafted examples of the last group)."""

    def __init__(self, grid, model, sets, n_aa, params, precise_models, n_images):
        self.grid, self.model, self.sets, self.n_aa, self.n_images = grid, model, sets, n_aa, n_images
        self.params, self.precise, self.crafted = params, precise_models, {}

    def score(self, row: dict) -> dict:
        t0 = time.perf_counter()
        g_, model = self.grid, self.model
        a, e, st, b, br, mk, g = (row[k] for k in ("attack", "eps", "stats", "batch_size", "branch", "makeup", "gradient"))
        x_all, y_all, order = self.sets[self.n_aa if a == "autoattack" else next(iter(self.sets))]
        layout = _layout(x_all.shape[0], b)
        k = b if mk == "all" else _adv_count(b, g_.adv_fraction)
        scored_model = self.precise[br] if st == "precise" else model
        scored_stats = "population" if st == "precise" else st
        tag = "population" if (g == "transfer" or st == "population") else st
        row_seed = _stable_seed(g_.seed, a, repr(e), b, br, mk, tag)
        params = dict(self.params.get(a, {}))
        if a in ("autoattack", "apgd"):  # they seed themselves: derive their seed from the grid's
            params.setdefault("seed", row_seed)
        if a == "clean":
            adv = [x_all[pos] for pos, _ in layout]
        elif tag == "population":  # crafted with population statistics: shared by the rows of a group
            if self.crafted.get("key") != (a, e, b, br, mk):
                self.crafted = {"key": (a, e, b, br, mk), "batches": _craft_all(
                    model, "population", br, layout, x_all, y_all, a, e, params, k, row_seed)}
            adv = self.crafted["batches"]
        else:
            adv = _craft_all(scored_model, scored_stats, br, layout, x_all, y_all, a, e, params, k, row_seed)
        correct = scored = 0
        per_correct = torch.zeros(self.n_images, dtype=torch.bool)  # every row: all the images given
        per_scored = torch.zeros(self.n_images, dtype=torch.bool)
        with torch.no_grad(), _stats_context(scored_model, scored_stats), _norms.route(scored_model, br):
            for (pos, new), x in zip(layout, adv):
                m = min(new, k) if a != "clean" else new
                ok = (scored_model(x).argmax(1)[:m] == y_all[pos][:m]).cpu()
                correct += int(ok.sum())
                scored += m
                if g_.per_image:  # by the image's index in the images given to evaluate()
                    per_correct[order[pos[:m]]] = ok
                    per_scored[order[pos[:m]]] = True
        if model.training or scored_model.training:
            raise RuntimeError("the model left eval mode during an attack; this is a bug in rnorm.evaluate.")
        used = make_attack(a, model, e, **params).params if a != "clean" else {}
        out = dict(row, eps_label="0" if a == "clean" else format_eps(e), n=scored, correct=correct,
                   accuracy=correct / scored if scored else math.nan, seconds=time.perf_counter() - t0,
                   params=json.dumps(used, sort_keys=True))
        if g_.per_image:
            out.update(correct_bits=pack_bits(per_correct), scored_bits=pack_bits(per_scored))
        return out


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
    its characters; a set (no fixed order) is refused.

    Columns: attack, eps, eps_label (``8/255``), stats, batch_size, branch, makeup, gradient,
    n (images scored), correct, accuracy (0..1), seconds (wall clock of the row), params (the
    attack's parameters as JSON, e.g. PGD's steps and step size); with ``per_image=True`` also
    ``correct_bits`` and ``scored_bits``: which images (by their index in ``images``) were
    scored and classified correctly, packed (:func:`unpack_bits`), so that two rows scored on the
    same images can be compared pair by pair (:func:`rnorm.stats.paired_rows`).

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


def _ordered(images, labels, n: int, grid: EvalGrid, dev):
    """The first n images in the seeded batch order (the same order for the same n and seed), the labels,
    and the order (position -> index of the image in ``images``)."""
    g = torch.Generator().manual_seed(_stable_seed("order", grid.seed, n))
    order = torch.randperm(n, generator=g) if grid.shuffle else torch.arange(n)
    return images[:n][order].to(dev), labels[:n][order].to(dev), order


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
