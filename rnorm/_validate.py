"""Small helpers that turn a bad argument into one clear error.

Every public entry point of rnorm checks its arguments with these, so a user mistake fails at
once with a message that names the parameter, the value given and what is allowed (with a
close-match suggestion for a misspelled name), instead of a traceback from deep inside torch.

One rule for every parameter that takes a sequence (:func:`as_sequence`): a bare string is one
element, never split into its characters (``branches="adv"`` is ``("adv",)``), as is any single
value; a set (no fixed order) or a mapping is refused.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Iterable, Mapping


class ConfigError(ValueError):
    """A parameter has a value that is not allowed. Subclass of ValueError."""


class ConfigTypeError(ConfigError, TypeError):
    """A parameter has a value of a type that is not allowed: a ConfigError (the CLI reports it in one
    line) that is also a TypeError, for callers that catch that."""


def suggest(value, allowed: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest allowed name, or "" when none is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value.lower(), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_choice(param: str, value, allowed: Iterable[str]):
    """Return `value` if it is one of `allowed`, else raise ConfigError naming all three."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"{param}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}."
            + suggest(value, allowed)
        )
    return value


def as_sequence(param: str, value, *, nonempty: bool = True) -> tuple:
    """The one reading of a parameter that takes a sequence (rnorm's rule for all of them).

    A bare string is *one* element, never split into its characters: ``branches="adv"`` is
    ``("adv",)``, not ``('a', 'd', 'v')``; so is ``bytes``, and so is any other single value that is
    not iterable (a number, ``None``). A list, tuple, range, generator or 1-D tensor is read in its
    order. A set (no order: its iteration order changes from run to run) and a mapping (iterating it
    gives its keys only) are refused; so is an empty sequence where ``nonempty``. Each element is
    left to the caller's own check. Returns a tuple.
    """
    if isinstance(value, (str, bytes)) or value is None:
        return (value,)
    if isinstance(value, (set, frozenset)):
        raise ConfigError(f"{param}={value!r} is a set, whose order is not fixed; give a list or a tuple.")
    if isinstance(value, Mapping):
        raise ConfigError(f"{param}={value!r} is a mapping; give a list or a tuple of its values.")
    try:
        out = tuple(value)
    except TypeError:  # a single value: one element
        return (value,)
    if nonempty and not out:
        raise ConfigError(f"{param}={value!r} is empty; give at least one value.")
    return out


def check_bool(param: str, value) -> bool:
    """Return ``value`` if it is exactly True or False; strings like 'False' or 'yes' and 0/1 are refused."""
    if not isinstance(value, bool):
        raise ConfigError(f"{param}={value!r} must be True or False (a boolean, not {type(value).__name__}).")
    return value


def check_int(param: str, value, *, min_value: int | None = 1, max_value: int | None = None) -> int:
    """Return `value` as int if it is an integer (not bool) within [min_value, max_value]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{param}={value!r} must be an integer{_range_text(min_value, max_value)}.")
    value = int(value)
    if (min_value is not None and value < min_value) or (max_value is not None and value > max_value):
        raise ConfigError(f"{param}={value!r} is out of range; allowed: an integer{_range_text(min_value, max_value)}.")
    return value


def check_float(param: str, value, *, min_value: float | None = None, max_value: float | None = None,
                min_inclusive: bool = True, max_inclusive: bool = True) -> float:
    """Return `value` as float if it is a finite real number within the given bounds.

    The one numeric validator: NaN and infinities are refused (they pass a one-sided range check
    and fail much later), booleans are not numbers, and a string written in decimal or scientific
    notation (``"1e-3"``, which YAML 1.1 and some command lines leave as a string) is read as the
    number it spells.
    """
    rng = _range_text(min_value, max_value, min_inclusive, max_inclusive)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{param}={value!r} must be a number{rng}.") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{param}={value!r} must be a number{rng}.")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{param}={value!r} is not a finite number; allowed: a finite number{rng}.")
    bad = False
    if min_value is not None:
        bad |= value < min_value if min_inclusive else value <= min_value
    if max_value is not None:
        bad |= value > max_value if max_inclusive else value >= max_value
    if bad:
        raise ConfigError(
            f"{param}={value!r} is out of range; allowed: a number{_range_text(min_value, max_value, min_inclusive, max_inclusive)}."
        )
    return value


def _range_text(lo, hi, lo_inc: bool = True, hi_inc: bool = True) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>=' if lo_inc else '>'} {lo}"
    if lo is None:
        return f" {'<=' if hi_inc else '<'} {hi}"
    return f" in {'[' if lo_inc else '('}{lo}, {hi}{']' if hi_inc else ')'}"
