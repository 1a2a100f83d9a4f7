"""Where a figure goes: files beside the data it was drawn from, or a notebook's glue.

:func:`save` writes a figure as PDF, SVG and PNG (byte-stable vector files: fixed metadata, text kept
as text) next to the CSV of its frame; :func:`glue_figure` hands it to MyST-NB for a numbered figure.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .._io import atomic_write_bytes

FORMATS = ("pdf", "svg", "png")


def save(fig, path, *, data: pd.DataFrame | None = None) -> list[Path]:
    """Write ``fig`` as ``<path>.pdf``, ``.svg`` and ``.png`` (and ``data`` as ``<path>.csv``).

    ``path`` is given without a suffix. Every file is written atomically. Returns the paths.
    """
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=200 if fmt == "png" else None, metadata=_metadata(fmt))
        target = path.with_suffix(f".{fmt}")
        atomic_write_bytes(target, buf.getvalue())
        out.append(target)
    if data is not None:
        target = path.with_suffix(".csv")
        atomic_write_bytes(target, data.to_csv(index=False).encode())
        out.append(target)
    return out


def _metadata(fmt: str) -> dict:
    # Fixed metadata keeps the vector files byte-stable across rebuilds.
    if fmt == "pdf":
        return {"CreationDate": None, "Producer": "rnorm"}
    if fmt == "svg":
        return {"Date": None}
    return {}


def glue_figure(key: str, fig) -> None:
    """Glue ``fig`` for a numbered ``{glue:figure}`` and close it, so the notebook shows it once."""
    from myst_nb import glue
    glue(key, fig, display=False)
    plt.close(fig)
