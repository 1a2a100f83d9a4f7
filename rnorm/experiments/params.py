"""Validated parameters of the book's notebooks: the one source of every default and its description.

Each notebook has a frozen pydantic dataclass of parameters (subclass of :class:`NotebookParams`,
made with :func:`params_model`). Each field holds the parameter's default, its one-line description
and its constraints, in one place: ``width: Int = Field(8, ge=1, description="...")``. The
notebook's ``parameters`` cell is generated from it (:func:`parameters_cell`; ``make parameters``
rewrites the cells, and a test fails while one differs), and a profile overrides it.

Constructing a model validates every value, so a bad parameter stops the run at the top of the
notebook with one :class:`ConfigError` naming the parameter, the value and what is allowed
(pydantic's errors are put in those words by :func:`config_error`).
:meth:`NotebookParams.from_namespace` reads the values from the notebook's globals after papermill
has injected its parameters, and refuses a name the notebook does not have (a typo such as
``-p epsilon 0.5`` would otherwise run the defaults silently).

One name for one concept, in every notebook, profile and :class:`rnorm.runs.RunConfig`:
``epsilons`` (pixel-scale L-inf radii), ``train_subset`` (training images), ``train_batch_size``
(training), ``eval_batch_size`` (inference batch of the evaluation), ``sweep_batch_sizes`` (the
inference batch sizes of the stats-swap sweep).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
from typing import Annotated, Literal, Optional, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, model_validator
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from .._validate import ConfigError, _range_text, as_sequence, suggest
from ..attacks import parse_eps
from ..data import DATASETS
from ..hardware import PRECISIONS, check_layout
from ..models import ARCHS

# what a notebook's globals hold besides its parameters when the setup cell reads them
_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PLAIN = (str, int, float, bool, list, tuple, dict, type(None))


# --------------------------------------------------------------------------------- field types
@dataclasses.dataclass(frozen=True)
class CellType:
    """Annotation metadata: the type a parameters cell writes for a field whose values are written
    otherwise than the validated type (an epsilon is written ``"8/255"``, validated as a float)."""

    name: str


def _not_bool(value, info):
    """Refuse a boolean where a number is expected (pydantic's lax mode reads True as 1)."""
    if isinstance(value, bool):
        raise ConfigError(f"{info.field_name}={value!r} must be a number, not a boolean.")
    return value


def _integer(value, info):
    """Refuse a boolean or a string where an integer is expected (pydantic's lax mode reads both)."""
    if isinstance(value, (bool, str)):
        raise ConfigError(f"{info.field_name}={value!r} must be an integer, not {type(value).__name__}.")
    return value


def _eps(value, info):
    """An epsilon written as a number or a fraction string (``"8/255"``), in [0, 1]."""
    try:
        return parse_eps(value)
    except ConfigError as e:
        raise ConfigError(f"{info.field_name}: {e}") from None


def _sequence(value, info):
    """rnorm's one reading of a sequence (:func:`rnorm._validate.as_sequence`): a bare value is one element."""
    return as_sequence(info.field_name, value, nonempty=False)


def _distinct(value: tuple, info) -> tuple:
    """Refuse a repeated value (it would be silently merged, or trained twice)."""
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise ConfigError(f"{info.field_name}={list(value)!r} repeats a value ({repeated}); give each value once.")
    return value


def _device(value):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:")):
        raise ConfigError(f"device={value!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return value


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Bool = StrictBool
Eps = Annotated[float, BeforeValidator(_eps), CellType("str")]
Device = Annotated[str, BeforeValidator(_device)]
Layout = Annotated[Union[bool, str], BeforeValidator(check_layout)]
Dataset = Literal[tuple(DATASETS)]
Arch = Literal[ARCHS]
Precision = Literal[PRECISIONS]


def listof(item, *, distinct: bool = False):
    """A list parameter of ``item``s (held as a tuple, so the parameters stay hashable); a bare value is
    one element; ``distinct``: a repeated value is an error."""
    tp = Annotated[tuple[item, ...], BeforeValidator(_sequence)]
    return Annotated[tp, AfterValidator(_distinct)] if distinct else tp


def ints(ge: int):
    """A list of integers >= ``ge``, each given once."""
    return listof(Annotated[int, BeforeValidator(_integer), Ge(ge)], distinct=True)


def choices(allowed, *, distinct: bool = False):
    """A list of names, each one of ``allowed`` (a misspelled one is refused with a close-match suggestion)."""
    return listof(Literal[tuple(allowed)], distinct=distinct)


Seeds = ints(0)
Epsilons = listof(Eps)
Attacks = choices(("fgsm", "pgd"))
PositiveFloats = listof(Annotated[float, BeforeValidator(_not_bool), Gt(0)], distinct=True)


# ------------------------------------------------------------------------- errors in rnorm's words
def _name(loc: tuple) -> str:
    return str(loc[0]) + "".join(f"[{x}]" for x in loc[1:]) if loc else "parameters"


def _allowed(cls, loc: tuple) -> str:
    """What a numeric parameter (or an element of a list parameter) allows, read from its field:
    "an integer >= 2", "a number in (0, 1]"."""
    f = cls.__pydantic_fields__.get(loc[0]) if loc else None
    if f is None:
        return "a number"
    tp, meta = f.annotation, list(f.metadata)
    if len(loc) > 1 and get_origin(tp) is tuple:  # an element: tuple[Annotated[int, ..., Ge(2)], ...]
        tp, meta = get_args(tp)[0], []
    if get_origin(tp) in (Union, types.UnionType):  # Optional[int]
        tp = next(a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Annotated:
        tp, *more = get_args(tp)
        meta += more
    b = {a: getattr(m, a) for m in meta if isinstance(m, (Ge, Gt, Le, Lt)) for a in ("ge", "gt", "le", "lt")
         if hasattr(m, a)}
    lo, hi = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    return ("an integer" if tp is int else "a number") + _range_text(lo, hi, "gt" not in b, "lt" not in b)


def _message(err: dict, cls) -> str:
    """One pydantic error as rnorm says it: the parameter, the value given and what is allowed."""
    kind, loc, value = err["type"], err["loc"], err.get("input")
    name = _name(loc)
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):
        return str(original)
    if kind == "unexpected_keyword_argument":
        names = cls.field_names()
        return (f"notebook {cls.NOTEBOOK!r} has no parameter {name!r}; its parameters are "
                f"{', '.join(names)}." + suggest(name, names))
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        return (f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}."
                + suggest(value, allowed))
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{name}={value!r} is out of range; allowed: {_allowed(cls, loc)}."
    if kind == "bool_type":
        return f"{name}={value!r} must be True or False (a boolean, not {type(value).__name__})."
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{name}={value!r} must be {_allowed(cls, loc)}."
    if kind == "finite_number":
        return f"{name}={value!r} is not a finite number; allowed: a finite number."
    if kind in ("float_type", "float_parsing"):
        return f"{name}={value!r} must be {_allowed(cls, loc)}."
    if kind == "too_short":
        return f"{name}={list(value) if isinstance(value, tuple) else value!r} is empty; give at least one value."
    return f"{name}={value!r} is not allowed: {err['msg']}."


def config_error(error: ValidationError, cls) -> ConfigError:
    """A pydantic ValidationError as one ConfigError: a ConfigError a validator raised is passed on
    as it is; pydantic's own errors are put in rnorm's words (:func:`_message`), all in one message."""
    errors = error.errors()
    bad = {e["loc"][0] for e in errors if len(e["loc"]) > 1}  # a list with a bad element: not also "empty"
    errors = [e for e in errors if not (e["type"] == "too_short" and e["loc"] and e["loc"][0] in bad)]
    original = (errors[0].get("ctx") or {}).get("error")
    if len(errors) == 1 and isinstance(original, ConfigError):
        return original
    return ConfigError(" ".join(_message(e, cls) for e in errors))


def check_at_most_test_n(name: str, value: int, test_n: int) -> None:
    """A count of test images (``apgd_n``, ``curve_n``: the first of the ``test_n``) is at most ``test_n``."""
    if value > test_n:
        raise ConfigError(f"{name}={value} is out of range; allowed: an integer in [1, {test_n}] (at most test_n).")


def params_model(cls):
    """Make ``cls`` a notebook's parameters: a frozen (so hashable) pydantic dataclass that refuses
    unknown names, validates its defaults too, refuses NaN and infinities, and raises a
    :class:`ConfigError` (never a pydantic ValidationError) for a bad value."""
    cls = _pydantic_dataclass(frozen=True, config=ConfigDict(
        extra="forbid", validate_default=True, allow_inf_nan=False))(cls)
    validate = cls.__init__

    @functools.wraps(validate)
    def __init__(self, *args, **kwargs):
        try:
            validate(self, *args, **kwargs)
        except ValidationError as e:
            raise config_error(e, type(self)) from None

    cls.__init__ = __init__
    return cls


# ------------------------------------------------------------------------------------- models
@params_model
class NotebookParams:
    """Where and how a notebook runs; subclasses add the notebook's own fields and cross-field checks
    (a ``model_validator(mode="after")`` that raises ConfigError).

    There is no ``profile`` parameter: which profile a result belongs to is derived by comparing
    the parameters with the profiles (:func:`rnorm.book.matching_profile`), so no override can
    label smoke-scale numbers as the published ones.
    """

    device: Device = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    results_dir: Optional[str] = Field(None, description="where results go (None: book/results)")
    progress: Bool = Field(False, description="show tqdm progress bars")
    threads: Optional[Int] = Field(None, ge=1, description="torch intra-op threads (None: torch's default)")

    NOTEBOOK = ""
    CELL_NOTE = ""  # said after the parameters cell's first line

    def _set(self, name: str, value) -> None:
        """Replace a validated value by its normal form, inside a validator (the dataclass is frozen)."""
        object.__setattr__(self, name, value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The parameters' names, in field order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_namespace(cls, namespace: dict) -> "NotebookParams":
        """Build from a notebook's globals (the parameters cell plus papermill's injection).

        Every global that looks like a parameter (a plain value: str, number, bool, None, list,
        tuple or dict, not starting with ``_``) must be a field; anything else is refused with a
        close-match suggestion. Call it before defining other plain globals.
        """
        names = cls.field_names()
        unknown = {k: v for k, v in namespace.items() if not (
            k.startswith("_") or k in _NOT_PARAMETERS or k in names or not isinstance(v, _PLAIN))}
        return cls.from_dict({**unknown, **{k: namespace[k] for k in names if k in namespace}})

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
        """The validated values as plain JSON-able values (tuples as lists): what the notebook key hashes."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@params_model
class TrainingParams(NotebookParams):
    """The training parameters shared by every notebook that trains models.

    :meth:`run_config` turns them into a :class:`rnorm.runs.RunConfig`, so every notebook trains
    with the same fields and none can forget one. A subclass that evaluates has ``test_n`` and
    ``eval_batch_size``, and the inference batch may not exceed the test images.
    """

    width: Int = Field(8, ge=1, description="channels of the first stage (64 is the full ResNet-18, 16 the "
                                            "reference ResNet-20)")
    epochs: Int = Field(1, ge=1, description="training epochs")
    train_batch_size: Int = Field(128, ge=2, description="training batch (images)")
    lr: Float = Field(0.1, gt=0, description="peak SGD learning rate (cosine schedule)")
    warmup_epochs: Int = Field(0, ge=0, description="epochs of linear learning-rate warmup")
    train_subset: Optional[Int] = Field(1000, ge=10, description="training images (a stratified subset; None: "
                                                                 "the whole split)")
    seeds: Seeds = Field((0,), min_length=1, description="training seeds, one model per seed and normalization")
    precision: Precision = Field("auto", description="training arithmetic: auto (bf16 only where the CPU has it "
                                                     "natively, or CUDA), fp32, bf16")
    channels_last: Layout = Field("auto", description="memory layout: auto (the faster, measured once per "
                                                      "machine), True, False")

    CELL_NOTE = " These defaults run in about a minute on a laptop CPU."

    @model_validator(mode="after")
    def _check_training(self):
        if self.warmup_epochs > self.epochs - 1:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs!r} is out of range; allowed: an integer in "
                              f"[0, {self.epochs - 1}] (fewer than epochs={self.epochs}).")
        test_n, batch = getattr(self, "test_n", None), getattr(self, "eval_batch_size", None)
        if test_n is not None and batch is not None and batch > test_n:
            raise ConfigError(f"eval_batch_size={batch} is larger than test_n={test_n}; "
                              f"allowed: batch sizes up to test_n.")
        return self

    def run_config(self, **fields):
        """A RunConfig with this notebook's training parameters plus ``fields`` (dataset, norm, seed, ...)."""
        from ..runs import RunConfig
        return RunConfig(width=self.width, epochs=self.epochs, batch_size=self.train_batch_size, lr=self.lr,
                         warmup_epochs=self.warmup_epochs, train_subset=self.train_subset,
                         precision=self.precision, **fields)


# ---------------------------------------------------------------------------- parameters cells
def _cell_type(tp, metadata=()) -> str:
    """The type a parameters cell writes for annotation ``tp``: ``str``, ``int``, ``list``, ``dict``,
    ``Optional[int]``, ``Union[bool, str]`` (a :class:`CellType` in the metadata says otherwise)."""
    for m in metadata:
        if isinstance(m, CellType):
            return m.name
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        return _cell_type(base, meta)
    if origin is Literal:
        return type(get_args(tp)[0]).__name__
    if origin in (tuple, list):
        return "list"
    if origin is dict or tp is dict:
        return "dict"
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = ", ".join(_cell_type(a) for a in args)
        return f"Optional[{inner}]" if len(args) == 1 else f"Union[{inner}]"
    return tp.__name__


def _literal(value) -> str:
    """``value`` written as Python in a parameters cell (strings in double quotes, tuples as lists)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def cell_order(cls) -> list[str]:
    """The parameters in the order a parameters cell lists them: the notebook's own first, then those of
    each base class (training, then where and how it runs), each group in field order. A field belongs
    to the class that first defines it, so a subclass that restates a default keeps the field's place."""
    owner = {}
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("__annotations__", {}):
            if name in cls.__pydantic_fields__:
                owner.setdefault(name, klass)
    names = cls.field_names()
    return [n for klass in cls.__mro__ for n in names if owner.get(n) is klass]


def parameters_cell(cls) -> str:
    """The source of the ``parameters`` cell of ``cls``'s notebook, generated from the model: a comment,
    then one ``name: type = default  # description`` line per parameter (:func:`cell_order`)."""
    lines = [f"# Parameters: papermill injects overrides below this cell.{cls.CELL_NOTE}",
             f"# Generated by `make parameters` from {cls.__module__}.{cls.__qualname__}: change defaults there."]
    for name in cell_order(cls):
        f = cls.__pydantic_fields__[name]
        default = f.get_default(call_default_factory=True)
        tp = _cell_type(f.annotation, f.metadata)
        tp = f'"{tp}"' if "[" in tp else tp
        lines.append(f"{name}: {tp} = {_literal(default)}  # {f.description}")
    return "\n".join(lines)


__all__ = ["NotebookParams", "TrainingParams", "params_model", "parameters_cell", "config_error", "listof",
           "ints", "choices", "Attacks", "PositiveFloats", "Int", "Float", "Bool", "Eps", "Epsilons", "Seeds", "Device", "Layout", "Dataset", "Arch",
           "Precision", "CellType", "ConfigError", "Field", "model_validator"]
