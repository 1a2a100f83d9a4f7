"""Notebook 03's findings as tidy frames: the accuracy table, the view at matched clean accuracy, and what
the chapter shows beyond the ledger's rule, in numbers (every power against BatchNorm, the APGD-CE gap,
the epochs to the speed target). The sentences are the notebook's (``notebooks/03_robustnorm.md``),
composed over these frames; names (norm, power) are the raw ones and the notebook applies the labels."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .common import accuracy_table
from .protocol import JUDGED_EPS
from .words import effect  # noqa: F401  (the notebook's word helper, re-exported)


def table(acc: pd.DataFrame, stats: str = "population") -> pd.DataFrame:
    """Clean and robust accuracy (%) as "mean ± sd" per model, one column per attack and epsilon (for display)."""
    from ..plots import model_label
    sub = acc[acc["stats"] == stats]
    sub = sub.assign(model=[model_label(n, q) for n, q in zip(sub["norm"], sub["norm_p"])])
    return accuracy_table(sub, ["model"])


def matched_clean(models: pd.DataFrame, acc: pd.DataFrame, eps: float = JUDGED_EPS) -> pd.DataFrame:
    """One point per model and seed: clean accuracy (full test set) and PGD accuracy at ``eps``
    (population statistics), for the view at matched clean accuracy: a normalization that is
    more robust only because it is less accurate lies on the others' trend, not above it."""
    pgd = acc[(acc["attack"] == "pgd") & (acc["stats"] == "population") & np.isclose(acc["eps"], eps, rtol=0, atol=1e-9)]
    keys = ["norm", "norm_p", "seed"]
    m = models.assign(norm_p=models["norm_p"].astype(float))
    p = pgd.assign(norm_p=pgd["norm_p"].astype(float))[keys + ["accuracy"]].rename(columns={"accuracy": "pgd"})
    return m[keys + ["clean_full"]].merge(p, on=keys, how="inner")


def matched_trend(points: pd.DataFrame, reference: tuple = ("bn", "none")) -> tuple[tuple[float, float] | None, pd.DataFrame]:
    """The view at matched clean accuracy, as numbers: a line ``robust = a + b * clean`` fitted (least
    squares) on the ``reference`` models' points (BatchNorm and no norm, every seed), and for each
    RobustNorm power the residual per seed (its robust accuracy minus the line at its clean accuracy)
    with their mean and Student-t 95 % CI over seeds. Positive: more robust than its clean accuracy
    predicts. ``inside`` says whether every clean accuracy of that power lies within the reference
    points' range (otherwise the line is extrapolated). Returns ``(None, empty)`` without two
    distinct reference clean accuracies."""
    from .. import stats
    ref = points[points["norm"].isin(reference)]
    cols = ["norm_p", "residual", "low", "high", "n_seeds", "inside"]
    if ref["clean_full"].nunique() < 2:
        return None, pd.DataFrame(columns=cols)
    slope, intercept = np.polyfit(ref["clean_full"].astype(float), ref["pgd"].astype(float), 1)
    rows = []
    for pw, sub in points[points["norm"] == "robustnorm"].groupby("norm_p"):
        res = sub["pgd"] - (intercept + slope * sub["clean_full"])
        e = stats.paired_seeds(np.zeros(len(res)), res.to_numpy())
        rows.append(dict(norm_p=float(pw), residual=e.estimate, low=e.low, high=e.high, n_seeds=len(res),
                         inside=bool(sub["clean_full"].between(ref["clean_full"].min(), ref["clean_full"].max()).all())))
    return (float(intercept), float(slope)), pd.DataFrame(rows, columns=cols)


def matched_sides(trend: pd.DataFrame) -> pd.DataFrame:
    """:func:`matched_trend`'s frame with ``side``: where each power's mean residual lies against the line
    through the reference models, ``"above"`` or ``"below"`` where its 95 % CI excludes 0, ``"on"`` (not
    distinguishable) where it holds 0, ``"no CI"`` with fewer than 3 seeds."""
    side = ["no CI" if np.isnan(lo) else "above" if lo > 0 else "below" if hi < 0 else "on"
            for lo, hi in zip(trend["low"], trend["high"])]
    return trend.assign(side=pd.Series(side, index=trend.index, dtype=object))


def power_effects(powers, frames: dict) -> pd.DataFrame:
    """Every RobustNorm power minus BatchNorm, paired over the seeds both have (95 % CIs, in fractions): one
    row per power and ``quantity``, ``clean`` (full test set), then ``pgd`` and ``apgd`` at the judged ε
    (population statistics) where every paired seed has the rows. ``judged``: the power the ledger
    judges (:data:`~rnorm.experiments.claims.HEADLINE_P`); the others are reported, not judged by a rule.
    A power without a seed shared with BatchNorm has no rows."""
    from .. import stats
    from .claims import HEADLINE_P
    from .verdicts import seed_values
    acc, models = frames["accuracy"], frames["models"]
    pop = acc[(acc["stats"] == "population") & np.isclose(acc["eps"].astype(float), JUDGED_EPS, rtol=0, atol=1e-9)]
    bn_models, rows = models[models["norm"] == "bn"], []
    for pw in powers:
        rn_models = models[(models["norm"] == "robustnorm") & np.isclose(models["norm_p"].astype(float), pw)]
        seeds = sorted(set(bn_models["seed"]) & set(rn_models["seed"]))
        if not seeds:
            continue
        got = {"clean": stats.paired_seeds(seed_values(bn_models, seeds, "clean_full"),
                                           seed_values(rn_models, seeds, "clean_full"))}
        for attack in ("pgd", "apgd"):
            a = pop[pop["attack"] == attack]
            b, r = a[a["norm"] == "bn"], a[(a["norm"] == "robustnorm") & np.isclose(a["norm_p"].astype(float), pw)]
            if set(seeds) <= set(b["seed"]) and set(seeds) <= set(r["seed"]):
                got[attack] = stats.paired_seeds(seed_values(b, seeds), seed_values(r, seeds))
        rows += [dict(norm_p=float(pw), judged=abs(pw - HEADLINE_P) < 1e-9, quantity=q, estimate=e.estimate,
                      low=e.low, high=e.high, n_seeds=e.n) for q, e in got.items()]
    return pd.DataFrame(rows, columns=["norm_p", "judged", "quantity", "estimate", "low", "high", "n_seeds"])


def apgd_gaps(acc: pd.DataFrame) -> pd.DataFrame:
    """How much more APGD-CE finds than PGD at the judged ε (population statistics), per model: ``gap``, the
    mean over the seeds both attacked (``n_seeds``) of PGD minus APGD-CE accuracy, in points; ``reading``:
    ``"overstates"`` above 1 point (the PGD rows overstate robustness by that much), ``"weaker"`` below
    -1 (APGD-CE is the weaker attack, the PGD rows are the ones to trust), else ``"agree"`` (within a point).
    Empty where APGD-CE did not run."""
    cols = ["norm", "norm_p", "gap", "n_seeds", "reading"]
    pop = acc[(acc["stats"] == "population") & np.isclose(acc["eps"].astype(float), JUDGED_EPS, rtol=0, atol=1e-9)]
    pgd, apgd = pop[pop["attack"] == "pgd"], pop[pop["attack"] == "apgd"]
    if not len(apgd):
        return pd.DataFrame(columns=cols)
    keys = ["norm", "norm_p", "seed"]
    both = pgd.assign(norm_p=pgd["norm_p"].astype(float))[keys + ["accuracy"]].merge(
        apgd.assign(norm_p=apgd["norm_p"].astype(float))[keys + ["accuracy"]], on=keys, suffixes=("_pgd", "_apgd"))
    rows = []
    for (n, q), sub in both.groupby(["norm", "norm_p"], dropna=False):
        gap = 100 * (sub["accuracy_pgd"] - sub["accuracy_apgd"]).mean()
        rows.append(dict(norm=n, norm_p=q, gap=gap, n_seeds=len(sub),
                         reading="overstates" if gap > 1 else "weaker" if gap < -1 else "agree"))
    return pd.DataFrame(rows, columns=cols)


def epochs_to_target(dataset: str, arch: str, history: pd.DataFrame | None) -> pd.DataFrame:
    """Epochs each model and seed took to reach the speed target (``target``, :data:`SPEED_TARGET` of the
    published reference accuracy of the setting, :func:`rnorm.experiments.protocol.reference`) in test
    accuracy, from the training histories (:func:`~rnorm.experiments.verdicts.epochs_to`; ``inf``: never).
    Empty without a reference or a history."""
    from .protocol import reference
    from .verdicts import SPEED_TARGET, epochs_to
    cols = ["norm", "norm_p", "seed", "epochs", "target"]
    ref = reference(dataset, arch)
    if ref is None or history is None or not len(history):
        return pd.DataFrame(columns=cols)
    target = SPEED_TARGET * ref.accuracy
    rows = [dict(norm=n, norm_p=q, seed=s, epochs=epochs_to(h, target), target=target)
            for (n, q), sub in history.groupby(["norm", "norm_p"], dropna=False, sort=False)
            for s, h in sub.groupby("seed")]
    return pd.DataFrame(rows, columns=cols)


def speed_target_text(dataset: str, arch: str, width=None) -> str:
    """C3's speed target in words, beside the convergence floor it is easily mistaken for: both are fractions
    of the setting's published accuracy (:func:`rnorm.experiments.protocol.reference`), the target
    :data:`~rnorm.experiments.claims.SPEED_TARGET` of it; empty without a reference."""
    from .protocol import reference
    from .verdicts import SPEED_TARGET
    ref = reference(dataset, arch)
    if ref is None:
        return ""
    return (f"{100 * SPEED_TARGET * ref.accuracy:.1f} % test accuracy, {SPEED_TARGET:.0%} of the published accuracy "
            f"the convergence floor rests on (the floor is {ref.describe(width)})")
