"""What an evaluation computes: the grid of :func:`rnorm.evaluate.evaluate`, validated once.

:class:`EvalGrid` holds the settings the papers and their critics vary (attacks, eps, statistics
modes, inference batch sizes, branches, batch make-ups, attack gradients), checks them where it is
built, lists the rows they give (:meth:`EvalGrid.rows`, with the skips the module docstring of
:mod:`rnorm.evaluate` documents), hashes them (:meth:`EvalGrid.key`) and makes the checks that need the
model and the images (:meth:`EvalGrid.check`). The statistics mode of a row is set with
:func:`_stats_context`, which also accepts plain ``nn.BatchNorm`` layers for ``population``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import torch.nn as nn

from .. import norms as _norms
from .._tensors import stable_seed
from .._validate import ConfigError, as_sequence, check_bool, check_choice, check_float, check_int
from ..attacks import ATTACKS, parse_eps

EVAL_ATTACKS = ("clean",) + ATTACKS
EVAL_STATS = _norms.STATS_MODES + ("precise",)
MAKEUPS = ("all", "mixed")
GRADIENTS = ("white-box", "transfer")
AUTOATTACK_N = 200
# statistics modes whose output for one image depends on the other images of its batch
_BATCH_DEPENDENT = ("batch", "population_mean")


def _stable_seed(*parts) -> int:
    """A seed in [0, 2**31) from a stable hash of ``parts`` (not Python's salted ``hash``)."""
    return stable_seed("rnorm.evaluate", *parts, modulus=2**31)


def _nonempty(param: str, value) -> tuple:
    """A grid field as a tuple without repeats, in order (:func:`rnorm._validate.as_sequence`: a
    single value, a bare string included, is one element)."""
    return tuple(dict.fromkeys(as_sequence(param, value)))  # drop repeats, keep order


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


@dataclasses.dataclass(frozen=True)
class EvalGrid:
    """What :func:`rnorm.evaluate.evaluate` computes, validated on construction (as
    :class:`rnorm.runs.RunConfig`).

    Sequences are stored as tuples without repeats; ``eps`` strings such as ``"8/255"`` become
    numbers. :meth:`rows` lists the rows in order (with the skips that :mod:`rnorm.evaluate`
    documents), :meth:`key` hashes the grid for caching, and :meth:`check` makes the checks that
    need the model and the images, before anything is computed.
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
        """Checks against the model and the images; returns the number of AutoAttack images (or None).
        Its warnings name the caller of :func:`rnorm.evaluate.evaluate` (``stacklevel=4``: through
        ``evaluate``'s ``_checked``)."""
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
                          "overstate robustness; use white-box PGD as the adaptive attack there.", stacklevel=4)
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
                          stacklevel=4)
        return n_aa
