"""Figures of the book: one function per figure kind, each taking a tidy frame.

Every function returns a matplotlib ``Figure``; :func:`save` writes it as PDF, SVG and PNG next
to the CSV it was drawn from, so a reader can lift the figure, or redraw it from the data with
the same function. One style for the whole book (:func:`use_style`): seaborn's ``colorblind``
palette, labelled axes with units, vector output with text kept as text.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ._io import atomic_write_bytes  # noqa: E402
from ._validate import as_sequence  # noqa: E402

FORMATS = ("pdf", "svg", "png")
# Display labels, applied only when drawing or printing; frames and the ledger keep the names.
LABELS = {
    # datasets: the lossy JPEG copy always says so
    "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR-10", "cifar10_jpeg": "CIFAR-10 (lossy JPEG copy)",
    # normalizations
    "bn": "BatchNorm", "robustnorm": "RobustNorm", "none": "no norm", "multibn": "BatchNorm + auxiliary BNs",
    # statistics modes
    "population": "population stats", "batch": "batch stats", "population_mean": "running mean, batch var",
    "precise": "PreciseBN population stats",
    # recipes
    "standard": "standard", "pgd_at": "PGD-AT", "advprop": "AdvProp", "ebn": "EBN", "advprop_ebn": "AdvProp+EBN",
    # attacks, gradients, batch make-up, references
    "clean": "clean", "fgsm": "FGSM", "pgd": "PGD", "autoattack": "AutoAttack", "easy": "easy (targeted to y)",
    "apgd": "APGD-CE", "noise_sign": "sign noise", "noise_uniform": "uniform noise",
    "white-box": "white-box", "transfer": "transfer", "all": "all adversarial", "mixed": "mixed",
    "ema": "EMA population stats",
}


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
    from .attacks import format_eps
    return "0" if eps == 0 else format_eps(eps)


def use_style() -> None:
    """Apply the book's figure style (call once per notebook; :func:`save` also calls it)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.95)
    matplotlib.rcParams.update({"svg.fonttype": "none", "pdf.fonttype": 42, "figure.dpi": 110,
                                "savefig.bbox": "tight", "axes.titlesize": "medium"})


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


def _one_legend(fig, axes, title=None, below: bool = False):
    """Keep one legend outside the plotting area, so it never covers data: on the right, or
    ``below`` the panels (for wide multi-panel figures, so the text stays readable at column width)."""
    axes = list(axes)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return
    if below:  # two columns for long labels, so the legend is no wider than the panels
        ncol = min(2 if max(map(len, labels)) > 18 else 3, len(labels))
        fig.legend(handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
                   ncol=ncol)
    else:
        fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def glue_figure(key: str, fig) -> None:
    """Glue ``fig`` for a numbered ``{glue:figure}`` and close it, so the notebook shows it once."""
    from myst_nb import glue
    glue(key, fig, display=False)
    plt.close(fig)


