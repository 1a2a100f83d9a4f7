"""The claims' rules: for each claim C1-C5, the rule and the function that applies it to result frames.

Every verdict follows a rule written here and printed in the book beside it, applied to the
result frames the notebooks write (``results/<notebook>/<frame>.csv``); nothing is typed by
hand. The protocol (:mod:`rnorm.experiments.protocol`) fixes the judged ε, the convergence
floors, the attack strength and the margins before any run. Each part of a claim is an effect
with a 95 % confidence interval (:mod:`rnorm.stats`):

* same weights, two conditions (population vs batch statistics, adversarial vs noise): paired
  over test images (per-image correctness, a bootstrap over images, all seeds at once);
* two trainings (RobustNorm vs BatchNorm, EBN vs AdvProp): paired over seeds (≥ 3).

Verdicts: ``reproduced``, ``partly`` (some parts hold, none is refuted), ``not reproduced``,
``inconclusive`` (with its reason: a model below its floor, a failed precondition, everything at
the attack's floor, a CI too wide or containing the margin) and ``not run``.

A study notebook states its own claim's verdict with these rules (:func:`findings`); the claims
ledger (:mod:`rnorm.experiments.ledger`) applies them to a whole results folder, so the two
agree. The rules live apart from the ledger's reading and tabulating of results, because every
study notebook's key (:func:`rnorm.book.notebook_key`) covers the code it imports: the ledger's
own code can then change without making the executed chapters stale.

Here: each claim's verdict function (:data:`VERDICTS`) and :func:`findings`, with C1's and C3's sensitivity
analyses. What they read and measure is in :mod:`rnorm.experiments.evidence` (result frames, per-image
correctness, effects); how a part is judged and parts and settings combine, by the one spec of
:mod:`rnorm.experiments.claims`, in :mod:`rnorm.experiments.judge`; C4's and C5's comparison of two
recipes per setting in :mod:`rnorm.experiments.per_setting`. Every name is importable from here too.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import stats
from ..attacks import format_eps
from . import claims, protocol
from .claims import (CLEAN_SENSITIVITY, C4_CLAIMED, C4_READINGS, CLAIMS, CLEAN_MARGIN, HEADLINE_P, NONORM_MARGIN,  # noqa: F401
                     REPAIR_MARGIN, REPAIR_MIN_DROP, ROBUST_MARGIN, RULES, SHIFT_MARGIN, SOURCES, SPECS,
                     SENSITIVITY_EPS, SENSITIVITY_MARGINS, SPEED_MARGIN, SPEED_TARGET, SWAP_MARGIN, combine_parts,
                     over_settings)
from .evidence import (Results, clean_effect, epochs_to, full_test_bits, judged_ebn_eps, per_image,  # noqa: F401
                       robust_rows, seed_values, shift_effect, trainings_effect, worst_case)
from .judge import (INCONCLUSIVE, NOT, NOT_RUN, PARTLY, REPRODUCED, Row, checked, claim_row,  # noqa: F401
                    most)
from .per_setting import compare_recipes
from .protocol import JUDGED_EPS, _select

# The names these helpers had here before they moved (tests and notebooks import them from this module).
_checked, _claim, _most, _recipes = checked, claim_row, most, compare_recipes
_robust, _clean_effect, _shift_effect = robust_rows, clean_effect, shift_effect

_J = format_eps(JUDGED_EPS)


# --- C1 ----------------------------------------------------------------------------------------------

def verdict_c1(r: Results) -> Row:
    nb = "01_distribution_shift"
    models, effects, acc = r.frame(nb, "models"), r.frame(nb, "shift_effects"), r.frame(nb, "accuracy")
    if models is None or effects is None or acc is None:
        return Row(NOT_RUN)
    seeds = sorted(models["seed"].unique())
    conv_ok, conv = protocol.convergence(models, norm="bn")
    acc_j = _select(acc, eps=float(JUDGED_EPS))
    pgd = acc_j[(acc_j["attack"] == "pgd")]
    strong_ok, strong = protocol.attack_strength(pgd)
    parts = {}
    for statistic in ("mean", "var"):
        eff = shift_effect(effects, JUDGED_EPS, statistic)
        parts[f"shift of the {'mean' if statistic == 'mean' else 'variance'} (PGD / sign noise)"] = checked(
            eff, margin=SHIFT_MARGIN, checks={strong: strong_ok}, max_width=None)
    clean = per_image(_select(acc[acc["attack"] == "clean"], stats="population"), seeds)
    adv = per_image(_select(pgd, stats="population", gradient="white-box"), seeds)
    fixed = per_image(_select(pgd, stats="batch", gradient="transfer"), seeds)
    if clean is None or adv is None or fixed is None or clean.shape != adv.shape or adv.shape != fixed.shape:
        parts["repair"] = stats.Verdict(NOT_RUN, None, "no per-image results for the repair test")
    else:
        drop = float(clean.mean() - adv.mean())
        eff = stats.recovered_fraction(clean, adv, fixed)
        parts["repair (share of PGD's damage undone by the batch's own statistics)"] = checked(
            eff, margin=REPAIR_MARGIN, max_width=None, checks={
                strong: strong_ok,
                f"PGD at {_J} takes only {100 * drop:.1f} points, less than the {100 * REPAIR_MIN_DROP:.0f} a "
                f"repair could be measured on": drop >= REPAIR_MIN_DROP})
    shift = {k: v for k, v in parts.items() if k.startswith("shift")}
    side = {k: v for k, v in parts.items() if not k.startswith("shift")}
    return claim_row(shift, side, {conv: conv_ok})


def c1_sensitivity(effects: pd.DataFrame | None, margins=SENSITIVITY_MARGINS, epsilons=SENSITIVITY_EPS) -> pd.DataFrame:
    """C1's sensitivity analysis, *not* its verdict: the two shift parts (PGD / sign noise, against
    PreciseBN statistics) judged at every margin of ``margins`` and ε of ``epsilons``, with the
    bias-corrected and the uncorrected ratios side by side. One row per (ε, margin): eps, margin,
    mean_ratio, mean_low, mean_high, mean_raw, var_ratio, var_low, var_high, var_raw, verdict (of
    the two shift parts combined as core parts: the repair part and the preconditions are left out)."""
    cols = ["eps", "margin", "mean_ratio", "mean_low", "mean_high", "mean_raw", "var_ratio", "var_low", "var_high",
            "var_raw", "verdict"]
    if effects is None:
        return pd.DataFrame(columns=cols)
    rows = []
    for eps in epsilons:
        got = {st: shift_effect(effects, eps, st) for st in ("mean", "var")}
        if any(v is None for v in got.values()):
            continue
        raw = {st: float(_select(effects, eps=float(eps), attack="pgd", control="noise_sign", reference="precise",
                                 statistic=st)["raw_ratio"].iloc[0]) for st in got}
        for margin in margins:
            parts = {st: stats.judge(e, margin=margin) for st, e in got.items()}
            rows.append({"eps": eps, "margin": margin, **{f"{st}_{k}": v for st, e in got.items()
                                                          for k, v in (("ratio", e.estimate), ("low", e.low),
                                                                       ("high", e.high), ("raw", raw[st]))},
                         "verdict": combine_parts(parts, {})[0]})
    return pd.DataFrame(rows, columns=cols)


# --- C2 ----------------------------------------------------------------------------------------------

def verdict_c2(r: Results) -> Row:
    """C2 by its spec (:data:`rnorm.experiments.claims.SPECS`): the core part is the swap itself, the
    same weights with batch vs population statistics under the same white-box attack; the no-norm
    comparison counts only where it has power (population-statistics BN would fail it)."""
    spec = SPECS["C2"]
    nb = "02_stats_swap"
    models, sweep = r.frame(nb, "models"), r.frame(nb, "eps_sweep")
    if models is None or sweep is None:
        return Row(NOT_RUN)
    strong = r.frame(nb, "strong")
    acc = pd.concat([sweep, strong], ignore_index=True) if strong is not None else sweep
    judged = acc["batch_size"] == protocol.JUDGED_BATCH
    acc = acc[judged] if judged.any() else acc
    seeds = sorted(set(models.loc[models["norm"] == "bn", "seed"]) & set(models.loc[models["norm"] == "none", "seed"]))
    if not seeds:
        return Row(NOT_RUN, "—", checks="no seed has both a BN and a no-norm model")
    conv_ok, conv = protocol.convergence(models, norm="bn")
    rob = robust_rows(_select(acc, eps=float(JUDGED_EPS)))
    strong_ok, strength = protocol.attack_strength(rob)
    bn, none = rob[rob["norm"] == "bn"], rob[rob["norm"] == "none"]
    pop_rows, wb_rows = _select(bn, stats="population", gradient="white-box"), _select(bn, stats="batch",
                                                                                        gradient="white-box")
    pop, wb, nn_ = worst_case(pop_rows, seeds), worst_case(wb_rows, seeds), worst_case(none, seeds)
    if pop is None or wb is None or nn_ is None:
        return Row(NOT_RUN, checks=f"no PGD rows at ε = {_J}")
    pre = stats.paired_seeds(pop, nn_)
    pre_ok = not math.isnan(pre.low) and pre.low > 0
    floor_ok, floor = protocol.not_at_floor(*pop, *wb, *nn_)
    vulnerable = (f"BN with population statistics is clearly more vulnerable than the no-norm model at {_J} "
                  f"(no-norm minus BN: {pre.text()})")
    checks = {conv: conv_ok, strength: strong_ok, floor: floor_ok, vulnerable: pre_ok}
    swap, nonorm, clean_part = spec.parts
    pb, bb = per_image(pop_rows, seeds), per_image(wb_rows, seeds)
    core = {swap.name: stats.Verdict(NOT_RUN, None, "no per-image rows") if pb is None or bb is None
            or pb.shape != bb.shape else checked(stats.paired_images(pb, bb), margin=swap.margin, checks={})}
    side = {nonorm.name: _nonorm_part(nn_, wb, pop, nonorm.margin)}
    clean = sweep[(sweep["attack"] == "clean") & (sweep["norm"] == "bn")]
    cp = per_image(_select(clean, stats="population"), seeds)
    cb = per_image(_select(clean, stats="batch"), seeds)
    side[clean_part.name] = (stats.Verdict(NOT_RUN, None, "no per-image rows") if cp is None or cb is None
                             else checked(stats.paired_images(cp, cb), margin=clean_part.margin, checks={}))
    row = claim_row(core, side, checks)
    earlier = claim_row({"batch-statistics BN minus no-norm": checked(stats.paired_seeds(nn_, wb), margin=nonorm.margin,
                                                                   checks={})},
                     {clean_part.name: side[clean_part.name]}, checks)
    row.checks = "; ".join(t for t in (row.checks, f"under the earlier rule (core part: batch-statistics BN minus "
                                                   f"no-norm), the verdict would be {earlier.verdict}") if t)
    return row


def _nonorm_part(nonorm: list, batch: list, population: list, margin: float) -> stats.Verdict:
    """C2's no-norm part, with its power: BN with batch statistics minus the no-norm model, paired over
    seeds, against ``margin``; inconclusive where population-statistics BN would not fail the same test
    (the test could then not tell a removed vulnerability from an unchanged one)."""
    effect = stats.paired_seeds(nonorm, batch)
    v = checked(effect, margin=margin, checks={})
    control = stats.paired_seeds(nonorm, population)
    power = _nonorm_power(nonorm, population, margin)
    if v.verdict == REPRODUCED and not (control.high < margin):
        return stats.Verdict(INCONCLUSIVE, effect, f"no power: BN with population statistics, whose vulnerability "
                             f"the swap is to remove, does not fail the same test either ({control.text()}); "
                             + power)
    return stats.Verdict(v.verdict, v.effect, "; ".join(t for t in (v.reason, power) if t))


def _nonorm_power(nonorm: list, population: list, margin: float) -> str:
    """The no-norm test's power, in words: the probability (:func:`rnorm.stats.power_below`) that it would
    fail population-statistics BN if BN's true gap to the no-norm model were the one observed, with the
    observed spread of the paired seeds. Empty with too few seeds for a CI."""
    d = np.asarray(population, dtype=float) - np.asarray(nonorm, dtype=float)
    if d.size < stats.MIN_SEEDS:
        return ""
    power = stats.power_below(float(d.mean()), float(d.std(ddof=1)), d.size, margin)
    return (f"its power: {power:.0%} chance to fail population-statistics BN, were BN's true gap to the no-norm "
            f"model the observed {100 * d.mean():+.1f} points (seed sd {100 * d.std(ddof=1):.1f}, {d.size} seeds)")


# --- C3 ----------------------------------------------------------------------------------------------

def verdict_c3(r: Results) -> Row:
    nb = "03_robustnorm"
    models, acc, history = r.frame(nb, "models"), r.frame(nb, "accuracy"), r.frame(nb, "history")
    if models is None or acc is None:
        return Row(NOT_RUN)
    rn_sel = dict(norm="robustnorm", norm_p=HEADLINE_P)
    seeds = sorted(set(_select(models, norm="bn")["seed"]) & set(_select(models, **rn_sel)["seed"]))
    if not seeds:
        return Row(NOT_RUN, checks=f"no seed has both BatchNorm and RobustNorm p = {HEADLINE_P:g}")
    ok_bn, t_bn = protocol.convergence(models, norm="bn")
    rob = robust_rows(_select(acc, eps=float(JUDGED_EPS), stats="population"))
    strong_ok, strength = protocol.attack_strength(rob)
    bn_rows, rn_rows = _select(rob, norm="bn"), _select(rob, **rn_sel)
    bn, rn = worst_case(bn_rows, seeds), worst_case(rn_rows, seeds)
    checks = {t_bn: ok_bn, strength: strong_ok}
    core, side = {}, {}
    robust_name = f"robust accuracy at {_J}, RobustNorm minus BatchNorm"
    if bn is None or rn is None:
        core[robust_name] = stats.Verdict(NOT_RUN, None, f"no PGD rows at {_J}")
    else:
        floor_ok, floor = protocol.not_at_floor(*bn, *rn)
        core[robust_name] = checked(trainings_effect(bn_rows, rn_rows, seeds), margin=ROBUST_MARGIN,
                                     checks={floor: floor_ok})
    clean_name = "clean accuracy (full test set), RobustNorm minus BatchNorm"
    cb = seed_values(_select(models, norm="bn"), seeds, "clean_full")
    cr = seed_values(_select(models, **rn_sel), seeds, "clean_full")
    if cb is None or cr is None or any(math.isnan(v) for v in cb + cr):
        side[clean_name] = stats.Verdict(INCONCLUSIVE, None, "a model has no full-test-set clean accuracy")
    else:
        side[clean_name] = checked(stats.paired_seeds(cb, cr), margin=CLEAN_MARGIN, checks={})
    side.update(_speed(models, history, seeds, rn_sel))
    row = claim_row(core, side, checks)
    ok_rn, t_rn = protocol.convergence(models, **rn_sel)
    if not ok_rn:
        row.effect += (f"; RobustNorm p = {HEADLINE_P:g}, trained for the same epochs and schedule at its swept "
                       f"learning rate, stays {t_rn}")
        row.caveats += (f"RobustNorm p = {HEADLINE_P:g} stays below the convergence floor",)
    return row


def c3_clean_sensitivity(models: pd.DataFrame | None, margins=CLEAN_SENSITIVITY) -> str:
    """C3's clean-accuracy part at every margin of ``margins`` (a sensitivity analysis, not the
    verdict, which uses :data:`CLEAN_MARGIN`), as one markdown sentence; empty without models."""
    if models is None:
        return ""
    rn_sel = dict(norm="robustnorm", norm_p=HEADLINE_P)
    seeds = sorted(set(_select(models, norm="bn")["seed"]) & set(_select(models, **rn_sel)["seed"]))
    cb = seed_values(_select(models, norm="bn"), seeds, "clean_full") if seeds else None
    cr = seed_values(_select(models, **rn_sel), seeds, "clean_full") if seeds else None
    if cb is None or cr is None:
        return ""
    effect = stats.paired_seeds(cb, cr)
    judged = ", ".join(f"within {-100 * m:g} point{'s' if m != -0.01 else ''}: {stats.judge(effect, margin=m).verdict}"
                       for m in margins)
    return (f"*Sensitivity of the clean-accuracy part to its margin (not the verdict):* RobustNorm minus BatchNorm "
            f"{effect.text()}; {judged}.")


def _speed(models: pd.DataFrame, history: pd.DataFrame | None, seeds, rn_sel: dict) -> dict:
    """C3's training-speed part: epochs to :data:`SPEED_TARGET` of the reference accuracy, paired over seeds.

    Inconclusive (never silently dropped) when there is no history, a seed's history has no test
    accuracy at some epoch, or BatchNorm itself never reaches the target; not reproduced when
    RobustNorm never does and BatchNorm does."""
    name = "training speed"
    if history is None or "test_acc" not in history or "epoch" not in history:
        return {name: stats.Verdict(INCONCLUSIVE, None, "no per-epoch test accuracy was recorded")}
    ref = protocol.reference(models["dataset"].iloc[0], models["arch"].iloc[0])
    if ref is None:
        return {name: stats.Verdict(INCONCLUSIVE, None, "no reference accuracy to set the target")}
    target = SPEED_TARGET * ref.accuracy
    curves = {("BatchNorm", s): _select(history, norm="bn", seed=s) for s in seeds}
    curves.update({("RobustNorm", s): _select(history, seed=s, **rn_sel) for s in seeds})
    gaps = [f"{who} seed {s}" for (who, s), h in curves.items()
            if h.empty or pd.to_numeric(h["test_acc"], errors="coerce").isna().any()]
    if gaps:
        return {name: stats.Verdict(INCONCLUSIVE, None, "test accuracy is missing at some epoch of: "
                                    + ", ".join(gaps))}
    eb = [epochs_to(curves["BatchNorm", s], target) for s in seeds]
    er = [epochs_to(curves["RobustNorm", s], target) for s in seeds]
    if any(math.isinf(v) for v in eb):
        return {name: stats.Verdict(INCONCLUSIVE, None, f"BatchNorm never reached {100 * target:.1f} % test "
                                                        f"accuracy in some seed")}
    if any(math.isinf(v) for v in er):
        return {name: stats.Verdict(NOT, None, f"RobustNorm never reached {100 * target:.1f} % test accuracy in "
                                               f"some seed (BatchNorm did)")}
    effect = stats.paired_seeds(er, eb, unit="epochs")
    v = checked(effect, margin=SPEED_MARGIN, checks={})
    if v.verdict == INCONCLUSIVE and effect.high < 0:  # slower for sure; by more than the margin, undecided
        v = stats.Verdict(INCONCLUSIVE, effect, f"RobustNorm is slower (the CI excludes 0), but whether by more "
                                                f"than the {-SPEED_MARGIN:g}-epoch margin the data cannot tell")
    elif v.verdict == INCONCLUSIVE and effect.low > 0:
        v = stats.Verdict(INCONCLUSIVE, effect, "RobustNorm is faster (the CI excludes 0); " + v.reason)
    return {f"{name}: epochs to {100 * target:.1f} % test accuracy ({SPEED_TARGET:.0%} of {100 * ref.accuracy:.2f} %), "
            f"BatchNorm minus RobustNorm": v}


# --- C4, C5 (per setting: rnorm.experiments.per_setting) ---------------------------------------------

def verdict_c4(r: Results) -> Row:
    """C4 on both readings, in one row: the primary reading's verdict (inconclusive where it is not run),
    the secondary's beside it, each against AdvProp under the same rule (:data:`RULES`)."""
    rows = {lab: compare_recipes(r, rec, "advprop", robust=True, claim_settings=C4_CLAIMED) for rec, lab in C4_READINGS}
    (p_lab, primary), (s_lab, secondary) = rows.items()
    if primary.verdict == NOT_RUN and secondary.verdict == NOT_RUN:
        return Row(NOT_RUN)
    verdict, why = primary.verdict, primary.checks
    if verdict == NOT_RUN:
        verdict, why = INCONCLUSIVE, "the primary reading, AdvProp+EBN, is not trained in this build"
    effect = " || ".join(f"{lab}: {row.verdict}" + (f"; {row.effect}" if row.effect not in ("", "—") else "")
                         for lab, row in rows.items())
    checks = "; ".join(t for t in (f"{p_lab}: {why}" if why else "",
                                   f"{s_lab}: {secondary.verdict}" + (f", {secondary.checks}" if secondary.checks else ""))
                       if t)
    parts = {f"{lab}, {name}": v for lab, row in rows.items() for name, v in row.parts.items()}
    held = tuple(dict.fromkeys(primary.held + secondary.held))
    key = next((f"{lab}: {row.key}" for lab, row in rows.items() if row.key), "")
    return Row(verdict, effect, parts, checks, held, key)


