"""The figures of the book, one function per kind, each taking a tidy frame and returning a ``Figure``.

The distribution shift of claim C1 (:func:`shift_by_layer`, :func:`channel_scatter`, :func:`ratio_vs_eps`)
from :mod:`rnorm.probes`' frames; accuracy against ε, batch size, attack steps or clean accuracy
(:func:`accuracy_vs_eps`, :func:`accuracy_vs_batch_size`, :func:`attack_convergence`,
:func:`matched_clean`, :func:`accuracy_bars`) from :func:`rnorm.evaluate.evaluate`'s frames; training
curves; and :func:`note_figure` where a figure's data does not exist. All in the style of
:mod:`rnorm.plots.style`.
"""
from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.lines
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .._validate import as_sequence
from .style import LEGEND_TITLES, _one_legend, eps_label, label, legend_title, model_label, palette, use_style


def _shown_eps(frame: pd.DataFrame, eps) -> list[float]:
    """The ε values a small-multiples figure draws: those of ``eps`` (one or several) that ``frame`` has,
    else the smallest and the largest ε of ``frame`` (every one if there are at most two)."""
    present = sorted({float(e) for e in frame["eps"] if float(e) > 0})
    if eps is not None:
        wanted = [float(e) for e in as_sequence("eps", eps)]
        wanted = [e for e in dict.fromkeys(wanted) if any(abs(e - q) < 1e-9 for q in present)]
        if wanted:
            return wanted
    return present if len(present) <= 2 else [present[0], present[-1]]


def _facets(df: pd.DataFrame, col: str | None, panel_width: float):
    """One row of panels sharing the y axis, one per value of ``col`` (in order of appearance; one panel
    when ``col`` is None): the figure, and ``(axis, value, rows)`` for each panel."""
    values = list(dict.fromkeys(df[col])) if col else [None]
    fig, axes = plt.subplots(1, len(values), figsize=(panel_width * len(values) + 0.4, 3.4), squeeze=False,
                             sharey=True)
    panels = [(ax, v, df if v is None else df[df[col] == v]) for ax, v in zip(axes[0], values)]
    return fig, axes[0], panels


def _panel_title(value, width: int = 26) -> str:
    """A panel's title: its value alone, on two lines when long (at " / " between a dataset and a network,
    else at a space), so that the titles of neighbouring panels never run into each other."""
    text = str(value)
    if len(text) <= width:
        return text
    if " / " in text:
        return text.replace(" / ", " /\n", 1)
    return textwrap.fill(text, width)


def _batches_at(frame: pd.DataFrame, eps: float) -> pd.DataFrame:
    """The rows of ``frame`` perturbed at ``eps`` and its clean rows, with ``batch`` the kind's display label."""
    rows = frame[((frame["eps"] - eps).abs() < 1e-9) | (frame["attack"] == "clean")]
    return rows.assign(batch=rows["attack"].map(label))


def shift_by_layer(distances: pd.DataFrame, *, eps=None, title: str | None = None):
    """Distance of batch statistics from population statistics per layer (claim C1), as small
    multiples: one row of panels per ε in ``eps`` (default: the smallest and largest ε of the frame),
    one column per statistic; one line per kind of batch (clean, FGSM, PGD, sign noise, uniform noise),
    its colour from :data:`COLOURS`, the clean batch repeated in every row.

    ``distances`` comes from :func:`rnorm.probes.shift_distance`: columns ``layer_index``,
    ``statistic`` (mean / var), ``distance``, ``attack`` and ``eps``.
    """
    use_style()
    stats = list(dict.fromkeys(distances["statistic"]))
    shown = _shown_eps(distances, eps)
    kinds = list(dict.fromkeys(distances["attack"].map(label)))
    fig, axes = plt.subplots(len(shown), len(stats), figsize=(3.4 * len(stats) + 0.4, 3.0 * len(shown)),
                             squeeze=False, sharex=True)
    titles = {"mean": "mean: |μ_batch − μ_pop| / σ_pop",
              "var": "variance: |log(σ²_batch / σ²_pop)|",
              "range": "range: |log(r_batch / r_pop)|"}
    for i, (row, e) in enumerate(zip(axes, shown)):
        at = _batches_at(distances, e)
        for k, (ax, stat) in enumerate(zip(row, stats)):
            sns.lineplot(data=at[at["statistic"] == stat], x="layer_index", y="distance", hue="batch", style="batch",
                         hue_order=kinds, style_order=kinds, palette=palette(kinds), markers=True, dashes=False,
                         ax=ax, errorbar=None)
            ax.set_xlabel("normalization layer (input → output)")
            # the row's ε on its first panel; the columns' statistic above the top row
            ax.set_ylabel(f"ε = {eps_label(e)}: distance\n(mean over channels)" if k == 0 else "")
            ax.set_title(titles.get(stat, stat) if i == 0 else "")
    _one_legend(fig, axes.ravel(), title="batch")
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return fig


