"""The claims as data: each claim's statement, parts, margins, preconditions and combination rule.

One spec per claim (:data:`SPECS`), from which both the verdict (:mod:`rnorm.experiments.verdicts`
reads every margin and part name from here) and the rule printed beside it (:meth:`Claim.rule`)
are generated, so the two cannot drift apart. The combination of a claim's parts is one table
(:data:`COMBINATION`), read by :func:`combine_parts` and printed by :func:`combination_text`; the
combination over settings of C4/C5 likewise (:data:`OVER_SETTINGS`, :func:`over_settings`). The
preconditions every claim shares are printed once (:data:`SHARED_PRECONDITIONS`), and each rule
points to them.

The margins were fixed before the runs they judge, except where a part says otherwise: C2's core
part was changed on a reviewer's request after its data had been read (issue "verdicts, round 3";
the part's text says so, and the chapter prints the verdict under the earlier rule beside it).
"""
from __future__ import annotations

import dataclasses

from .. import stats
from ..attacks import format_eps
from ..labels import LABELS
from . import protocol

REPRODUCED, PARTLY, NOT, INCONCLUSIVE, NOT_RUN = (stats.REPRODUCED, stats.PARTLY, stats.NOT, stats.INCONCLUSIVE,
                                                  stats.NOT_RUN)

# --- margins: each is read by the verdict and printed in its rule from here alone ------------------------
SHIFT_MARGIN = 1.5          # C1: adversarial shift at least 1.5x that of sign noise of the same ε
REPAIR_MARGIN = 0.5         # C1: batch statistics of the adversarial batch give back at least half of what PGD took
REPAIR_MIN_DROP = 0.10      # C1: ... measured only where PGD takes at least 10 points
SWAP_MARGIN = 0.0           # C2: batch statistics raise robust accuracy over population statistics (CI above 0)
NONORM_MARGIN = -0.05       # C2: batch-statistics BN within 5 points of the no-norm model (or above)
CLEAN_MARGIN = -0.02        # C2, C3: clean accuracy within 2 points
ROBUST_MARGIN = 0.0         # C3, C4: robust accuracy higher (CI above 0)
HEADLINE_P = 0.2            # C3: RobustNorm's default power in the reference code (run.sh also uses 1.0)
SPEED_TARGET = 0.90         # C3: training speed = epochs to reach 90 % of the reference accuracy (test_acc)
SPEED_MARGIN = -2.0         # C3: RobustNorm needs at most 2 epochs more than BatchNorm
#: C1's sensitivity analysis (not the verdict): the margins and ε it is recomputed at.
SENSITIVITY_MARGINS = (1.0, 1.25, 1.5)
SENSITIVITY_EPS = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255)
#: C3's clean-accuracy margins of the sensitivity analysis (the verdict uses CLEAN_MARGIN).
CLEAN_SENSITIVITY = (-0.01, -0.02)
#: The settings C4 claims (PAPERS.md, C4): their count is the denominator of "most settings".
C4_CLAIMED = (4, "FashionMNIST, CIFAR-10 x ResNet-18, ResNet-50")
#: C4's readings (chapter 4, "Which EBN C4 is judged on"): (recipe, label); the first is primary.
C4_READINGS = (("advprop_ebn", "AdvProp+EBN (primary reading)"), ("ebn", "two-branch EBN (secondary reading)"))