def verdict_c5(r: Results) -> Row:
    return compare_recipes(r, "advprop", "standard", robust=False)


VERDICTS = {"C1": verdict_c1, "C2": verdict_c2, "C3": verdict_c3, "C4": verdict_c4, "C5": verdict_c5}


def findings(claim: str, notebook: str, frames: dict) -> str:
    """A claim's verdict on one study's frames, as markdown: the verdict, each part's effect with its
    95 % CI and, where undecided, why -- the ledger's own rule, so the chapter and the ledger agree."""
    v = VERDICTS[claim](Results.of(notebook, frames))
    late = [p.name for p in SPECS[claim].parts if "after the data were read" in p.note]
    lines = [f"**{claim}: {v.verdict}** under the ledger's rule (fixed before the run"
             + (f", except its part '{late[0]}', chosen after its data were read, on a reviewer's request" if late
                else "") + ")."]
    for name, part in v.parts.items():
        effect = f"{part.effect.text()} — " if part.effect is not None else ""
        lines.append(f"- *{name}*: {effect}**{part.verdict}**" + (f" ({part.reason})" if part.reason else ""))
    refuted = [name for name, part in v.parts.items() if part.verdict == NOT]
    lines.append("\n**Refuted parts:** " + ("; ".join(refuted) if refuted else "none") + ".")
    if v.checks:
        lines.append(f"\n{v.checks}")
    if v.held:
        lines.append("\nPreconditions met: " + "; ".join(v.held) + ".")
    lines.append(f"\n*The rule:* {RULES[claim]} The shared preconditions: "
                 f"{claims.shared_preconditions_text()}")
    return "\n".join(lines)
