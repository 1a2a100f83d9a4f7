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
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from ..attacks import format_eps
from ..results import read_csv_exact
from . import protocol
from .protocol import ATTACK_FLOOR, JUDGED_EPS, MAX_CI_WIDTH, MIN_ATTACK_STEPS, _select

REPRODUCED, PARTLY, NOT, INCONCLUSIVE, NOT_RUN = (stats.REPRODUCED, stats.PARTLY, stats.NOT, stats.INCONCLUSIVE,
                                                  stats.NOT_RUN)

# --- margins, fixed before the run -------------------------------------------------------------
SHIFT_MARGIN = 1.5          # C1: adversarial shift at least 1.5x that of sign noise of the same ε
REPAIR_MARGIN = 0.5         # C1: batch statistics of the adversarial batch give back at least half of what PGD took
REPAIR_MIN_DROP = 0.10      # C1: ... measured only where PGD takes at least 10 points
NONORM_MARGIN = -0.05       # C2: batch-statistics BN within 5 points of the no-norm model (or above)
CLEAN_MARGIN = -0.02        # C2, C3: clean accuracy within 2 points
ROBUST_MARGIN = 0.0         # C3, C4: robust accuracy higher (CI above 0)
HEADLINE_P = 0.2            # C3: RobustNorm's default power in the reference code (run.sh also uses 1.0)
SPEED_TARGET = 0.90         # C3: training speed = epochs to reach 90 % of the reference accuracy (test_acc)
SPEED_MARGIN = -2.0         # C3: RobustNorm needs at most 2 epochs more than BatchNorm

CLAIMS = {
    "C1": "Adversarial images shift the distribution of BatchNorm inputs, so the population statistics "
          "estimated in training are inaccurate for them.",
    "C2": "Evaluating BatchNorm with the statistics of the inference batch (stats swap) makes its adversarial "
          "vulnerability disappear: about as robust as a network without BN, at about the same clean accuracy.",
    "C3": "RobustNorm is more robust than BatchNorm under attack while keeping BatchNorm's clean accuracy "
          "and training speed.",
    "C4": "An auxiliary BatchNorm for easy examples (EBN) improves both clean and robust accuracy over AdvProp "
          "in most settings of dataset x architecture.",
    "C5": "AdvProp (adversarial examples through an auxiliary BN) improves clean accuracy over standard training.",
}

#: The settings C4 claims (PAPERS.md, C4): their count is the denominator of "most settings".
C4_CLAIMED = (4, "FashionMNIST, CIFAR-10 x ResNet-18, ResNet-50")

_J = format_eps(JUDGED_EPS)
_COMMON = (f"Preconditions for every part: the claim's reference models (BatchNorm for C1-C3, standard training "
           f"for C4-C5) reached their convergence floor ({protocol.FLOOR_FRACTION:.0%} of a published accuracy, or a "
           f"floor fixed before the runs; named in the row), so the schedule trains the network; a compared "
           f"method's model below the floor is named, and its clean-accuracy part measures the shortfall; robust "
           f"rows come from PGD with ≥ {MIN_ATTACK_STEPS} steps and random start (or APGD), not everything compared is at the attack's "
           f"floor (≤ {100 * ATTACK_FLOOR:.0f} %), and a CI on accuracy is at most {100 * MAX_CI_WIDTH:.0f} points "
           f"wide; otherwise the part is inconclusive. Parts combine as: the core parts (the effect the claim is "
           f"about) decide first: any core part refuted: not reproduced; all hold: reproduced if every side part "
           f"(what the claim says comes along, such as the clean accuracy) holds too, partly otherwise; some "
           f"hold and none is refuted: partly; none holds: inconclusive.")
RULES = {
    "C1": (f"On BN models trained normally, at ε = {_J}, paired over the probe images (bootstrap, all seeds): "
           f"(1, 2) the distance of the PGD batch's per-channel mean and variance from the PreciseBN population "
           f"statistics is at least {SHIFT_MARGIN}× that of random sign noise of the same ε (CI above "
           f"{SHIFT_MARGIN}×; below it: not reproduced); (3) repair: scoring the PGD images (crafted with population "
           f"statistics) with the statistics of their own batch gives back at least {REPAIR_MARGIN:.0%} of what PGD "
           f"took, where PGD takes at least {100 * REPAIR_MIN_DROP:.0f} points. " + _COMMON),
    "C2": (f"Judged at ε = {_J}, inference batch 128, white-box PGD (through the batch's statistics; with APGD-CE "
           f"where run, per image the worse of the two). Precondition: BN with population statistics is clearly "
           f"more vulnerable than the no-norm model (paired over seeds, CI above 0). Parts: (1) BN with batch "
           f"statistics is within {-100 * NONORM_MARGIN:.0f} points of the no-norm model or above (paired over "
           f"seeds, CI above {100 * NONORM_MARGIN:+.0f}); (2) its clean accuracy is within "
           f"{-100 * CLEAN_MARGIN:.0f} points of population statistics (paired over images). " + _COMMON),
    "C3": (f"RobustNorm p = {HEADLINE_P:g} (the reference default, population statistics = RNT) against BatchNorm, "
           f"paired over seeds: (1) robust accuracy at ε = {_J} (per image the worse of PGD-{MIN_ATTACK_STEPS} and APGD-CE "
           f"where run) higher (CI above 0); (2) clean accuracy on the full "
           f"test set within {-100 * CLEAN_MARGIN:.0f} points (CI above {100 * CLEAN_MARGIN:+.0f}); (3) training "
           f"speed: epochs to reach {SPEED_TARGET:.0%} of the reference accuracy at most {-SPEED_MARGIN:.0f} more "
           f"than BatchNorm's (CI above {SPEED_MARGIN:+.0f}). " + _COMMON),
    "C4": ("Two readings of EBN, both against AdvProp (chapter 4, 'Which EBN C4 is judged on', fixed before "
           "the primary reading's runs were read). Primary, whose verdict is the claim's: AdvProp+EBN (AdvProp with "
           "an easy branch added); secondary, printed beside it: two-branch EBN (clean and easy examples, no "
           "adversarial ones). For each, per setting (dataset x architecture), the recipe minus AdvProp through "
           "the main branch, paired over seeds: clean accuracy on the full test set, and robust accuracy (per "
           "image the worse of PGD-20 and APGD-CE where run) at the recipes' training ε and at a standard ε ("
           f"{', '.join(f'{k}: {format_eps(e)}' for k, e in protocol.EBN_STANDARD_EPS.items())}); a setting "
           "is a win when every CI lies above 0, refuted when any lies below 0 (the claim is that EBN improves "
           "both), partly when some lie above and none below. Over the "
           f"{C4_CLAIMED[0]} settings the claim covers ({C4_CLAIMED[1]}), a setting not run counts as not tested: "
           "reproduced if more than half of them are wins, not reproduced if more than half are refuted, partly "
           "if some are wins or partly and none is refuted, inconclusive otherwise. If the primary reading is "
           "not run, the claim is inconclusive. " + _COMMON),
    "C5": ("Per setting, AdvProp minus standard training, clean accuracy on the full test set, paired over "
           "seeds (CI above 0 = a win); combined over settings as C4. " + _COMMON),
}


# --- reading results -----------------------------------------------------------------------------

class Results:
    """The frames under a results root: ``frame(notebook, name)`` reads ``<root>/<notebook>/<name>.csv``
    exactly (None when absent). ``Results.of(notebook, frames)`` wraps one study's frames in memory,
    so a notebook can state its own verdict with the ledger's rule before anything is written."""

    def __init__(self, root=None, skip=()):
        self.root = None if root is None else Path(root)
        self._cache = {}
        self.skip = frozenset(skip)

    @classmethod
    def of(cls, notebook: str, frames: dict) -> "Results":
        r = cls(None)
        r._cache.update({(notebook, k): v for k, v in frames.items()})
        return r

    def frame(self, notebook: str, name: str) -> pd.DataFrame | None:
        key = (notebook, name)
        if notebook in self.skip or (key not in self._cache and self.root is None):
            return None
        if key not in self._cache:
            f = self.root / notebook / f"{name}.csv"
            self._cache[key] = read_csv_exact(f, keep_default_na=False, na_values=[""]) if f.is_file() else None
        return self._cache[key]


@dataclasses.dataclass
class Row:
    """A ledger row before formatting: the verdict, the effect text, its parts and the checks made."""

    verdict: str
    effect: str = "—"
    parts: dict = dataclasses.field(default_factory=dict)
    checks: str = ""
    held: tuple = ()  # the preconditions that were checked and hold (each a sentence naming its threshold)


def per_image(rows: pd.DataFrame, seeds) -> np.ndarray | None:
    """Per-image correctness (models x images) of one row per seed, the images each row scored.

    Several rows for one seed (e.g. PGD and APGD) are combined per image as the worst case: correct
    only if correct under every attack, on the images every row scored (a row over the first
    ``apgd_n`` images of the test subset restricts the comparison to those). None if a seed has no
    row or the rows lack per-image bits.
    """
    from ..evaluate import unpack_bits

    def bits(text: str, n: int) -> np.ndarray:  # padded with False (not scored) to n
        own = len(bytes.fromhex(text[5:])) * 8  # "bits:" + hex
        return np.pad(unpack_bits(text, own), (0, n - own))

    out = []
    for s in seeds:
        sub = rows[rows["seed"] == s]
        if sub.empty or "correct_bits" not in sub or not all(isinstance(b, str) and b for b in sub["correct_bits"]):
            return None
        n = max(len(bytes.fromhex(b[5:])) * 8 for b in sub["scored_bits"])
        scored = np.logical_and.reduce([bits(b, n) for b in sub["scored_bits"]])
        correct = np.logical_and.reduce([bits(b, n) for b in sub["correct_bits"]])
        out.append((scored, correct))
    n = max(len(sc) for sc, _ in out)
    out = [(np.pad(sc, (0, n - len(sc))), np.pad(c, (0, n - len(c)))) for sc, c in out]
    common = np.logical_and.reduce([sc for sc, _ in out])
    return np.stack([c[common] for _, c in out])


def worst_case(rows: pd.DataFrame, seeds) -> list[float] | None:
    """Robust accuracy per seed under the worse of the rows' attacks *per image* (an image counts only if
    it survives every attack), on the images they all scored; the minimum of the rows' accuracies where
    the rows carry no per-image bits (results of an older layout). None if a seed has no row."""
    m = per_image(rows, seeds)
    if m is None:
        return seed_values(rows, seeds)
    return [float(v) for v in m.mean(axis=1)]


def seed_values(frame: pd.DataFrame, seeds, value: str = "accuracy") -> list[float] | None:
    """One value per seed (the minimum if several rows, i.e. the strongest attack); None if one is missing."""
    out = []
    for s in seeds:
        v = frame.loc[frame["seed"] == s, value]
        if v.empty:
            return None
        out.append(float(v.min()))
    return out


def _checked(effect, *, margin, checks: dict, max_width: float | None = MAX_CI_WIDTH) -> stats.Verdict:
    return stats.judge(effect, margin=margin, preconditions=checks,
                       max_width=max_width if effect is not None and effect.unit == "points" else None)


def _claim(core: dict, side: dict | None = None, checks: dict | None = None) -> Row:
    """Combine a claim's parts into its verdict.

    ``checks`` are the claim's own preconditions (description -> bool): the first that fails makes
    the claim inconclusive whatever its parts say. Then the *core* parts (the effect the claim is
    about; combined with :func:`rnorm.stats.combine`) decide: undecided -> inconclusive, refuted ->
    not reproduced. If the core holds, the *side* parts (what the claim says comes along, e.g.
    "at the same clean accuracy") must all hold for ``reproduced``; otherwise ``partly``, naming
    them. So a null effect is never ``partly``: ``partly`` needs the core effect itself.
    """
    side = side or {}
    parts = {**core, **side}
    effect = "; ".join(f"{k}: {v.effect.text() if v.effect is not None else '—'}"
                       + ("" if v.verdict in (REPRODUCED, NOT) else f" ({v.verdict}: {v.reason})")
                       for k, v in parts.items())
    held = tuple(what for what, ok in (checks or {}).items() if ok)
    for what, ok in (checks or {}).items():
        if not ok:
            return Row(INCONCLUSIVE, effect, parts, f"Precondition fails: {what}.", held)
    c = stats.combine(core)
    if c.verdict in (NOT, INCONCLUSIVE, NOT_RUN):
        return Row(c.verdict, effect, parts, c.reason, held)
    if c.verdict == PARTLY:
        return Row(PARTLY, effect, parts, c.reason, held)
    unmet = [k for k, v in side.items() if v.verdict != REPRODUCED]
    if unmet:
        return Row(PARTLY, effect, parts, "the core effect holds; not shown: " + ", ".join(
            f"{k} ({side[k].verdict})" for k in unmet), held)
    return Row(REPRODUCED, effect, parts, "", held)