def channel_scatter(record: pd.DataFrame, layers, *, statistic: str = "mean", eps=None):
    """Per-channel batch statistic against the population statistic for chosen layers, as small
    multiples: one column of panels per layer, one row per ε in ``eps`` (default: the smallest and
    largest ε of ``record``); one colour per kind of batch (from :data:`COLOURS`), clean in every row."""
    use_style()
    layers = list(as_sequence("layers", layers))  # one layer index, or several
    shown = _shown_eps(record, eps)
    kinds = list(dict.fromkeys(record["attack"].map(label)))
    fig, axes = plt.subplots(len(shown), len(layers), figsize=(3.0 * len(layers) + 0.4, 3.0 * len(shown)),
                             squeeze=False)
    for i, (row, e) in enumerate(zip(axes, shown)):
        at = _batches_at(record, e)
        for k, (ax, layer) in enumerate(zip(row, layers)):
            sub = at[(at["layer_index"] == layer) & (at["statistic"] == statistic)]
            # the legend's first kinds drawn last, on top (clean over FGSM over PGD over the noises)
            sub = sub.iloc[sub["batch"].map({k: -j for j, k in enumerate(kinds)}).argsort(kind="stable")]
            sns.scatterplot(data=sub, x="running", y="value", hue="batch", style="batch", hue_order=kinds,
                            style_order=kinds, palette=palette(kinds), ax=ax, s=18, alpha=0.8)
            lo = min(sub["running"].min(), sub["value"].min())
            hi = max(sub["running"].max(), sub["value"].max())
            ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--", label="y = x")
            name = sub["layer"].iloc[0] if len(sub) else layer
            ax.set_title(f"layer {layer}: {name}" if i == 0 else "", fontsize="small")
            ax.set_xlabel(f"population {statistic} (per channel)")
            ax.set_ylabel(f"ε = {eps_label(e)}\nbatch {statistic} (per channel)" if k == 0 else "")
    _one_legend(fig, axes.ravel(), title="batch")
    fig.tight_layout()
    return fig


def with_clean_start(frame: pd.DataFrame, attacks) -> pd.DataFrame:
    """The attack rows of an evaluation frame plus its clean rows copied under each attack name,
    so that every accuracy-vs-ε curve drawn by :func:`accuracy_vs_eps` starts at ε = 0 from the
    clean accuracy."""
    clean = frame[frame["attack"] == "clean"]
    attacks = as_sequence("attacks", attacks)  # a bare name is one attack, not its letters
    return pd.concat([frame[frame["attack"] != "clean"]] + [clean.assign(attack=a) for a in attacks],
                     ignore_index=True)