CORE, SIDE = "core", "side"


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of a claim: a measured effect with its 95 % CI, held against ``margin``.

    ``name`` is how the part is called in the verdict rows; ``measures`` says what is compared and
    how it is paired; ``role`` is ``core`` (the effect the claim is about) or ``side`` (what the
    claim says comes along). ``unit`` is the :class:`rnorm.stats.Effect` unit the margin is in; ``short`` is
    the part's name on the front page (default: ``name``). A verdict row names the part ``name``, or ``name``
    followed by what it measured there (:meth:`Claim.part_of`)."""

    name: str
    role: str
    measures: str
    margin: float
    unit: str = "points"
    note: str = ""
    short: str = ""

    def threshold(self) -> str:
        """The margin as the rule prints it, e.g. "CI above 1.5×" or "CI above -5 points"."""
        if self.unit == "points" and self.margin == 0:
            return "CI above 0"
        spec = {"ratio": "g", "epochs": "g", "points": ".0f"}.get(self.unit)
        return f"CI above {stats.in_unit(self.margin, self.unit, signed=self.unit in ('points', 'epochs'), spec=spec)}"

    def text(self) -> str:
        return f"{self.name}: {self.measures} ({self.threshold()}){' ' + self.note if self.note else ''}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim: its statement, the chapter that tests it, where it is judged, its own preconditions
    (beyond :data:`SHARED_PRECONDITIONS`), its parts, and for claims over several settings the
    combination over them (:data:`OVER_SETTINGS`). ``caveat`` is the one line the front page prints
    beside the verdict (coverage and reading), before the build's own coverage is added."""

    id: str
    statement: str
    source: str
    judged_at: str
    parts: tuple
    preconditions: tuple = ()
    over_settings: bool = False
    caveat: str = ""

    def part_of(self, row_name: str) -> Part | None:
        """The part a verdict row's part named ``row_name`` is: the one whose name starts it (None: none)."""
        found = [p for p in self.parts if row_name.startswith(p.name)]
        return max(found, key=lambda p: len(p.name)) if found else None

    def part(self, key: str) -> Part:
        """The part whose name starts with ``key``."""
        found = [p for p in self.parts if p.name.startswith(key)]
        if len(found) != 1:
            raise KeyError(f"{self.id} has no single part named {key!r}; its parts: {[p.name for p in self.parts]}")
        return found[0]

    def rule(self) -> str:
        """The rule printed beside the verdict, generated from this spec."""
        core = [p for p in self.parts if p.role == CORE]
        side = [p for p in self.parts if p.role == SIDE]
        text = f"{self.judged_at} Core part{'s' if len(core) > 1 else ''}: " + "; ".join(
            f"({i}) {p.text()}" for i, p in enumerate(core, 1)) + "."
        if side:
            text += " Side parts: " + "; ".join(f"({i}) {p.text()}" for i, p in enumerate(side, len(core) + 1)) + "."
        if self.preconditions:
            text += " Preconditions of this claim: " + "; ".join(self.preconditions) + "."
        text += " " + combination_text()
        if self.over_settings:
            text += " " + over_settings_text()
        return text + " The shared preconditions apply (see 'Preconditions of every claim')."


_J = format_eps(protocol.JUDGED_EPS)
_WORST = f"per image the worse of PGD-{protocol.MIN_ATTACK_STEPS} and APGD-CE where run"
_HIER = "hierarchical bootstrap over seeds and images"
_TRAININGS = ("paired over seeds: the wider of the Student-t CI over seeds and the hierarchical bootstrap over "
              "seeds and images where per-image results exist")

SHARED_PRECONDITIONS = (
    f"the claim's reference models (BatchNorm for C1-C3, standard training for C4-C5) reach their convergence "
    f"floor ({protocol.FLOOR_FRACTION:.0%} of a published accuracy, or a floor fixed before the runs; each row "
    f"names its floor and source), so the schedule trains the network; a compared method's model below the floor "
    f"is named, and its clean-accuracy part measures the shortfall",
    f"robust rows come from PGD with at least {protocol.MIN_ATTACK_STEPS} steps and a random start, or APGD",
    f"not everything compared is at the attack's floor (at most {100 * protocol.ATTACK_FLOOR:.0f} %)",
    f"a CI on an accuracy difference is at most {100 * protocol.MAX_CI_WIDTH:.0f} points wide",
)

#: How a claim's parts combine, in order: ``(case, applies, verdict)``, and the first case whose ``applies``
#: (of the core and the side parts' verdicts) is true gives the verdict. The rule text prints the cases, so the
#: words and the test are one entry. A failed precondition (the claim's own or a shared one) makes the claim
#: inconclusive before this table.
COMBINATION = (
    ("no core part was measured", lambda c, s: not c, NOT_RUN),
    ("a core part is refuted", lambda c, s: NOT in c, NOT),
    ("no core part holds and none is refuted", lambda c, s: REPRODUCED not in c, INCONCLUSIVE),
    ("some core parts hold, none is refuted, some are undecided", lambda c, s: any(v != REPRODUCED for v in c),
     PARTLY),
    ("every core part holds and every side part holds", lambda c, s: all(v == REPRODUCED for v in s), REPRODUCED),
    ("every core part holds and some side part does not (refuted or undecided)", lambda c, s: True, PARTLY),
)


