"""Validated parameters of the book's notebooks.

Each notebook has a frozen dataclass of parameters (subclass of :class:`NotebookParams`) whose
defaults are the cheap ones in the notebook's ``parameters`` cell (a test keeps the two equal).
Constructing it validates every value, so a bad parameter stops the run at the top of the
notebook with one message naming the parameter, the value and what is allowed.
:meth:`NotebookParams.from_namespace` reads the values from the notebook's globals after
papermill has injected its parameters, and refuses a name the notebook does not have (a typo
such as ``-p epsilon 0.5`` would otherwise run the defaults silently).

One name for one concept, in every notebook, profile and :class:`rnorm.runs.RunConfig`:
``epsilons`` (pixel-scale L-inf radii), ``train_subset`` (training images), ``train_batch_size``
(training), ``eval_batch_size`` (inference batch of the evaluation), ``sweep_batch_sizes`` (the
inference batch sizes of the stats-swap sweep).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .._validate import ConfigError, check_bool, check_choice, check_float, check_int, suggest
from ..attacks import ATTACKS, parse_eps
from ..data import DATASETS
from ..hardware import PRECISIONS, check_layout
from ..models import ARCHS
from ..norms import NORMS

# what a notebook's globals hold besides its parameters when the setup cell reads them
_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PLAIN = (str, int, float, bool, list, tuple, dict, type(None))


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
    """A non-empty list of distinct integers (a repeated value is an error, not silently merged)."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, str):
        raise ConfigError(f"{param}={values!r} must be a list of integers >= {min_value}.")
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"{param}={values!r} must be a list of integers >= {min_value}.") from None
    if len(values) < min_len:
        raise ConfigError(f"{param}={values!r} needs at least {min_len} integers >= {min_value}.")
    out = tuple(check_int(f"{param}[{i}]", v, min_value=min_value) for i, v in enumerate(values))
    repeated = sorted({v for v in out if out.count(v) > 1})
    if repeated:
        raise ConfigError(f"{param}={list(out)!r} repeats {repeated}; give each value once.")
    return out


@dataclasses.dataclass(frozen=True)
class NotebookParams:
    """Common parameters; subclasses add their own fields and checks in ``_check``.

    There is no ``profile`` parameter: which profile a result belongs to is derived by comparing
    the parameters with the profiles (:func:`rnorm.book.matching_profile`), so no override can
    label smoke-scale numbers as the published ones.
    """

    device: str = "auto"
    results_dir: str | None = None
    progress: bool = False
    threads: int | None = None

    NOTEBOOK = ""

    def __post_init__(self):
        check_device(self.device)
        if self.threads is not None:
            check_int("threads", self.threads, min_value=1)
        check_bool("progress", self.progress)
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
        """Build from a notebook's globals (the parameters cell plus papermill's injection).

        Every global that looks like a parameter (a plain value: str, number, bool, None, list,
        tuple or dict, not starting with ``_``) must be a field; anything else is refused with a
        close-match suggestion. Call it before defining other plain globals.
        """
        names = cls.field_names()
        for k, v in namespace.items():
            if k.startswith("_") or k in _NOT_PARAMETERS or k in names or not isinstance(v, _PLAIN):
                continue
            raise ConfigError(f"notebook {cls.NOTEBOOK!r} has no parameter {k!r}; its parameters are "
                              f"{', '.join(names)}." + suggest(k, names))
        return cls(**{k: namespace[k] for k in names if k in namespace})

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
    train_batch_size: int = 128
    lr: float = 0.1
    warmup_epochs: int = 0
    train_subset: int | None = 1000
    seeds: tuple = (0,)
    precision: str = "auto"
    channels_last: object = "auto"

    def _check(self) -> None:
        if hasattr(self, "dataset"):
            check_choice("dataset", self.dataset, tuple(DATASETS))
        if hasattr(self, "arch"):
            check_choice("arch", self.arch, ARCHS)
        self._set("width", check_int("width", self.width, min_value=1))
        self._set("epochs", check_int("epochs", self.epochs, min_value=1))
        self._set("train_batch_size", check_int("train_batch_size", self.train_batch_size, min_value=2))
        self._set("lr", check_float("lr", self.lr, min_value=0.0, min_inclusive=False))
        self._set("warmup_epochs", check_int("warmup_epochs", self.warmup_epochs, min_value=0,
                                             max_value=self.epochs - 1))
        if self.train_subset is not None:
            self._set("train_subset", check_int("train_subset", self.train_subset, min_value=10))
        check_choice("precision", self.precision, PRECISIONS)
        check_layout(self.channels_last)
        self._set("seeds", int_list("seeds", self.seeds, min_value=0))

    def _check_evaluation(self) -> None:
        """The evaluation parameters the studies share: ``attacks`` (fgsm, pgd), ``epsilons``,
        ``pgd_steps``, ``test_n`` and ``eval_batch_size`` (at most ``test_n``)."""
        self._set("attacks", choice_list("attacks", self.attacks, ("fgsm", "pgd")))
        self._set("epsilons", eps_list("epsilons", self.epsilons))
        self._set("pgd_steps", check_int("pgd_steps", self.pgd_steps, min_value=1))
        self._set("test_n", check_int("test_n", self.test_n, min_value=1))
        self._set("eval_batch_size", check_int("eval_batch_size", self.eval_batch_size, min_value=2))
        if self.eval_batch_size > self.test_n:
            raise ConfigError(f"eval_batch_size={self.eval_batch_size} is larger than test_n={self.test_n}; "
                              f"allowed: batch sizes up to test_n.")

    def run_config(self, **fields):
        """A RunConfig with this notebook's training parameters plus ``fields`` (dataset, norm, seed, ...)."""
        from ..runs import RunConfig
        return RunConfig(width=self.width, epochs=self.epochs, batch_size=self.train_batch_size, lr=self.lr,
                         warmup_epochs=self.warmup_epochs, train_subset=self.train_subset,
                         precision=self.precision, **fields)


__all__ = ["NotebookParams", "TrainingParams", "eps_list", "choice_list", "int_list", "check_device",
           "ATTACKS", "NORMS", "PRECISIONS", "ConfigError", "check_bool", "check_choice", "check_int",
           "check_float"]