def shift_by_layer(distances: pd.DataFrame, *, title: str | None = None):
    """Distance of batch statistics from population statistics per layer (claim C1).

    ``distances`` comes from :func:`rnorm.probes.shift_distance`: columns ``layer_index``,
    ``statistic`` (mean / var), ``distance`` and ``tag`` (kind of batch, e.g. clean / fgsm / pgd).
    """
    use_style()
    stats = list(dict.fromkeys(distances["statistic"]))
    fig, axes = plt.subplots(1, len(stats), figsize=(3.4 * len(stats) + 0.4, 3.2), squeeze=False, sharex=True)
    titles = {"mean": "mean: |μ_batch − μ_pop| / σ_pop",
              "var": "variance: |log(σ²_batch / σ²_pop)|",
              "range": "range: |log(r_batch / r_pop)|"}
    for ax, stat in zip(axes[0], stats):
        sub = distances[distances["statistic"] == stat]
        sns.lineplot(data=sub, x="layer_index", y="distance", hue="tag", style="tag", markers=True,
                     dashes=False, ax=ax, errorbar=None)
        ax.set_xlabel("normalization layer (input → output)")
        ax.set_ylabel("distance (mean over channels)")
        ax.set_title(titles.get(stat, stat))
    _one_legend(fig, axes[0], title="batch", below=len(stats) > 1)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def channel_scatter(record: pd.DataFrame, layers, *, statistic: str = "mean"):
    """Per-channel batch statistic against the population statistic for chosen layers."""
    use_style()
    layers = list(as_sequence("layers", layers))  # one layer index, or several
    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers) + 0.4, 3.0), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        sub = record[(record["layer_index"] == layer) & (record["statistic"] == statistic)]
        sns.scatterplot(data=sub, x="running", y="value", hue="tag", style="tag", ax=ax, s=18, alpha=0.8)
        lo = min(sub["running"].min(), sub["value"].min())
        hi = max(sub["running"].max(), sub["value"].max())
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--", label="y = x")
        name = sub["layer"].iloc[0] if len(sub) else layer
        ax.set_title(f"layer {layer}: {name}", fontsize="small")
        ax.set_xlabel(f"population {statistic} (per channel)")
        ax.set_ylabel(f"batch {statistic} (per channel)")
    _one_legend(fig, axes[0], title="batch", below=len(layers) > 1)
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
                    col: str | None = "attack", title: str | None = None, log_eps: bool = False):
    """Accuracy (%) against epsilon (in /255 units), one line per ``hue`` value; ``log_eps``: a log
    ε axis (for sweeps over decades, e.g. 0.25/255 to 8/255; clean rows at ε = 0 are left out)."""
    use_style()
    df = frame.copy()
    if log_eps:
        df = df[df["eps"] > 0]
    df["eps (/255)"] = df["eps"] * 255
    df["accuracy (%)"] = df["accuracy"] * 100
    cols = list(dict.fromkeys(df[col])) if col else [None]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols) + 0.4, 3.4), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cols):
        sub = df if c is None else df[df[col] == c]
        sns.lineplot(data=sub, x="eps (/255)", y="accuracy (%)", hue=hue, style=style or hue, markers=True,
                     dashes=False, ax=ax, errorbar=("sd") if "seed" in sub and sub["seed"].nunique() > 1 else None)
        ax.set_xlabel("ε (pixel scale, ×1/255)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        if log_eps:
            ax.set_xscale("log", base=2)
        if c is not None:
            ax.set_title(label(c) if col == "attack" else f"{col} = {c}")
    _one_legend(fig, axes[0], title=hue, below=len(cols) > 1)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def accuracy_vs_batch_size(frame: pd.DataFrame, *, hue: str = "gradient", style: str = "makeup",
                           title: str | None = None):
    """Robust accuracy (%) against the inference batch size (log scale)."""
    use_style()
    df = frame.copy()
    df["accuracy (%)"] = df["accuracy"] * 100
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    sns.lineplot(data=df, x="batch_size", y="accuracy (%)", hue=hue, style=style, markers=True, dashes=True,
                 ax=ax, errorbar=None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("inference batch size (images)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    if title:
        ax.set_title(title)
    _one_legend(fig, [ax])
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, *, hue: str = "model", y: str = "loss", ylabel: str = "training loss"):
    """A per-epoch training metric for several models (``history`` has ``epoch``, ``hue``, ``y``)."""
    use_style()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    sns.lineplot(data=history, x="epoch", y=y, hue=hue, style=hue, markers=True, dashes=False, ax=ax,
                 errorbar="sd" if "seed" in history and history["seed"].nunique() > 1 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    _one_legend(fig, [ax], title=hue)
    fig.tight_layout()
    return fig


def accuracy_bars(frame: pd.DataFrame, *, x: str = "recipe", hue: str = "attack", col: str | None = None,
                  title: str | None = None):
    """Mean accuracy (%) with the standard deviation over seeds as error bars."""
    use_style()
    df = frame.copy()
    df["accuracy (%)"] = df["accuracy"] * 100
    cols = list(dict.fromkeys(df[col])) if col else [None]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols) + 0.4, 3.4), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cols):
        sub = df if c is None else df[df[col] == c]
        sns.barplot(data=sub, x=x, y="accuracy (%)", hue=hue, ax=ax, errorbar="sd", capsize=0.1, err_kws={"linewidth": 1})
        ax.set_xlabel(x)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        if c is not None:
            ax.set_title(str(c))
        ax.tick_params(axis="x", labelrotation=20)
    _one_legend(fig, axes[0], title=hue, below=len(cols) > 1)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


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
    palette = dict(zip(dict.fromkeys(df["batch vs control"]), sns.color_palette(n_colors=df["batch vs control"].nunique())))
    for ax, st in zip(axes[0], stats_):
        for name, sub in df[df["statistic"] == st].groupby("batch vs control", sort=False):
            sub = sub.sort_values("eps")
            ax.plot(sub["eps (/255)"], sub["ratio"], marker="o", color=palette[name], label=name)
            ax.fill_between(sub["eps (/255)"], sub["low"], sub["high"], color=palette[name], alpha=0.2, lw=0)
        ax.axhline(1.0, color="0.3", ls=":", lw=1)
        if margin is not None:
            ax.axhline(margin, color="0.3", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("ε (pixel scale, ×1/255)")
        ax.set_ylabel("distance ratio")
        ax.set_title("batch mean" if st == "mean" else "batch variance")
    _one_legend(fig, axes[0], title="perturbation / control", below=True)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def attack_convergence(curve: pd.DataFrame, *, title: str | None = None):
    """Robust accuracy (%) against the attack's steps (log scale), one line per statistics mode and
    number of restarts; APGD-CE as separate markers. Flat lines: the attack has converged."""
    use_style()
    df = curve.copy()
    df["accuracy (%)"] = df["accuracy"] * 100
    df["condition"] = [f"{model_label(n)}, {label(s)}" for n, s in zip(df["norm"], df["stats"])]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    pgd = df[df["attack"] == "pgd"].assign(restarts=lambda d: d["restarts"].astype(int).astype(str) + " restart(s)")
    sns.lineplot(data=pgd, x="steps", y="accuracy (%)", hue="condition", style="restarts", markers=True, ax=ax,
                 errorbar=None)
    apgd = df[df["attack"] == "apgd"]
    if len(apgd):
        colors = dict(zip(dict.fromkeys(pgd["condition"]), sns.color_palette(n_colors=pgd["condition"].nunique())))
        for cond, sub in apgd.groupby("condition", sort=False):
            ax.scatter(sub["steps"], sub["accuracy (%)"], marker="*", s=120, color=colors.get(cond, "k"),
                       label=f"APGD-CE, {cond}", zorder=3)
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
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    sns.scatterplot(data=df, x="clean accuracy (%)", y="robust accuracy (%)", hue="model", style="model", s=60, ax=ax)
    ax.set_ylabel(f"PGD accuracy {eps_text} (%)".replace("  ", " "))
    if title:
        ax.set_title(title)
    _one_legend(fig, [ax])
    fig.tight_layout()
    return fig


def note_figure(text: str):
    """A small figure that only states ``text`` (where a figure's data does not exist, e.g. no sweep ran)."""
    use_style()
    fig, ax = plt.subplots(figsize=(5.0, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig
