"""What a training batch is made of: the five recipes, and the settings of one step.

A recipe (:class:`Recipe`, :data:`RECIPES`) is a list of *slices* ``(branch, kind)``; ``kind`` is
``clean`` (the batch itself), ``adv`` (untargeted L-inf PGD with random start,
:func:`rnorm.attacks.make_attack` ``"pgd"``) or ``easy`` (PGD *targeted at the true label*, ``"easy"``:
EBN's easy examples as we read the paper):

==============  =====================================  ==================================
recipe          slices (branch <- images)              norm
==============  =====================================  ==================================
``standard``    main <- clean                          any
``pgd_at``      main <- adv (Madry et al.: PGD only)    any
``advprop``     main <- clean, adv <- adv               ``multibn`` with branch ``adv``
``ebn``         main <- clean, easy <- easy             ``multibn`` with branch ``easy``
``advprop_ebn`` main <- clean, adv <- adv, easy <- easy ``multibn`` with ``adv``, ``easy``
==============  =====================================  ==================================

:class:`StepSettings` holds what a step needs from a run's config: the PGD budget of the training
attack, which statistics it attacks through (``attack_stats``), how the slices' losses combine
(``loss_weighting``) and the precision. How a step uses them is in :mod:`rnorm.train`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..hardware import resolve_precision
from .._validate import ConfigError, as_sequence, check_choice, check_float, check_int
from ..norms import MAIN

KINDS = ("clean", "adv", "easy")
ATTACK_STATS = ("batch", "population")
LOSS_WEIGHTINGS = ("mean", "sum")


@dataclass(frozen=True)
class Recipe:
    """A recipe: the slices of a training batch as ``(branch, kind)`` pairs."""

    name: str
    slices: tuple[tuple[str, str], ...]
    description: str

    def __post_init__(self):
        """Each slice must be a ``(branch, kind)`` pair of strings (kind one of :data:`KINDS`); one
        bare pair is one slice. A string is never unpacked into characters (``"ab"`` as ``('a', 'b')``)."""
        slices = self.slices
        if isinstance(slices, (tuple, list)) and len(slices) == 2 and all(isinstance(v, str) for v in slices):
            slices = (tuple(slices),)  # one bare (branch, kind) pair is one slice
        out = []
        for item in as_sequence("slices", slices):
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not all(isinstance(v, str) for v in item):
                raise ConfigError(f"Recipe {self.name!r}: slices={self.slices!r}; each slice is a (branch, kind) "
                                  f"pair of names, got {item!r}.")
            check_choice("kind", item[1], KINDS)
            out.append(tuple(item))
        object.__setattr__(self, "slices", tuple(out))

    @property
    def branches(self) -> tuple[str, ...]:
        """Auxiliary branches the model needs (every slice branch except ``main``)."""
        return tuple(b for b, _ in self.slices if b != MAIN)

    @property
    def needs_multibn(self) -> bool:
        return bool(self.branches)


RECIPES: dict[str, Recipe] = {
    "standard": Recipe("standard", ((MAIN, "clean"),), "clean images through the main norm"),
    "pgd_at": Recipe("pgd_at", ((MAIN, "adv"),),
                     "PGD adversarial training (Madry et al.): PGD examples only, main norm"),
    "advprop": Recipe("advprop", ((MAIN, "clean"), ("adv", "adv")),
                      "AdvProp: clean through main, PGD examples through branch 'adv'"),
    "ebn": Recipe("ebn", ((MAIN, "clean"), ("easy", "easy")),
                  "EBN: clean through main, easy examples (PGD targeted at the true label) through 'easy'"),
    "advprop_ebn": Recipe("advprop_ebn", ((MAIN, "clean"), ("adv", "adv"), ("easy", "easy")),
                          "AdvProp + EBN: clean/main, PGD/adv, easy/easy; sum of the three losses"),
}


def get_recipe(recipe) -> Recipe:
    """The :class:`Recipe` for a name (or the recipe itself)."""
    if isinstance(recipe, Recipe):
        return recipe
    return RECIPES[check_choice("recipe", recipe, tuple(RECIPES))]


def branches_for(recipe) -> tuple[str, ...]:
    """Auxiliary branches a recipe trains: ``()``, ``("adv",)``, ``("easy",)`` or ``("adv", "easy")``."""
    return get_recipe(recipe).branches


def metric_columns(recipe) -> list[str]:
    """The per-step / per-epoch metric names of a recipe: ``loss`` then ``loss_<b>``, ``acc_<b>``."""
    cols = ["loss"]
    for b, _ in get_recipe(recipe).slices:
        cols += [f"loss_{b}", f"acc_{b}"]
    return cols


# ---------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class StepSettings:
    """What :func:`rnorm.train.train_step` needs from a config (a :class:`rnorm.runs.RunConfig` has all)."""

    train_eps: float = 8 / 255
    train_steps: int = 5
    train_alpha: float | None = None
    attack_stats: str = "batch"
    loss_weighting: str = "mean"
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self):
        object.__setattr__(self, "train_eps", check_float("train_eps", self.train_eps, min_value=0.0, max_value=1.0))
        object.__setattr__(self, "train_steps", check_int("train_steps", self.train_steps, min_value=1))
        if self.train_alpha is not None:
            object.__setattr__(self, "train_alpha", check_float("train_alpha", self.train_alpha, min_value=0.0,
                                                                 max_value=1.0, min_inclusive=False))
        check_choice("attack_stats", self.attack_stats, ATTACK_STATS)
        check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        object.__setattr__(self, "precision", resolve_precision(self.precision))
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last={self.channels_last!r} must be True or False.")

    @property
    def alpha(self) -> float:
        """PGD step size: ``train_alpha`` or ``2.5 * eps / steps`` (Madry et al.)."""
        return 2.5 * self.train_eps / self.train_steps if self.train_alpha is None else self.train_alpha

    @classmethod
    def of(cls, cfg) -> "StepSettings":
        """From a RunConfig-like object, a dict, ``None`` (defaults) or a StepSettings."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        names = cls.__dataclass_fields__
        if isinstance(cfg, dict):
            return cls(**{k: v for k, v in cfg.items() if k in names})
        return cls(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})
