"""A training run's configuration (:class:`RunConfig`): every field that determines a trained model,
validated once on construction, with the key that names its folder (:meth:`RunConfig.key`: 12 hex digits
of the sha256 of the canonical JSON of the config and :data:`SCHEMA_VERSION`), and the untrained model it
describes (:func:`build_model`)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch

from .. import hardware
from .. import train as _train
from .._validate import ConfigError, check_bool, check_choice, check_float, check_int, suggest
from ..norms import NORMS, SHARE_MODES


SCHEMA_VERSION = 2


NORM_NAMES = tuple(NORMS)


def _datasets() -> tuple[str, ...]:
    from ..data import DATASETS
    return tuple(DATASETS)


def _archs() -> tuple[str, ...]:
    from ..models import ARCHS
    return ARCHS


def _check_eps(name: str, value) -> float:
    if isinstance(value, str):
        from ..attacks import parse_eps
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
        from ..data import info
        return info(self.dataset).augment_default if self.augment is None else self.augment


def build_model(config: RunConfig) -> torch.nn.Module:
    """The (untrained) model of a config: :func:`rnorm.models.for_dataset` with the config's norm."""
    from ..models import for_dataset

    kw = {}
    if config.norm == "robustnorm":
        kw["p"] = config.norm_p
    elif config.norm == "multibn":
        kw["branches"] = config.branches
        kw["share"] = config.share
    return for_dataset(config.arch, config.dataset, width=config.width, norm=config.norm, **kw)