def _robust(acc: pd.DataFrame) -> pd.DataFrame:
    """Robust rows that may enter a verdict: PGD and APGD/AutoAttack (not FGSM or noise)."""
    return acc[acc["attack"].isin(("pgd",) + protocol.STRONG_ATTACKS)]


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
        e = _select(effects, eps=float(JUDGED_EPS), attack="pgd", control="noise_sign", reference="precise",
                    statistic=statistic)
        eff = None if e.empty else stats.Effect(float(e["ratio"].iloc[0]), float(e["low"].iloc[0]),
                                                float(e["high"].iloc[0]), int(e["n_images"].iloc[0]),
                                                str(e["paired_over"].iloc[0]), unit="ratio")
        parts[f"shift of the {'mean' if statistic == 'mean' else 'variance'} (PGD / sign noise)"] = _checked(
            eff, margin=SHIFT_MARGIN, checks={strong: strong_ok}, max_width=None)
    clean = per_image(_select(acc[acc["attack"] == "clean"], stats="population"), seeds)
    adv = per_image(_select(pgd, stats="population", gradient="white-box"), seeds)
    fixed = per_image(_select(pgd, stats="batch", gradient="transfer"), seeds)
    if clean is None or adv is None or fixed is None or clean.shape != adv.shape or adv.shape != fixed.shape:
        parts["repair"] = stats.Verdict(NOT_RUN, None, "no per-image results for the repair test")
    else:
        drop = float(clean.mean() - adv.mean())
        eff = stats.recovered_fraction(clean, adv, fixed)
        parts["repair (share of PGD's damage undone by the batch's own statistics)"] = _checked(
            eff, margin=REPAIR_MARGIN, max_width=None, checks={
                strong: strong_ok,
                f"PGD at {_J} takes only {100 * drop:.1f} points, less than the {100 * REPAIR_MIN_DROP:.0f} a "
                f"repair could be measured on": drop >= REPAIR_MIN_DROP})
    shift = {k: v for k, v in parts.items() if k.startswith("shift")}
    side = {k: v for k, v in parts.items() if not k.startswith("shift")}
    return _claim(shift, side, {conv: conv_ok})


# --- C2 ----------------------------------------------------------------------------------------------

