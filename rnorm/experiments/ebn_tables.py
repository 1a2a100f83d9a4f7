"""Notebook 04's tables: the accuracy frames as the chapter shows them (mean ± sd over seeds per recipe,
branch and ablation variant), the measured training cost, and the frame helpers they share (clean
accuracy on the full test set, the ablation's rows, padding for one colour per bar level)."""
from __future__ import annotations

import pandas as pd

from .common import accuracy_table


def with_full_clean(acc: pd.DataFrame, clean_full: pd.DataFrame | None) -> pd.DataFrame:
    """``acc`` with its clean rows (the ``test_n`` subset) replaced by the full-test-set clean rows of
    the same models and branches, for the tables and findings (attacks stay on the subset)."""
    if clean_full is None or clean_full.empty:
        return acc
    keys = [k for k in ("dataset", "arch", "recipe", "share", "seed", "branch") if k in acc and k in clean_full]
    cols = [c for c in acc.columns if c in clean_full.columns]
    full = clean_full[cols]
    have = set(full[keys].itertuples(index=False, name=None))
    clean = acc[acc["attack"] == "clean"]
    kept = clean[[row not in have for row in clean[keys].itertuples(index=False, name=None)]]
    # clean first, as the tables order their columns by first appearance
    return pd.concat([full, kept, acc[acc["attack"] != "clean"]], ignore_index=True)


def _display(acc: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return accuracy_table(acc, by, labelled=("dataset", "arch", "recipe"))


def main_table(acc: pd.DataFrame, branch: str = "main") -> pd.DataFrame:
    """Accuracy (%) "mean ± sd" over seeds per dataset, arch and recipe through ``branch`` (no ablation rows)."""
    return _display(acc[(acc["branch"] == branch) & (acc["share"] == "none")], ["dataset", "arch", "recipe"])


def branch_table(acc: pd.DataFrame) -> pd.DataFrame:
    """The same through each auxiliary branch (empty when no recipe has one)."""
    aux = acc[(acc["branch"] != "main") & (acc["share"] == "none")]
    return _display(aux, ["dataset", "arch", "recipe", "branch"]) if len(aux) else aux


def ablation_table(acc: pd.DataFrame) -> pd.DataFrame:
    """EBN through the main branch with separate (``none``), shared-affine and shared-statistics
    branches, in the settings where the ablation was trained (:func:`ablation_rows`; empty when it did not
    run). Without APGD-CE, which attacks only the separate-branch models
    (:data:`~rnorm.experiments.ebn.APGD_RECIPES`), so that every column compares all three."""
    abl = ablation_rows(acc)
    abl = abl[abl["attack"] != "apgd"]
    return _display(abl, ["dataset", "arch", "share"]) if len(abl) else abl


def ablation_rows(acc: pd.DataFrame) -> pd.DataFrame:
    """EBN's main-branch rows in the settings (dataset, arch) where a shared-branch variant was trained:
    a setting with separate-branch EBN alone (the ablation runs in one setting,
    :func:`~rnorm.experiments.ebn.ablation_setting`) has nothing to compare and is left out."""
    ebn_main = acc[(acc["recipe"] == "ebn") & (acc["branch"] == "main")]
    shared = ebn_main.loc[ebn_main["share"] != "none", ["dataset", "arch"]].drop_duplicates()
    return ebn_main.merge(shared, on=["dataset", "arch"])


def with_every_hue_level(rows: pd.DataFrame, *, x: str, hue: str, col: str) -> pd.DataFrame:
    """``rows`` for :func:`rnorm.plots.accuracy_bars` with one panel per ``col``, led by one empty row
    (accuracy NaN, no bar) per ``hue`` level of any panel, in the order the levels first appear.

    ``accuracy_bars`` colours each panel's levels in the order they appear in that panel, and keeps the
    first panel's legend: two settings evaluated at different ε (FashionMNIST at 0.1, CIFAR-10 at
    8/255) would give one level two colours and leave the second panel's levels out of the legend. With
    every level in every panel, in one order, a level has one colour and the legend names them all; a
    level a panel lacks leaves an empty slot."""
    levels = list(dict.fromkeys(rows[hue]))
    pad = pd.DataFrame([{col: c, x: rows.loc[rows[col] == c, x].iloc[0], hue: level, "accuracy": float("nan")}
                        for c in dict.fromkeys(rows[col]) for level in levels])
    return pd.concat([pad, rows], ignore_index=True)


def cost_table(history: pd.DataFrame) -> pd.DataFrame:
    """Measured training cost per recipe, from the runs' histories: each run's mean seconds per epoch and
    training images per second, then per recipe the fastest and the slowest run. The runs were trained
    over several sessions, alone or beside other work, with one or two workers, so a recipe's range
    shows that load as much as the recipe; the benchmarks compare recipes on one quiet machine."""
    cols = [c for c in ("epoch_seconds", "images_per_s") if c in history]
    keys = ["dataset", "arch", "recipe", "share"]
    if not cols:
        return pd.DataFrame(columns=keys)
    per_run = history.groupby(keys + ["seed"], sort=False)[cols].mean().reset_index()
    t = per_run.groupby(keys, sort=False).agg(runs=("seed", "size"), **{
        f"{c}_{f}": (c, f) for c in cols for f in ("min", "max")}).reset_index()
    return t.round({c: 0 for c in t.columns if c.endswith(("_min", "_max"))})
