"""Numbers in the book's tables, formatted for people: :func:`number` for one cell, :func:`show` for a frame.

One decimal by default (``87.0``, not ``87.000000``), ``–`` for a missing value (not ``NaN``), ``yes`` / ``no``
for booleans, ``0.0`` rather than ``-0.0`` for a value that rounds to zero, integers as integers. The frames
and CSVs keep their raw values; only what is displayed is formatted.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

MISSING = "–"


def number(value, decimals: int | None = 1, *, signed: bool = False) -> str:
    """One table cell as text.

    ``decimals``: digits after the point for a float (``None``: the shortest form, ``0.05``, ``1e-05``);
    ``signed``: a ``+`` before a positive float (for differences). ``None``, NaN and ``pd.NA`` give ``–``,
    booleans ``yes`` / ``no``, integers their digits, strings themselves. A float that rounds to zero
    is written without a sign (``-0.04`` with one decimal is ``0.0``).
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):+d}" if signed and value else str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return MISSING
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        text = f"{v:g}" if decimals is None else f"{v:.{decimals}f}"
        if float(text) == 0:  # -0.0, or a small value rounded to zero: no sign
            return text.lstrip("-+")
        return "+" + text if signed and v > 0 else text
    return str(value)


def format_frame(frame: pd.DataFrame, decimals: int | None | dict = 1, *, signed=()) -> pd.DataFrame:
    """``frame`` with every cell as text by :func:`number`; ``decimals`` is one value for every column or a
    dict by column (columns it does not name get one decimal); ``signed``: the columns to write with a sign."""
    def dec(col):
        return decimals.get(col, 1) if isinstance(decimals, dict) else decimals
    return pd.DataFrame({c: [number(v, dec(c), signed=c in signed) for v in frame[c]] for c in frame.columns},
                        index=frame.index)


def show(frame: pd.DataFrame, decimals: int | None | dict = 1, *, signed=(), index: bool = False):
    """A pandas ``Styler`` of ``frame`` for display in a notebook: cells formatted by :func:`number`
    (see :func:`format_frame` for ``decimals`` and ``signed``), the index hidden unless ``index``."""
    styler = format_frame(frame, decimals, signed=signed).style
    return styler if index else styler.hide(axis="index")


__all__ = ["MISSING", "number", "format_frame", "show"]