def verdict_c2(r: Results) -> Row:
    nb = "02_stats_swap"
    models, sweep = r.frame(nb, "models"), r.frame(nb, "eps_sweep")
    if models is None or sweep is None:
        return Row(NOT_RUN)
    strong = r.frame(nb, "strong")
    acc = pd.concat([sweep, strong], ignore_index=True) if strong is not None else sweep
    acc = acc[acc["batch_size"] == 128] if (acc["batch_size"] == 128).any() else acc
    seeds = sorted(set(models.loc[models["norm"] == "bn", "seed"]) & set(models.loc[models["norm"] == "none", "seed"]))
    if not seeds:
        return Row(NOT_RUN, "—", checks="no seed has both a BN and a no-norm model")
    conv_ok, conv = protocol.convergence(models, norm="bn")
    rob = _robust(_select(acc, eps=float(JUDGED_EPS)))
    strong_ok, strength = protocol.attack_strength(rob)
    bn, none = rob[rob["norm"] == "bn"], rob[rob["norm"] == "none"]
    pop = worst_case(_select(bn, stats="population", gradient="white-box"), seeds)
    wb = worst_case(_select(bn, stats="batch", gradient="white-box"), seeds)
    nn_ = worst_case(none, seeds)
    if pop is None or wb is None or nn_ is None:
        return Row(NOT_RUN, checks=f"no PGD rows at ε = {_J}")
    pre = stats.paired_seeds(pop, nn_)
    pre_ok = not math.isnan(pre.low) and pre.low > 0
    floor_ok, floor = protocol.not_at_floor(*pop, *wb, *nn_)
    vulnerable = (f"BN with population statistics is clearly more vulnerable than the no-norm model at {_J} "
                  f"(no-norm minus BN: {pre.text()})")
    checks = {conv: conv_ok, strength: strong_ok, floor: floor_ok, vulnerable: pre_ok}
    core = {"batch-statistics BN minus no-norm, white-box": _checked(stats.paired_seeds(nn_, wb),
                                                                     margin=NONORM_MARGIN, checks={})}
    clean = sweep[(sweep["attack"] == "clean") & (sweep["norm"] == "bn")]
    cp = per_image(_select(clean, stats="population"), seeds)
    cb = per_image(_select(clean, stats="batch"), seeds)
    side = {"clean accuracy, batch minus population statistics": stats.Verdict(NOT_RUN, None, "no per-image rows")
            if cp is None or cb is None else _checked(stats.paired_images(cp, cb), margin=CLEAN_MARGIN, checks={})}
    row = _claim(core, side, checks)
    gain = per_image(_select(bn, stats="population", gradient="white-box"), seeds), \
        per_image(_select(bn, stats="batch", gradient="white-box"), seeds)
    if gain[0] is not None and gain[1] is not None and gain[0].shape == gain[1].shape:
        row.effect += (f"; for reference, batch minus population statistics under white-box attack: "
                       f"{stats.paired_images(*gain).text()}")
    return row


# --- C3 ----------------------------------------------------------------------------------------------

def epochs_to(history: pd.DataFrame, target: float) -> float:
    """The first epoch (``history``'s epochs count from 1) at which ``test_acc`` reaches ``target``;
    inf if never."""
    hit = history[history["test_acc"] >= target]
    return float(hit["epoch"].min()) if len(hit) else math.inf


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
    rob = _robust(_select(acc, eps=float(JUDGED_EPS), stats="population"))
    strong_ok, strength = protocol.attack_strength(rob)
    bn, rn = worst_case(_select(rob, norm="bn"), seeds), worst_case(_select(rob, **rn_sel), seeds)
    checks = {t_bn: ok_bn, strength: strong_ok}
    core, side = {}, {}
    robust_name = (f"robust accuracy at {_J} (per image the worse of PGD-{MIN_ATTACK_STEPS} and APGD-CE where run), "
                   f"RobustNorm minus BatchNorm")
    if bn is None or rn is None:
        core[robust_name] = stats.Verdict(NOT_RUN, None, f"no PGD rows at {_J}")
    else:
        floor_ok, floor = protocol.not_at_floor(*bn, *rn)
        core[robust_name] = _checked(stats.paired_seeds(bn, rn), margin=ROBUST_MARGIN, checks={floor: floor_ok})
    clean_name = "clean accuracy (full test set), RobustNorm minus BatchNorm"
    cb = seed_values(_select(models, norm="bn"), seeds, "clean_full")
    cr = seed_values(_select(models, **rn_sel), seeds, "clean_full")
    if cb is None or cr is None or any(math.isnan(v) for v in cb + cr):
        side[clean_name] = stats.Verdict(INCONCLUSIVE, None, "a model has no full-test-set clean accuracy")
    else:
        side[clean_name] = _checked(stats.paired_seeds(cb, cr), margin=CLEAN_MARGIN, checks={})
    side.update(_speed(models, history, seeds, rn_sel))
    row = _claim(core, side, checks)
    ok_rn, t_rn = protocol.convergence(models, **rn_sel)
    if not ok_rn:
        row.effect += (f"; RobustNorm p = {HEADLINE_P:g}, trained for the same epochs and schedule at its swept "
                       f"learning rate, stays {t_rn}")
    return row


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
    return {f"epochs to {100 * target:.1f} % test accuracy, BatchNorm minus RobustNorm": _checked(
        stats.paired_seeds(er, eb, unit="epochs"), margin=SPEED_MARGIN, checks={})}


# --- C4, C5 ------------------------------------------------------------------------------------------

def _most(settings: dict[str, stats.Verdict], claimed: int | None = None) -> stats.Verdict:
    """Over settings: reproduced if more than half hold, not reproduced if more than half are refuted,
    partly if some hold or partly hold and none is refuted, inconclusive otherwise. "Half" is of the
    ``claimed`` settings where given (a setting not run counts as not tested), else of those judged."""
    v = [x.verdict for x in settings.values()]
    if not v:
        return stats.Verdict(NOT_RUN, None, "no setting")
    total = max(len(v), claimed or 0)
    held, partly, refuted = v.count(REPRODUCED), v.count(PARTLY), v.count(NOT)
    undecided = len(v) - held - partly - refuted
    untested = f", {total - len(v)} not tested" if total > len(v) else ""
    counts = (f"{held} of {total} settings hold, {partly} partly, {refuted} refuted"
              f"{f', {undecided} inconclusive' if undecided else ''}{untested}")
    if held > total / 2:
        return stats.Verdict(REPRODUCED, None, counts if untested else "")
    if refuted > total / 2:
        return stats.Verdict(NOT, None, counts if untested else "")
    if (held or partly) and not refuted:
        return stats.Verdict(PARTLY, None, counts)
    return stats.Verdict(INCONCLUSIVE, None, counts + (": too few settings tested to say whether the claim holds in "
                                                       "most" if untested and refuted else ""))


def _recipes(r: Results, new: str, old: str, robust: bool, claim_settings: tuple[int, str] | None = None) -> Row:
    """``new`` minus ``old`` per (dataset, arch) setting of chapter 04, paired over seeds, each setting a
    :func:`_claim` (clean, and with ``robust`` the worst case of PGD and APGD at each judged ε) gated by
    standard training's floor; combined over settings by :func:`_most`. The reason says how many
    settings were judged, and of how many the paper's claim covers (``claim_settings``: count, text)."""
    nb = "04_easy_batchnorm"
    models, acc = r.frame(nb, "models"), r.frame(nb, "accuracy")
    if acc is None:
        return Row(NOT_RUN)
    if "share" in acc:
        acc = acc[acc["share"].isin(("none", ""))]
    if models is not None and "share" in models:  # the sharing ablation's EBN models are not the recipes compared
        models = models[models["share"].isin(("none", ""))]
    settings, texts, held = {}, [], []
    from ..plots import label
    for (dataset, arch), sub in acc.groupby(["dataset", "arch"], sort=False):
        name = f"{label(dataset)} / {arch}"
        main = sub[sub["branch"] == "main"]
        seeds = sorted(set(main.loc[main["recipe"] == new, "seed"]) & set(main.loc[main["recipe"] == old, "seed"]))
        if not seeds:
            continue
        below = ""
        conv_ok, conv = protocol.standard_floor(models, dataset, arch)
        if models is not None and "clean_full" in models:  # clean accuracy on the full test set, per model
            m = _select(models, dataset=dataset, arch=arch)
            compared = m[m["recipe"].isin((new, old)) & (m["recipe"] != "standard")]
            ok_c, t_c = protocol.convergence(compared) if len(compared) else (True, "")
            below = "" if ok_c else f"; trained by standard training's schedule, {t_c.replace('below', 'stay below')}"

            def clean_by(rec):
                return seed_values(_select(m, recipe=rec), seeds, "clean_full")
        else:  # no models frame: the clean rows of the evaluated subset
            def clean_by(rec):
                return seed_values(_select(main, attack="clean", recipe=rec), seeds)
        parts, checks = {}, {conv: conv_ok}
        ca, cb = clean_by(old), clean_by(new)
        parts["clean"] = (stats.Verdict(NOT_RUN, None, "a model has no clean accuracy recorded") if ca is None
                          or cb is None else _checked(stats.paired_seeds(ca, cb), margin=0.0, checks={}))
        if robust:
            rob = _robust(main)
            ok, strength = protocol.attack_strength(rob)
            checks[strength] = ok
            for eps in judged_ebn_eps(models, dataset, arch):
                at_eps = _select(rob, eps=float(eps))
                a, b = worst_case(_select(at_eps, recipe=old), seeds), worst_case(_select(at_eps, recipe=new), seeds)
                if a is None or b is None:
                    parts[f"robust {format_eps(eps)}"] = stats.Verdict(NOT_RUN, None,
                                                                       f"no robust rows at {format_eps(eps)}")
                    continue
                f_ok, floor = protocol.not_at_floor(*a, *b)
                parts[f"robust {format_eps(eps)}"] = _checked(stats.paired_seeds(a, b), margin=ROBUST_MARGIN,
                                                              checks={floor: f_ok})
        row = _claim(parts, {}, checks)
        row.effect += below
        held += [h for h in row.held if h not in held]
        settings[name] = stats.Verdict(row.verdict, None, "; ".join(t for t in (row.effect, row.checks) if t))
        texts.append(f"{name}, {label(new)} minus {label(old)} ({row.verdict}"
                     f"{': ' + row.checks if row.checks else ''}): {row.effect}")
    if not settings:
        return Row(NOT_RUN)
    overall = _most(settings, claim_settings[0] if claim_settings else None)
    scope = f"judged in {len(settings)} setting{'s' if len(settings) > 1 else ''} ({', '.join(settings)})"
    if claim_settings:
        scope += f" of the {claim_settings[0]} the claim covers ({claim_settings[1]})"
    return Row(overall.verdict, " | ".join(texts), settings, "; ".join(t for t in (overall.reason, scope) if t),
               tuple(held))


