"""The book's one figure style: display labels, colours, legends.

Frames and the ledger keep the names (``bn``, ``pgd_at``, ``population``); :func:`label` turns a name
into what a reader sees. Colours: the Okabe–Ito colour-blind-safe palette, one colour per model,
statistics mode, recipe or kind of batch wherever it appears (:data:`COLOURS`, :func:`palette`).
Legends go below the axes (:func:`_one_legend`), so a figure keeps its width on a phone.
"""
from __future__ import annotations

import matplotlib
import pandas as pd
import seaborn as sns

from ..labels import LABELS, SHARE_LABELS, network_label  # noqa: F401 - the display labels live there (stdlib only)


# Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008) without its vermilion, which sits
# too close to its orange; yellow, faint on white, comes last, then a grey for an eighth level.
OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "bluish green": "#009E73", "reddish purple": "#CC79A7",
             "sky blue": "#56B4E9", "black": "#000000", "yellow": "#F0E442", "grey": "#999999"}
PALETTE = list(OKABE_ITO.values())
_C = OKABE_ITO
# The one colour of each thing a figure tells apart, by display label, the same in every chapter. Within a
# group (what one figure shows side by side) the colours are distinct; a label with no entry takes the
# palette's next colour not used in its figure (:func:`palette`).
COLOUR_GROUPS = {
    "model": {"BatchNorm": _C["blue"], "RobustNorm p=0.2": _C["orange"], "RobustNorm p=1": _C["reddish purple"],
              "no norm": _C["black"]},
    # BatchNorm by the statistics it uses at inference (population: BatchNorm's own default, its colour)
    "statistics at inference": {
        "BatchNorm, population stats": _C["blue"], "BatchNorm, population stats (white-box)": _C["blue"],
        "BatchNorm, batch stats": _C["bluish green"], "BatchNorm, batch stats (white-box)": _C["bluish green"],
        "BatchNorm, batch stats (transfer)": _C["sky blue"], "BatchNorm, PreciseBN population stats": _C["reddish purple"],
        "population stats": _C["blue"], "batch stats": _C["bluish green"], "white-box": _C["bluish green"],
        "transfer": _C["sky blue"]},
    # a recipe's colour is no model's: no method shares a colour with another anywhere in the book (standard
    # training is BatchNorm's reference, and keeps its blue); with the models' four, the recipes take the
    # palette's remaining strong colours, then its grey and yellow (:data:`METHOD_GROUPS`)
    "recipe": {"standard": _C["blue"], "PGD-AT": _C["sky blue"], "AdvProp": _C["bluish green"], "EBN": _C["yellow"],
               "AdvProp+EBN": _C["grey"]},
    # the kinds of batch whose statistics chapter 1 probes, and its ratios (perturbation / control)
    "batch": {"clean": _C["black"], "FGSM": _C["orange"], "PGD": _C["reddish purple"], "sign noise": _C["sky blue"],
              "uniform noise": _C["bluish green"]},
    "perturbation / control": {"FGSM / sign noise": _C["orange"], "PGD / sign noise": _C["reddish purple"],
                               "sign noise / clean": _C["sky blue"], "uniform noise / clean": _C["bluish green"],
                               "uniform noise / sign noise": _C["blue"]},
}
#: The groups whose entries are methods (networks' normalizations, training recipes): one colour per method
#: in the whole book, BatchNorm and standard training (BatchNorm trained the standard way) the one exception.
METHOD_GROUPS = ("model", "recipe")
COLOURS = {lab: colour for group in COLOUR_GROUPS.values() for lab, colour in group.items()}
# Legend titles by the column a figure colours by: what its entries are.
LEGEND_TITLES = {"condition": "model, statistics at inference", "stats": "statistics at inference",
                 "model": "model", "attack": "attack", "gradient": "attack gradient", "makeup": "batch make-up",
                 "recipe": "recipe", "run": "run (model, learning rate)", "tag": "batch", "batch": "batch"}


def palette(levels) -> dict:
    """The colour of each of ``levels`` (display labels, in legend order): its :data:`COLOURS` entry, or
    else the next :data:`PALETTE` colour that no other level of the same figure has (cycling when all are
    taken). Pass it as seaborn's ``palette`` so the same label has the same colour in every figure."""
    levels = list(dict.fromkeys(levels))
    out = {lv: COLOURS[lv] for lv in levels if isinstance(lv, str) and lv in COLOURS}
    free = [c for c in PALETTE if c not in out.values()] or PALETTE
    for i, lv in enumerate(lv for lv in levels if lv not in out):
        out[lv] = free[i % len(free)]
    return {lv: out[lv] for lv in levels}


def legend_title(column: str) -> str:
    """The legend title of a figure coloured by ``column``: what its entries are (e.g. ``model``)."""
    return LEGEND_TITLES.get(column, column)


def label(value) -> str:
    """The display label of a name (the name itself when it has none)."""
    return LABELS.get(value, str(value)) if isinstance(value, str) else str(value)


def model_label(norm: str, norm_p=None) -> str:
    """``BatchNorm``, ``no norm`` or ``RobustNorm p=0.2`` from a frame's ``norm`` and ``norm_p``."""
    if norm == "robustnorm":
        return f"RobustNorm p={float(norm_p):g}"
    return label(norm)


def eps_label(eps: float) -> str:
    """``8/255`` for a pixel-scale epsilon (``0`` for clean rows)."""
    from ..attacks import format_eps
    return "0" if eps == 0 else format_eps(eps)


def use_style() -> None:
    """Apply the book's figure style (call once per notebook; :func:`save` also calls it)."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.95)
    matplotlib.rcParams.update({"svg.fonttype": "none", "pdf.fonttype": 42, "figure.dpi": 110,
                                "savefig.bbox": "tight", "axes.titlesize": "medium"})



def _one_legend(fig, axes, title=None):
    """One legend for the figure, below its axes: it never covers data, and the axes keep the figure's
    whole width when a phone scales the image down. As many columns as fit the figure's width (one for a
    single-panel figure with long labels); section headers of a seaborn hue + style legend stay entries."""
    axes = list(axes)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return
    width = fig.get_size_inches()[0]
    per_entry = 0.7 + 0.085 * max(map(len, labels))  # inches: the handle and the longest label at the book's size
    ncol = max(1, min(len(labels), int(width // per_entry)))
    fig.legend(handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
               ncol=ncol)


def condition_label(frame: pd.DataFrame) -> pd.Series:
    """A display label per row of an evaluation frame with ``norm``, ``stats``, ``gradient``
    (and ``norm_p`` for RobustNorm): e.g. ``BatchNorm, batch stats (transfer)``."""
    def one(row):
        text = model_label(row["norm"], row.get("norm_p"))
        if row["norm"] == "none":
            return text
        text += f", {label(row['stats'])}"
        return text + (" (transfer)" if row.get("gradient") == "transfer" else "")
    return frame.apply(one, axis=1)


def attack_label(frame: pd.DataFrame) -> pd.Series:
    """``clean``, ``FGSM 8/255``, ``PGD 2/255`` per row of an evaluation frame."""
    return frame.apply(lambda r: "clean" if r["attack"] == "clean" else f"{label(r['attack'])} {eps_label(r['eps'])}",
                       axis=1)