def combine_parts(core: dict, side: dict) -> tuple[str, str]:
    """``(verdict, case)``: the verdict :data:`COMBINATION` gives to the parts' verdicts (dicts of
    name -> :class:`rnorm.stats.Verdict`), and the case that applied."""
    c = [v.verdict for v in core.values()]
    s = [v.verdict for v in side.values()]
    case, _, verdict = next(entry for entry in COMBINATION if entry[1](c, s))
    return verdict, case


def combination_text() -> str:
    """:data:`COMBINATION` in words."""
    return ("Parts combine as (the first case that applies): " + "; ".join(f"{case}: {v}" for case, _, v in COMBINATION)
            + "; a failed precondition makes the claim inconclusive before any part counts.")


#: How C4/C5 combine their settings, in order: ``(case, applies, verdict)``, ``applies`` of the counts of wins,
#: partly and refuted settings and the number of settings (of those the claim covers where that is known, a
#: setting not run counting as not tested); the first case that applies gives the verdict.
OVER_SETTINGS = (
    ("more than half of the settings are wins", lambda held, partly, refuted, total: held > total / 2, REPRODUCED),
    ("more than half are refuted", lambda held, partly, refuted, total: refuted > total / 2, NOT),
    ("some are wins or partly and none is refuted",
     lambda held, partly, refuted, total: bool(held or partly) and not refuted, PARTLY),
    ("otherwise", lambda held, partly, refuted, total: True, INCONCLUSIVE),
)


def over_settings(verdicts: list[str], total: int) -> str:
    """The verdict :data:`OVER_SETTINGS` gives to per-setting verdicts, out of ``total`` settings."""
    counts = verdicts.count(REPRODUCED), verdicts.count(PARTLY), verdicts.count(NOT), total
    return next(verdict for _, applies, verdict in OVER_SETTINGS if applies(*counts))


def over_settings_text() -> str:
    return (f"Over the settings (of the {C4_CLAIMED[0]} the claim covers, {C4_CLAIMED[1]}, for C4; a setting not "
            "run counts as not tested), a setting is judged by its parts as above, and: "
            + "; ".join(f"{case}: {v}" for case, _, v in OVER_SETTINGS) + ".")


SPECS = {
    "C1": Claim(
        "C1", "Adversarial images shift the distribution of BatchNorm inputs, so the population statistics "
              "estimated in training are inaccurate for them.", "01_distribution_shift",
        f"On BN models trained normally, at ε = {_J}, on the probe images.",
        (Part("shift of the mean (PGD / sign noise)", CORE,
              "distance of the PGD batch's per-channel mean from the PreciseBN population mean, over that of random "
              f"sign noise of the same L-inf radius, averaged over seeds ({_HIER})", SHIFT_MARGIN, "ratio", short="mean shift"),
         Part("shift of the variance (PGD / sign noise)", CORE,
              f"the same for the per-channel variance ({_HIER})", SHIFT_MARGIN, "ratio", short="variance shift"),
         Part("repair (share of PGD's damage undone by the batch's own statistics)", SIDE,
              "scoring the PGD images (crafted with population statistics) with the statistics of their own batch "
              f"gives back at least {REPAIR_MARGIN:.0%} of what PGD took ({_HIER})", REPAIR_MARGIN, "share", short="repair")),
        preconditions=(f"PGD takes at least {100 * REPAIR_MIN_DROP:.0f} points, for the repair part",),
        caveat="the verdict depends on ε and on the margin (chapter 1's sensitivity analysis)"),
    "C2": Claim(
        "C2", "Evaluating BatchNorm with the statistics of the inference batch (stats swap) makes its adversarial "
              "vulnerability disappear: about as robust as a network without BN, at about the same clean accuracy.",
        "02_stats_swap",
        f"At ε = {_J}, inference batch {protocol.JUDGED_BATCH}, white-box attack through the batch's statistics ({_WORST}).",
        (Part("robust accuracy, batch minus population statistics (same weights)", CORE,
              f"the same BN models scored with batch and with population statistics, each attacked white-box ({_HIER})",
              SWAP_MARGIN, short="robust, batch vs population statistics", note="[made the core part after the data were read, on a reviewer's request; the earlier "
                                "rule's verdict is printed beside it]"),
         Part("batch-statistics BN minus no-norm", SIDE,
              "robust accuracy of BN with batch statistics against the model without normalization, paired over "
              "seeds; counted only where it has power, i.e. where BN with population statistics would fail the same "
              "test (otherwise inconclusive: it could not tell a removed vulnerability from an unchanged one)",
              NONORM_MARGIN, short="vs no-norm"),
         Part("clean accuracy, batch minus population statistics", SIDE,
              f"the same weights, paired over images ({_HIER})", CLEAN_MARGIN, short="clean")),
        preconditions=("BN with population statistics is clearly more vulnerable than the no-norm model (paired over "
                       "seeds, CI above 0)",),
        caveat="core part chosen after the data were read, on a reviewer's request (the ledger gives the earlier "
               "rule's verdict)"),
    "C3": Claim(
        "C3", "RobustNorm is more robust than BatchNorm under attack while keeping BatchNorm's clean accuracy "
              "and training speed.", "03_robustnorm",
        f"RobustNorm p = {HEADLINE_P:g} (the reference default, population statistics = RNT) against BatchNorm, "
        f"trained alike.",
        (Part("robust accuracy", CORE, f"at ε = {_J} ({_WORST}), RobustNorm minus BatchNorm, {_TRAININGS}",
              ROBUST_MARGIN, short="robust"),
         Part("clean accuracy", SIDE, "on the full test set, RobustNorm minus BatchNorm, paired over seeds",
              CLEAN_MARGIN, short="clean"),
         Part("training speed", SIDE, f"epochs to reach {SPEED_TARGET:.0%} of the reference accuracy, BatchNorm "
                                      f"minus RobustNorm, paired over seeds", SPEED_MARGIN, "epochs", short="speed")),
        caveat="learning rates from a short sweep on the first seed, for the models chapter 3 names as tuned"),
    "C4": Claim(
        "C4", "An auxiliary BatchNorm for easy examples (EBN) improves both clean and robust accuracy over AdvProp "
              "in most settings of dataset x architecture.", "04_easy_batchnorm",
        "Two readings of EBN, both against AdvProp through the main branch (chapter 4, 'Which EBN C4 is judged "
        "on', fixed before the primary reading's runs were read): primary, whose verdict is the claim's, "
        "AdvProp+EBN (AdvProp with an easy branch added); secondary, printed beside it, two-branch EBN (clean and "
        "easy examples, no adversarial ones). Per setting (dataset x architecture):",
        (Part("clean", CORE, f"clean accuracy on the full test set, the recipe minus AdvProp, {_TRAININGS}", 0.0),
         Part("robust", CORE, f"robust accuracy ({_WORST}) at the recipes' training ε and at a standard ε ("
                              + ", ".join(f"{LABELS.get(k, k)}: {format_eps(e)}" for k, e in protocol.EBN_STANDARD_EPS.items())
                              + f"), the recipe minus AdvProp, {_TRAININGS}", ROBUST_MARGIN)),
        over_settings=True,
        caveat="AdvProp+EBN is our reading of the paper (two-branch EBN beside it); width 16"),
    "C5": Claim(
        "C5", "AdvProp (adversarial examples through an auxiliary BN) improves clean accuracy over standard training.",
        "04_easy_batchnorm", "Per setting (dataset x architecture):",
        (Part("clean", CORE, f"clean accuracy on the full test set, AdvProp minus standard training, {_TRAININGS}",
              0.0),),
        over_settings=True,
        caveat="width-16 ResNet-18 only; margin 0, so any gain counts"),
}

CLAIMS = {cid: c.statement for cid, c in SPECS.items()}
RULES = {cid: c.rule() for cid, c in SPECS.items()}
SOURCES = {cid: c.source for cid, c in SPECS.items()}


def shared_preconditions_text() -> str:
    """The preconditions every claim shares, as the ledger prints them once."""
    return ("Every part of every claim is inconclusive unless: " + "; ".join(SHARED_PRECONDITIONS) + ".")