def accuracy_vs_eps(frame: pd.DataFrame, *, hue: str = "stats", style: str | None = None,
                    col: str | None = "attack", title: str | None = None, log_eps: bool = False,
                    legend: str | None = None):
    """Accuracy (%) against epsilon (in /255 units), one line per ``hue`` value, coloured by
    :func:`palette`; ``log_eps``: a log ε axis (for sweeps over decades, e.g. 0.25/255 to 8/255; clean
    rows at ε = 0 are left out); ``legend``: the legend's title (default: :func:`legend_title` of ``hue``)."""
    use_style()
    df = frame.copy()
    if log_eps:
        df = df[df["eps"] > 0]
    df["eps (/255)"] = df["eps"] * 255
    df["accuracy (%)"] = df["accuracy"] * 100
    levels = list(dict.fromkeys(df[hue]))
    fig, axes, panels = _facets(df, col, 3.4)
    for ax, c, sub in panels:
        sns.lineplot(data=sub, x="eps (/255)", y="accuracy (%)", hue=hue, style=style or hue, markers=True,
                     hue_order=levels, style_order=levels if style in (None, hue) else None, palette=palette(levels),
                     dashes=False, ax=ax, errorbar=("sd") if "seed" in sub and sub["seed"].nunique() > 1 else None)
        ax.set_xlabel("ε (pixel scale, ×1/255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        if log_eps:
            ax.set_xscale("log", base=2)
        if c is not None:
            ax.set_title(_panel_title(label(c)))  # the value alone: the figure's caption names what varies
    _one_legend(fig, axes, title=legend or legend_title(hue))
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def accuracy_vs_batch_size(frame: pd.DataFrame, *, hue: str = "gradient", style: str = "makeup",
                           title: str | None = None):
    """Robust accuracy (%) against the inference batch size (log scale); colour by ``hue`` (display labels,
    coloured by :func:`palette`), line style by ``style``, each legend section titled by :func:`legend_title`."""
    use_style()
    df = frame.copy()
    df["accuracy (%)"] = df["accuracy"] * 100
    hue_name, style_name = legend_title(hue), legend_title(style)
    df[hue_name], df[style_name] = df[hue].map(label), df[style].map(label)
    levels = list(dict.fromkeys(df[hue_name]))
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    sns.lineplot(data=df, x="batch_size", y="accuracy (%)", hue=hue_name, style=style_name, markers=True,
                 dashes=True, hue_order=levels, palette=palette(levels), ax=ax, errorbar=None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("inference batch size (images)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    if title:
        ax.set_title(title)
    _one_legend(fig, [ax])
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, *, hue: str = "model", y: str = "loss", ylabel: str = "training loss",
                    legend: str | None = None):
    """A per-epoch training metric for several models (``history`` has ``epoch``, ``hue``, ``y``), one
    line per ``hue`` value coloured by :func:`palette`; ``legend``: the legend's title (default:
    :func:`legend_title` of ``hue``)."""
    use_style()
    levels = list(dict.fromkeys(history[hue]))
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    sns.lineplot(data=history, x="epoch", y=y, hue=hue, style=hue, markers=True, dashes=False, ax=ax,
                 hue_order=levels, style_order=levels, palette=palette(levels),
                 errorbar="sd" if "seed" in history and history["seed"].nunique() > 1 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    _one_legend(fig, [ax], title=legend or legend_title(hue))
    fig.tight_layout()
    return fig


def lr_sweep_curves(sweep: pd.DataFrame, *, y: str = "val", ylabel: str = "held-out accuracy (%)",
                    chosen: dict | None = None):
    """A learning-rate sweep as small multiples: one panel per ``model`` (display labels), one line per
    ``lr`` over ``epoch``, each rate in the same colour in every panel (a sequential colour-blind-safe ramp,
    viridis without its faint yellow end, light to dark as the rate grows). ``chosen``: ``{model: lr}``,
    drawn thicker and named in the panel's title."""
    use_style()
    models = list(dict.fromkeys(sweep["model"]))
    lrs = sorted(dict.fromkeys(sweep["lr"]))
    ramp = matplotlib.colormaps["viridis"]
    colour = {lr: ramp(0.85 * (1 - i / max(1, len(lrs) - 1))) for i, lr in enumerate(lrs)}
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models) + 0.4, 3.2), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        sub = sweep[sweep["model"] == model]
        best = (chosen or {}).get(model)
        for lr in lrs:
            line = sub[sub["lr"] == lr].sort_values("epoch")
            if len(line):
                ax.plot(line["epoch"], line[y], marker="o", markersize=3, color=colour[lr], label=f"{lr:g}",
                        linewidth=2.6 if lr == best else 1.2)
        ax.set_title(model + (f" (chosen: {best:g})" if best is not None else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    handles = [matplotlib.lines.Line2D([], [], color=colour[lr], marker="o", markersize=3) for lr in lrs]
    fig.legend(handles, [f"{lr:g}" for lr in lrs], title="learning rate", loc="upper center",  # every rate, below
               bbox_to_anchor=(0.5, 0.0), frameon=False, ncol=len(lrs))
    fig.tight_layout()
    return fig


def accuracy_bars(frame: pd.DataFrame, *, x: str = "recipe", hue: str = "attack", col: str | None = None,
                  title: str | None = None):
    """Mean accuracy (%) with the standard deviation over seeds as error bars, one bar colour per ``hue``
    value (by :func:`palette`, in the order of the whole frame, so every panel agrees)."""
    use_style()
    df = frame.copy()
    df["accuracy (%)"] = df["accuracy"] * 100
    levels = list(dict.fromkeys(df[hue]))
    groups = max(df[df[col] == c][x].nunique() for c in dict.fromkeys(df[col])) if col else df[x].nunique()
    fig, axes, panels = _facets(df, col, max(3.6, 0.62 * groups))  # room for each group's two-line label
    for ax, c, sub in panels:
        # saturation 1: a bar has its label's colour exactly, as its line has in every other figure
        sns.barplot(data=sub, x=x, y="accuracy (%)", hue=hue, ax=ax, errorbar="sd", capsize=0.1, err_kws={"linewidth": 1},
                    hue_order=levels, palette=palette(levels), saturation=1)
        ax.set_xlabel(legend_title(x))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        if c is not None:
            ax.set_title(_panel_title(c))
        # "APGD-CE 2/255" on two lines, "APGD-CE" over "2/255", level: no label runs into the next
        ax.set_xticks(ax.get_xticks(), [t.get_text().replace(" ", "\n", 1) for t in ax.get_xticklabels()])
        ax.tick_params(axis="x", labelrotation=0, labelsize="small")
    _one_legend(fig, axes, title=legend_title(hue))
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def ratio_vs_eps(effects: pd.DataFrame, *, margin: float | None = None, title: str | None = None):
    """Claim C1's effect: distance ratio (perturbed / control) against ε with its 95 % CI as a band,
    one panel per statistic (mean, variance), one line per perturbation and control. A dotted
    line at 1 (no more shift than the control) and, if given, a dashed line at the rule's margin."""
    use_style()
    df = effects.copy()
    df["eps (/255)"] = df["eps"] * 255
    df["batch vs control"] = [f"{label(a)} / {label(c)}" for a, c in zip(df["attack"], df["control"])]
    stats_ = list(dict.fromkeys(df["statistic"]))
    fig, axes = plt.subplots(1, len(stats_), figsize=(3.6 * len(stats_) + 0.4, 3.4), squeeze=False)
    colours = palette(df["batch vs control"])
    for ax, st in zip(axes[0], stats_):
        for name, sub in df[df["statistic"] == st].groupby("batch vs control", sort=False):
            sub = sub.sort_values("eps")
            ax.plot(sub["eps (/255)"], sub["ratio"], marker="o", color=colours[name], label=name)
            ax.fill_between(sub["eps (/255)"], sub["low"], sub["high"], color=colours[name], alpha=0.2, lw=0)
        ax.axhline(1.0, color="0.3", ls=":", lw=1)
        if margin is not None:
            ax.axhline(margin, color="0.3", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("ε (pixel scale, ×1/255)")
        ax.set_ylabel("distance ratio")
        ax.set_title("batch mean" if st == "mean" else "batch variance")
    _one_legend(fig, axes[0], title="perturbation / control")
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def attack_convergence(curve: pd.DataFrame, *, title: str | None = None):
    """Robust accuracy (%) against the attack's steps (log scale), one line per statistics mode and
    number of restarts; APGD-CE as separate markers. Flat lines: the attack has converged. A model
    without normalization has no statistics to choose: its line is just ``no norm``."""
    use_style()
    df = curve.copy()
    df["accuracy (%)"] = df["accuracy"] * 100
    cond = LEGEND_TITLES["condition"]
    df[cond] = [model_label(n) if n == "none" else f"{model_label(n)}, {label(s)}" for n, s in zip(df["norm"], df["stats"])]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    pgd = df[df["attack"] == "pgd"].assign(**{"PGD restarts": lambda d: d["restarts"].astype(int).astype(str)})
    levels = list(dict.fromkeys(df[cond]))
    colors = palette(levels)
    sns.lineplot(data=pgd, x="steps", y="accuracy (%)", hue=cond, style="PGD restarts", markers=True, ax=ax,
                 hue_order=levels, palette=colors, errorbar=None)
    apgd = df[df["attack"] == "apgd"]
    if len(apgd):
        for name, sub in apgd.groupby(cond, sort=False):
            ax.scatter(sub["steps"], sub["accuracy (%)"], marker="*", s=120, color=colors.get(name, "k"),
                       label=f"APGD-CE, {name}", zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("attack steps")
    ax.set_ylabel("robust accuracy (%)")
    if title:
        ax.set_title(title)
    _one_legend(fig, [ax])
    fig.tight_layout()
    return fig


def matched_clean(points: pd.DataFrame, *, eps_text: str = "", title: str | None = None):
    """Robust against clean accuracy (%), one point per model and seed: a normalization that is more
    robust only because it is less accurate lies on the others' trend, not above it."""
    use_style()
    df = points.copy()
    df["model"] = [model_label(n, q) for n, q in zip(df["norm"], df["norm_p"])]
    df["clean accuracy (%)"] = df["clean_full"] * 100
    df["robust accuracy (%)"] = df["pgd"] * 100
    levels = list(dict.fromkeys(df["model"]))
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    sns.scatterplot(data=df, x="clean accuracy (%)", y="robust accuracy (%)", hue="model", style="model", s=60, ax=ax,
                    hue_order=levels, style_order=levels, palette=palette(levels))
    ax.set_ylabel(f"PGD accuracy {eps_text} (%)".replace("  ", " "))
    if title:
        ax.set_title(title)
    _one_legend(fig, [ax], title="model")
    fig.tight_layout()
    return fig


def note_figure(text: str):
    """A small figure that only states ``text`` (where a figure's data does not exist, e.g. no sweep ran)."""
    use_style()
    fig, ax = plt.subplots(figsize=(5.0, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig
