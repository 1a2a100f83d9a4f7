"""Notebook 04's findings as tidy frames: what its "What this shows" section says, in numbers.

Every paired difference is one row: the setting (dataset, arch), whether the setting is judged
(:func:`judged`, and why not), what is compared, the attack and ε, the effect (``estimate``, ``low``,
``high`` as fractions, over ``n_seeds`` paired seeds, :func:`rnorm.stats.paired_seeds`), whether
every robust accuracy compared is at the attack's floor, and the direction ``category``
(:func:`category`). The sentences are the notebook's (``notebooks/04_easy_batchnorm.md``), composed
over these frames with the word helpers of :mod:`rnorm.experiments.words` (re-exported here).
Names (dataset, recipe) are the raw ones: the notebook applies the labels.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import stats
from ..attacks import format_eps
from .ebn_tables import ablation_rows, with_full_clean
from .protocol import MAX_CI_WIDTH, _select, attack_params, not_at_floor, standard_floor
from .verdicts import seed_values
from .words import COMPARED, direction_words, effect  # noqa: F401  (the notebook's word helpers, re-exported)

#: The columns every comparison row ends with (:func:`_comparison`).
COMPARISON = ["attack", "eps", "attack_name", "estimate", "low", "high", "n_seeds", "at_floor", "category"]


def judged(models: pd.DataFrame | None, dataset: str, arch: str) -> tuple[bool, str]:
    """Whether a setting's differences may be given a direction in words: standard training (the
    reference of C4-C5, separate branches) reached its convergence floor there
    (:func:`rnorm.experiments.protocol.standard_floor`, the rule the verdicts apply). ``(ok, text)``; the
    text says why not, or which floor was met."""
    return standard_floor(models, dataset, arch)


def category(e, a, b, attack: str, ok: bool) -> str | None:
    """Which way a paired difference ``e`` of per-seed values ``a`` -> ``b`` goes: ``"higher"`` or
    ``"lower"`` where its 95 % CI excludes 0, ``"none"`` where it holds 0 and is at most the protocol's
    :data:`~rnorm.experiments.protocol.MAX_CI_WIDTH` wide, ``"wide"`` where it holds 0 and is wider (too
    wide to tell a difference from none, as the verdicts' rule says), ``"floor"`` where every robust
    accuracy compared is at the attack's floor (no difference can show), ``"no CI"`` with fewer than 3
    seeds; None where the setting is not judged (no word may give a direction)."""
    if not ok:
        return None
    if e is None or math.isnan(e.low):
        return "no CI"
    if attack != "clean" and not not_at_floor(*a, *b)[0]:
        return "floor"
    if e.low > 0 or e.high < 0:
        return "higher" if e.low > 0 else "lower"
    return "wide" if e.high - e.low > MAX_CI_WIDTH else "none"


def attack_name(rows: pd.DataFrame, attack: str, eps: float) -> str:
    """``clean``, or the attack with its steps and ε as run (``PGD-20 2/255``), read from the rows' params."""
    if attack == "clean":
        return "clean"
    name, steps = attack.upper(), set()
    if "params" in rows:
        for text in _select(rows, attack=attack, eps=float(eps))["params"].dropna():
            steps.add(attack_params(text).get("steps"))
    if len(steps) == 1 and None not in steps:
        name += f"-{steps.pop()}"
    return f"{name} {format_eps(eps)}"


def scored(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """The (attack, ε) pairs of ``frame``'s clean and PGD rows, clean first, then PGD by ε."""
    rows = frame[frame["attack"].isin(("clean", "pgd"))][["attack", "eps"]].drop_duplicates()
    return list(rows.sort_values(["attack", "eps"]).itertuples(index=False, name=None))


def mean_over_seeds(frame: pd.DataFrame, attack: str, eps: float) -> float:
    """Mean over seeds of one value per seed (:func:`~rnorm.experiments.verdicts.seed_values`); NaN if none."""
    rows = _select(frame, attack=attack, eps=float(eps))
    seeds = sorted(set(rows["seed"]))
    return float(np.mean(seed_values(rows, seeds))) if seeds else math.nan


def paired(a: pd.DataFrame, b: pd.DataFrame, attack: str, eps: float):
    """``b`` minus ``a`` at (attack, ε), paired over the seeds both have (one value per seed,
    :func:`~rnorm.experiments.verdicts.seed_values`): ``(effect, a's values, b's values)`` with
    :func:`rnorm.stats.paired_seeds`'s 95 % CI; None if they share no seed."""
    a, b = _select(a, attack=attack, eps=float(eps)), _select(b, attack=attack, eps=float(eps))
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    if not seeds:
        return None
    va, vb = seed_values(a, seeds), seed_values(b, seeds)
    return stats.paired_seeds(va, vb), va, vb


def _comparison(a: pd.DataFrame, b: pd.DataFrame, attack: str, eps: float, ok: bool) -> dict | None:
    """``b`` minus ``a`` (:func:`paired`) as the :data:`COMPARISON` columns of a row, the attack named from
    ``b``'s rows; None if they share no seed."""
    got = paired(a, b, attack, eps)
    if got is None:
        return None
    e, va, vb = got
    return dict(attack=attack, eps=float(eps), attack_name=attack_name(b, attack, eps), estimate=e.estimate,
                low=e.low, high=e.high, n_seeds=e.n, at_floor=attack != "clean" and not not_at_floor(*va, *vb)[0],
                category=category(e, va, vb, attack, ok))


def _main(acc: pd.DataFrame, clean_full: pd.DataFrame | None) -> pd.DataFrame:
    """The main-branch, separate-branch rows, clean on the full test set where measured."""
    main = with_full_clean(acc, clean_full)
    return main[(main["branch"] == "main") & (main["share"] == "none")]


def _settings(frame: pd.DataFrame, models: pd.DataFrame | None):
    """``((dataset, arch), judged, why, rows)`` per setting of ``frame``, in order."""
    for (d, a), sub in frame.groupby(["dataset", "arch"], sort=False):
        ok, why = judged(models, d, a)
        yield d, a, ok, why, sub


def _frame(rows: list[dict], keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["dataset", "arch", "judged", "why"] + keys + COMPARISON)


def ranking_frame(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                  models: pd.DataFrame | None) -> pd.DataFrame:
    """The recipes ranked per setting through the main branch, by mean clean accuracy (full test set where
    measured) and by mean PGD accuracy at each ε: one row per (setting, attack, ε, recipe), ``position``
    from 0 (highest mean), ``mean`` over seeds (fraction), ``sign`` to the recipe above (""
    for the first): ">" where the paired CI of the two neighbours lies below 0 (:func:`_rank_sign`), "≈"
    where it holds 0 or both are at the attack's floor, "<" in the odd case of a CI above 0 (paired over
    fewer seeds than the means), "," where no direction may be read (setting not judged, fewer than 3
    shared seeds); ``alone_lowest``: the recipe's mean, to one decimal of a percent, is below every other
    recipe's, with more than two recipes ranked. The PGD rows are PGD alone; the C4 verdict's robust parts
    take the per-image worst case of PGD and APGD-CE."""
    cols = ["dataset", "arch", "judged", "why", "attack", "eps", "attack_name", "position", "recipe", "mean",
            "sign", "alone_lowest"]
    out = []
    for d, a, ok, why, sub in _settings(_main(acc, clean_full), models):
        for attack, eps in scored(sub):
            means = {r: mean_over_seeds(g, attack, eps) for r, g in sub.groupby("recipe", sort=False)}
            means = {r: m for r, m in means.items() if m == m}  # a recipe without rows here is not ranked
            order = sorted(means, key=lambda r: -means[r])
            shown = {r: round(100 * means[r], 1) for r in order}
            for i, r in enumerate(order):
                lowest = len(order) > 2 and shown[r] < min(v for o, v in shown.items() if o != r)
                out.append(dict(dataset=d, arch=a, judged=ok, why=why, attack=attack, eps=float(eps),
                                attack_name=attack_name(sub, attack, eps), position=i, recipe=r, mean=means[r],
                                sign="" if i == 0 else _rank_sign(sub, order[i - 1], r, attack, eps, ok),
                                alone_lowest=lowest))
    return pd.DataFrame(out, columns=cols)


def _rank_sign(sub: pd.DataFrame, higher: str, lower: str, attack: str, eps: float, ok: bool) -> str:
    """The sign between two neighbours of a ranking by mean (``higher``'s mean first): ">" where the paired
    95 % CI of ``lower`` minus ``higher`` lies below 0, "≈" where it holds 0 or both are at the attack's
    floor, "<" in the odd case of a CI above 0 (paired over fewer seeds than the means), "," where no
    direction may be read (setting not judged, fewer than 3 shared seeds)."""
    got = paired(sub[sub["recipe"] == higher], sub[sub["recipe"] == lower], attack, eps)
    cat = None if got is None else category(*got, attack, ok)
    return {"lower": ">", "higher": "<", "none": "≈", "wide": "≈", "floor": "≈"}.get(cat, ",")


def versus_frame(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                 models: pd.DataFrame | None) -> pd.DataFrame:
    """EBN minus every other recipe (``reference``) per setting through the main branch, at each clean and
    PGD setting of EBN's rows (:func:`scored`), paired over seeds: one :data:`COMPARISON` row each, the
    direction category only where the setting is judged. Settings without EBN have no rows."""
    out = []
    for d, a, ok, why, sub in _settings(_main(acc, clean_full), models):
        ebn_rows = sub[sub["recipe"] == "ebn"]
        if ebn_rows.empty:
            continue
        for ref, rows in sub[sub["recipe"] != "ebn"].groupby("recipe", sort=False):
            for attack, eps in scored(sub):
                row = _comparison(rows, ebn_rows, attack, eps, ok)
                if row is not None:
                    out.append(dict(dataset=d, arch=a, judged=ok, why=why, reference=ref, **row))
    return _frame(out, ["reference"])


def headline_frame(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                   models: pd.DataFrame | None) -> pd.DataFrame:
    """The lead of the chapter's findings, one row per judged setting (:func:`judged`) with EBN and
    standard training or AdvProp (``refs``, comma-separated): the PGD ε it speaks of, the smallest at which
    not everything compared with the references is at the attack's floor; EBN's mean there over seeds
    (``ebn_mean``); ``place``: ``"least"`` (``"most"``) robust where EBN's paired CI against every other
    recipe (``n_recipes`` with EBN) lies below (above) 0, else ``""``. The differences it cites are
    :func:`versus_frame`'s rows at that ε and on clean accuracy."""
    cols = ["dataset", "arch", "refs", "attack", "eps", "attack_name", "ebn_mean", "place", "n_recipes"]
    out = []
    for d, a, ok, _, sub in _settings(_main(acc, clean_full), models):
        refs = [r for r in ("standard", "advprop") if (sub["recipe"] == r).any()]
        ebn_rows = sub[sub["recipe"] == "ebn"]
        if not ok or ebn_rows.empty or not refs:
            continue
        for attack, eps in [x for x in scored(sub) if x[0] == "pgd"]:
            got = {r: paired(sub[sub["recipe"] == r], ebn_rows, attack, eps) for r in refs}
            if any(g is not None and not_at_floor(*g[1], *g[2])[0] for g in got.values()):
                break
        else:
            continue
        mine = mean_over_seeds(ebn_rows, attack, eps)
        if mine != mine:
            continue
        # a place among the recipes only where every paired CI against the others puts EBN on one side
        others = {r: paired(g, ebn_rows, attack, eps) for r, g in sub.groupby("recipe", sort=False) if r != "ebn"}
        others = {r: g for r, g in others.items() if g is not None}
        below = bool(others) and all(g[0].high < 0 for g in others.values())
        above = bool(others) and all(g[0].low > 0 for g in others.values())
        out.append(dict(dataset=d, arch=a, refs=",".join(refs), attack=attack, eps=float(eps),
                        attack_name=attack_name(sub, attack, eps), ebn_mean=mine,
                        place="least" if below else "most" if above else "", n_recipes=len(others) + 1))
    return pd.DataFrame(out, columns=cols)


def branch_frame(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                 models: pd.DataFrame | None) -> pd.DataFrame:
    """Per setting, every recipe and branch minus standard training's main branch: clean (full test set
    where measured) and PGD at each ε, paired over seeds with a 95 % CI, one :data:`COMPARISON` row each,
    so that what hurts shows as plainly as what helps. The category (read "helps"/"hurts") only where the
    setting is judged (:func:`judged`); ``floor`` where the robust accuracies are all at the attack's floor."""
    out = []
    main = with_full_clean(acc, clean_full)
    for d, a, ok, why, sub in _settings(main[main["share"] == "none"], models):
        base = sub[(sub["recipe"] == "standard") & (sub["branch"] == "main")]
        if base.empty:
            continue
        for (recipe, branch), rows in sub[sub["recipe"] != "standard"].groupby(["recipe", "branch"], sort=False):
            for attack, eps in scored(rows):
                row = _comparison(base, rows, attack, eps, ok)
                if row is not None:
                    out.append(dict(dataset=d, arch=a, judged=ok, why=why, recipe=recipe, branch=branch, **row))
    return _frame(out, ["recipe", "branch"])


def ablation_frame(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                   models: pd.DataFrame | None) -> pd.DataFrame:
    """The sharing ablation in numbers, per setting where it was trained (:func:`ablation_rows`): EBN with
    shared affine parameters (``share`` ``affine``), and with shared statistics (``stats``), minus EBN with
    separate branches (``reference`` ``none``), through the main branch, paired over seeds with 95 % CIs;
    where both were trained, also shared γ/β minus shared statistics (``share`` ``affine``, ``reference``
    ``stats``), paired over the seeds both have. Zhang et al. (2024, ``PAPERS.md``) argue that separate
    affine parameters matter more than separate statistics, which here would read as the last difference
    below 0. The category only where the setting is judged (:func:`judged`); no ledger verdict rests on it."""
    out = []
    for d, a, ok, why, sub in _settings(ablation_rows(with_full_clean(acc, clean_full)), models):
        pairs = [(share, "none", rows) for share, rows in sub[sub["share"] != "none"].groupby("share", sort=False)]
        if (sub["share"] == "affine").any() and (sub["share"] == "stats").any():
            pairs.append(("affine", "stats", sub[sub["share"] == "affine"]))
        for share, ref, rows in pairs:
            base = sub[sub["share"] == ref]
            for attack, eps in scored(rows):
                row = _comparison(base, rows, attack, eps, ok)
                if row is not None:
                    out.append(dict(dataset=d, arch=a, judged=ok, why=why, share=share, reference=ref, **row))
    return _frame(out, ["share", "reference"])


_AUX = {"advprop": ("adv",), "ebn": ("easy",), "advprop_ebn": ("adv", "easy")}
_HISTORY_KEYS = ("dataset", "arch", "recipe", "seed", "epoch", "loss_main")


def slice_loss_frame(history: pd.DataFrame | None) -> pd.DataFrame:
    """How hard each auxiliary slice is, from the runs' training histories: per setting, recipe with an
    auxiliary branch and slice (``main`` = the clean slice, ``adv``, ``easy``), the training loss at the
    first and the last epoch (``first``, ``last``) and, for an auxiliary slice, the median over epochs of
    its loss as a share of the clean slice's (``ratio``): per seed, then the mean over seeds
    (``n_seeds``), so a seed with fewer epochs weighs as much; the median keeps the warmup epoch from
    dominating. ``epochs_min``/``epochs_max``: the fewest and most epochs of a seed. The sharing ablation
    is left out. Empty without the history's columns."""
    cols = ["dataset", "arch", "recipe", "slice", "n_seeds", "epochs_min", "epochs_max", "first", "last", "ratio"]
    if history is None or not set(_HISTORY_KEYS) <= set(history.columns):
        return pd.DataFrame(columns=cols)
    h = history[history["share"].isin(("none", ""))] if "share" in history else history
    out = []
    for (d, a), sub in h.groupby(["dataset", "arch"], sort=False):
        for recipe, branches in _AUX.items():
            rows = sub[sub["recipe"] == recipe]
            aux = [f"loss_{b}" for b in branches if f"loss_{b}" in rows and rows[f"loss_{b}"].notna().any()]
            if rows.empty or not aux:
                continue
            per_seed = []
            for _, run in rows.sort_values("epoch").groupby("seed"):
                run = run.dropna(subset=["loss_main"] + aux)
                if len(run):
                    per_seed.append({**{f"first_{c}": run[c].iloc[0] for c in ["loss_main"] + aux},
                                     **{f"last_{c}": run[c].iloc[-1] for c in ["loss_main"] + aux},
                                     **{f"ratio_{c}": (run[c] / run["loss_main"]).median() for c in aux},
                                     "epochs": len(run)})
            if not per_seed:
                continue
            m, epochs = pd.DataFrame(per_seed).mean(), [r["epochs"] for r in per_seed]
            out += [dict(dataset=d, arch=a, recipe=recipe, slice=c[len("loss_"):], n_seeds=len(per_seed),
                         epochs_min=min(epochs), epochs_max=max(epochs), first=m[f"first_{c}"], last=m[f"last_{c}"],
                         ratio=m[f"ratio_{c}"] if c != "loss_main" else math.nan) for c in ["loss_main"] + aux]
    return pd.DataFrame(out, columns=cols)


def slice_readings(slices: pd.DataFrame) -> pd.DataFrame:
    """The two readings of :func:`slice_loss_frame`, decided per setting (one row per setting with an
    auxiliary slice). ``easy_below``: every easy slice's median ratio is below 1 (True), or one is not
    (False: contradicts our reading of EBN); None without an easy slice. An easy slice below the clean
    one is only an implementation check (the easy attack is built to lower the loss), not evidence for
    the reading. ``apart``: an easy slice below half the clean slice's or an adversarial slice above twice
    it, where the loss weighting (``loss_weighting``, Methods) cannot give the recipes one step size: a
    cross-entropy's gradient shrinks roughly with its loss once that is small, so a slice far below the
    clean one adds little to the step on the shared weights (a confound for C4 and, through AdvProp's
    step, for C5)."""
    out = []
    for (d, a), sub in slices[slices["slice"] != "main"].groupby(["dataset", "arch"], sort=False):
        easy, adv = sub.loc[sub["slice"] == "easy", "ratio"], sub.loc[sub["slice"] == "adv", "ratio"]
        out.append(dict(dataset=d, arch=a, easy_below=bool((easy < 1).all()) if len(easy) else None,
                        apart=bool((easy < 0.5).any() or (adv > 2).any())))
    return pd.DataFrame(out, columns=["dataset", "arch", "easy_below", "apart"])
