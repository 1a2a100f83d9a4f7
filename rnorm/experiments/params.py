"""Validated parameters of the book's notebooks.

Each notebook has a frozen dataclass of parameters (subclass of :class:`NotebookParams`) whose
defaults are the cheap ones in the notebook's ``parameters`` cell. Constructing it validates
every value, so a bad parameter stops the run at the top of the notebook with one message naming
the parameter, the value and what is allowed. :meth:`NotebookParams.from_namespace` reads the
values from the notebook's globals after papermill has injected its parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .._validate import ConfigError, check_choice, check_float, check_int, suggest
from ..attacks import ATTACKS, parse_eps
from ..data import DATASETS
from ..models import ARCHS
from ..norms import NORMS

PRECISIONS = ("fp32", "bf16")


def eps_list(param: str, values) -> tuple[float, ...]:
    """A non-empty list of epsilons (numbers or strings like "8/255"), each in [0, 1]."""
    if isinstance(values, (str, int, float)):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"{param}={values!r} must be a list of epsilons such as ['2/255', '8/255'].") from None
    if not values:
        raise ConfigError(f"{param}=[] is empty; give at least one epsilon such as '8/255'.")
    out = []
    for v in values:
        try:
            out.append(parse_eps(v))
        except ConfigError as e:
            raise ConfigError(f"{param}: {e}") from None
    return tuple(out)


def choice_list(param: str, values, allowed, *, min_len: int = 1) -> tuple[str, ...]:
    """A list of names, each one of ``allowed``."""
    if isinstance(values, str):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"{param}={values!r} must be a list drawn from {', '.join(map(repr, allowed))}.") from None
    if len(values) < min_len:
        raise ConfigError(f"{param}={values!r} needs at least {min_len} entries from {', '.join(map(repr, allowed))}.")
    for v in values:
        if not isinstance(v, str) or v not in allowed:
            raise ConfigError(f"{param} contains {v!r}, which is not allowed; choose from "
                              f"{', '.join(map(repr, allowed))}." + suggest(v, allowed))
    return tuple(values)


def int_list(param: str, values, *, min_value: int = 1, min_len: int = 1) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"{param}={values!r} must be a list of integers >= {min_value}.") from None
    if len(values) < min_len:
        raise ConfigError(f"{param}={values!r} needs at least {min_len} integers >= {min_value}.")
    return tuple(check_int(f"{param}[{i}]", v, min_value=min_value) for i, v in enumerate(values))


@dataclasses.dataclass(frozen=True)
class NotebookParams:
    """Common parameters; subclasses add their own fields and checks in ``_check``."""

    device: str = "auto"
    results_dir: str | None = None
    profile: str | None = None
    progress: bool = False
    threads: int | None = None

    NOTEBOOK = ""

    def __post_init__(self):
        check_device(self.device)
        if self.threads is not None:
            check_int("threads", self.threads, min_value=1)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):  # keep the dataclass hashable and immutable
                object.__setattr__(self, f.name, tuple(v))
        self._check()

    def _check(self) -> None:  # pragma: no cover - overridden
        pass

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_namespace(cls, namespace: dict) -> "NotebookParams":
        """Build from a notebook's globals (the parameters cell plus papermill's injection)."""
        return cls(**{k: namespace[k] for k in cls.field_names() if k in namespace})

    @classmethod
    def from_dict(cls, values: dict) -> "NotebookParams":
        """Build from a mapping, refusing unknown keys with a close-match suggestion."""
        names = cls.field_names()
        for k in values:
            if k not in names:
                raise ConfigError(f"notebook {cls.NOTEBOOK!r} has no parameter {k!r}; its parameters are "
                                  f"{', '.join(names)}." + suggest(k, names))
        return cls(**values)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def check_device(device) -> str:
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        raise ConfigError(f"device={device!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


@dataclasses.dataclass(frozen=True)
class TrainingParams(NotebookParams):
    """The training parameters shared by every notebook that trains models.

    :meth:`run_config` turns them into a :class:`rnorm.runs.RunConfig`, so every notebook trains
    with the same fields and none can forget one.
    """

    width: int = 8
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    warmup_epochs: int = 0
    train_subset: int | None = 1000
    seeds: tuple = (0,)
    precision: str = "fp32"
    channels_last: bool = False

    def _check(self) -> None:
        if hasattr(self, "dataset"):
            check_choice("dataset", self.dataset, tuple(DATASETS))
        if hasattr(self, "arch"):
            check_choice("arch", self.arch, ARCHS)
        check_int("width", self.width, min_value=1)
        check_int("epochs", self.epochs, min_value=1)
        check_int("batch_size", self.batch_size, min_value=1)
        check_float("lr", self.lr, min_value=0.0, min_inclusive=False)
        check_int("warmup_epochs", self.warmup_epochs, min_value=0, max_value=self.epochs - 1)
        if self.train_subset is not None:
            check_int("train_subset", self.train_subset, min_value=10)
        check_choice("precision", self.precision, PRECISIONS)
        self._set("seeds", int_list("seeds", self.seeds, min_value=0))

    def run_config(self, **fields):
        """A RunConfig with this notebook's training parameters plus ``fields`` (dataset, norm, seed, ...)."""
        from ..runs import RunConfig
        return RunConfig(width=self.width, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                         warmup_epochs=self.warmup_epochs, train_subset=self.train_subset,
                         precision=self.precision, **fields)


__all__ = ["NotebookParams", "TrainingParams", "eps_list", "choice_list", "int_list", "check_device",
           "ATTACKS", "NORMS", "PRECISIONS", "ConfigError", "check_choice", "check_int", "check_float"]