def judged_ebn_eps(models: pd.DataFrame | None, dataset: str, arch: str) -> list[float]:
    """The ε at which C4 is judged in a setting: the training ε of its AdvProp/EBN models (from the
    models frame) and the dataset's standard ε (:data:`protocol.EBN_STANDARD_EPS`)."""
    out = []
    if models is not None and "train_eps" in models:
        m = _select(models, dataset=dataset, arch=arch)
        out += sorted(set(m.loc[m["recipe"].isin(("advprop", "ebn", "advprop_ebn")), "train_eps"].astype(float)))
    std = protocol.EBN_STANDARD_EPS.get(dataset)
    return out + ([std] if std is not None and all(abs(std - e) > 1e-9 for e in out) else [])


#: C4's readings (chapter 4, "Which EBN C4 is judged on"): (recipe, label); the first is primary.
C4_READINGS = (("advprop_ebn", "AdvProp+EBN (primary reading)"), ("ebn", "two-branch EBN (secondary reading)"))


def verdict_c4(r: Results) -> Row:
    """C4 on both readings, in one row: the primary reading's verdict (inconclusive where it is not run),
    the secondary's beside it, each against AdvProp under the same rule (:data:`RULES`)."""
    rows = {lab: _recipes(r, rec, "advprop", robust=True, claim_settings=C4_CLAIMED) for rec, lab in C4_READINGS}
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
    return Row(verdict, effect, parts, checks, held)


def verdict_c5(r: Results) -> Row:
    return _recipes(r, "advprop", "standard", robust=False)


SOURCES = {"C1": "01_distribution_shift", "C2": "02_stats_swap", "C3": "03_robustnorm",
           "C4": "04_easy_batchnorm", "C5": "04_easy_batchnorm"}
VERDICTS = {"C1": verdict_c1, "C2": verdict_c2, "C3": verdict_c3, "C4": verdict_c4, "C5": verdict_c5}


def findings(claim: str, notebook: str, frames: dict) -> str:
    """A claim's verdict on one study's frames, as markdown: the verdict, each part's effect with its
    95 % CI and, where undecided, why -- the ledger's own rule, so the chapter and the ledger agree."""
    v = VERDICTS[claim](Results.of(notebook, frames))
    lines = [f"**{claim}: {v.verdict}** under the ledger's rule (fixed before the run)."]
    for name, part in v.parts.items():
        effect = f"{part.effect.text()} — " if part.effect is not None else ""
        lines.append(f"- *{name}*: {effect}**{part.verdict}**" + (f" ({part.reason})" if part.reason else ""))
    if v.checks:
        lines.append(f"\n{v.checks}")
    if v.held:
        lines.append("\nPreconditions met: " + "; ".join(v.held) + ".")
    lines.append(f"\n*The rule:* {RULES[claim]}")
    return "\n".join(lines)
