"""Effects with 95 % confidence intervals, and verdicts that can say "we could not tell".

Two kinds of comparison stand behind the claims:

* **Same weights, two conditions** (population vs batch statistics, white-box vs transfer):
  every test image is scored under both, so the comparison is *paired over images*.
  :func:`paired_images` gives the difference in accuracy with a percentile bootstrap CI over
  images, and the exact McNemar p-value on the discordant pairs. Pairing removes the
  image-to-image variance that an unpaired comparison of two accuracies carries.
* **Two trainings** (RobustNorm vs BatchNorm, EBN vs AdvProp): a seed gives both recipes the same
  initialization and data order, so the comparison is *paired over seeds*. :func:`paired_seeds`
  gives the mean difference with a Student-t CI (``n - 1`` degrees of freedom); with fewer than
  :data:`MIN_SEEDS` seeds the interval is not computed and the verdict is inconclusive.

:func:`judge` turns an effect and its CI into a :class:`Verdict` under a rule fixed in advance:
the claim holds (``reproduced``) when the whole CI lies beyond the margin the claim needs, it
fails (``not reproduced``) when the whole CI lies short of it, and otherwise the data cannot tell
(``inconclusive``, with the reason). Preconditions (a model trained to its floor, a regime where
the effect can show, an attack that is not at its floor) are checked first: a failed one makes
the verdict ``inconclusive`` whatever the effect. ``partly`` is only given by
:func:`combine` to a claim with several parts of which some hold and none is refuted.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._validate import ConfigError, check_float, check_int

REPRODUCED, PARTLY, NOT, INCONCLUSIVE, NOT_RUN = "reproduced", "partly", "not reproduced", "inconclusive", "not run"
MIN_SEEDS = 3
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Effect:
    """A difference (b - a, in accuracy units 0..1) with its 95 % CI, how it was paired and on what."""

    estimate: float
    low: float
    high: float
    n: int
    paired_over: str  # "images" or "seeds"
    p_value: float | None = None

    def text(self, unit: float = 100.0, suffix: str = " points") -> str:
        if math.isnan(self.low):
            return f"{unit * self.estimate:+.1f}{suffix} (n = {self.n} {self.paired_over}: no CI)"
        return (f"{unit * self.estimate:+.1f}{suffix} [95 % CI {unit * self.low:+.1f}, {unit * self.high:+.1f}] "
                f"(paired over {self.n} {self.paired_over})")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verdict, the effect it rests on, and (for ``inconclusive``) why."""

    verdict: str
    effect: Effect | None = None
    reason: str = ""


def _bools(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D sequence of per-image correctness (0/1).")
    if not np.isin(arr, (0, 1)).all():
        raise ConfigError(f"{name} must hold only 0/1 or False/True (per-image correctness).")
    return arr.astype(bool)


def paired_images(a, b, *, n_boot: int = 10_000, seed: int = 0) -> Effect:
    """Accuracy of ``b`` minus accuracy of ``a``, scored on the same images (per-image 0/1 arrays).

    CI: percentile bootstrap over images (resampling image indices, so each resample keeps the
    pairs). p-value: exact two-sided McNemar test on the discordant pairs.
    """
    a, b = _bools("a", a), _bools("b", b)
    if a.shape != b.shape:
        raise ConfigError(f"a and b must score the same images; got {a.size} and {b.size} entries.")
    n_boot = check_int("n_boot", n_boot, min_value=100)
    d = b.astype(np.int8) - a.astype(np.int8)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, 1000):  # chunks bound the memory to 1000 x n indices
        k = min(1000, n_boot - start)
        boots[start:start + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return Effect(float(d.mean()), float(low), float(high), int(d.size), "images", mcnemar(a, b))


def mcnemar(a, b) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs under Binomial(n01 + n10, 1/2)."""
    a, b = _bools("a", a), _bools("b", b)
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def unpaired_images(a, b) -> Effect:
    """The same difference treating the two conditions as independent samples (Wald interval):
    what an analysis that ignores the pairing would report. For comparison only."""
    a, b = _bools("a", a), _bools("b", b)
    pa, pb = a.mean(), b.mean()
    se = math.sqrt(pa * (1 - pa) / a.size + pb * (1 - pb) / b.size)
    z = 1.959963984540054
    return Effect(float(pb - pa), float(pb - pa - z * se), float(pb - pa + z * se), int(a.size), "images (unpaired)")


def _t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (table for small df)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
    if df in table:
        return table[df]
    if df > 30:
        return 1.96 + 2.4 / df  # within 0.003 of the exact quantile for df > 30
    return table[max(k for k in table if k < df)]  # the next smaller df: a slightly wider, conservative CI


def paired_seeds(a, b) -> Effect:
    """Mean over seeds of ``b - a`` (one value per seed, same seed = same init and data order),
    with a Student-t 95 % CI; fewer than :data:`MIN_SEEDS` seeds give no CI (NaN bounds)."""
    a = np.asarray([check_float("a", v) for v in a], dtype=float)
    b = np.asarray([check_float("b", v) for v in b], dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ConfigError(f"a and b need one value per seed, the same seeds; got {a.size} and {b.size}.")
    d = b - a
    if d.size < MIN_SEEDS:
        return Effect(float(d.mean()), math.nan, math.nan, int(d.size), "seeds")
    half = _t_quantile(d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return Effect(float(d.mean()), float(d.mean() - half), float(d.mean() + half), int(d.size), "seeds")


def judge(effect: Effect | None, *, margin: float = 0.0, preconditions: dict | None = None,
          max_width: float | None = None) -> Verdict:
    """The verdict of a claim "``b`` beats ``a`` by more than ``margin``" from its effect and CI.

    ``preconditions`` maps a description to a bool; the first that is False makes the verdict
    inconclusive with that reason. Then: no CI -> inconclusive (too few seeds); CI wider than
    ``max_width`` -> inconclusive (too wide to decide); low > margin -> reproduced; high < margin
    -> not reproduced; otherwise inconclusive (the CI contains the margin).
    """
    for what, ok in (preconditions or {}).items():
        if not ok:
            return Verdict(INCONCLUSIVE, effect, f"precondition fails: {what}")
    if effect is None:
        return Verdict(NOT_RUN, None, "no results")
    if math.isnan(effect.low):
        return Verdict(INCONCLUSIVE, effect, f"only {effect.n} {effect.paired_over}: no confidence interval "
                                             f"(at least {MIN_SEEDS} are needed)")
    if max_width is not None and effect.high - effect.low > max_width:
        return Verdict(INCONCLUSIVE, effect, f"the 95 % CI is {100 * (effect.high - effect.low):.1f} points wide, "
                                             f"more than the {100 * max_width:.1f} points that could decide")
    if effect.low > margin:
        return Verdict(REPRODUCED, effect)
    if effect.high < margin:
        return Verdict(NOT, effect)
    return Verdict(INCONCLUSIVE, effect, f"the 95 % CI contains {100 * margin:+.1f} points: the data cannot tell")


def combine(parts: dict[str, Verdict]) -> Verdict:
    """A claim made of several parts: reproduced if all hold; not reproduced if some are refuted and
    none holds; partly if some hold and none is refuted; inconclusive otherwise (naming the parts)."""
    verdicts = {k: v.verdict for k, v in parts.items()}
    held = [k for k, v in verdicts.items() if v == REPRODUCED]
    refuted = [k for k, v in verdicts.items() if v == NOT]
    open_ = [k for k, v in verdicts.items() if v not in (REPRODUCED, NOT)]
    if verdicts and len(held) == len(verdicts):
        return Verdict(REPRODUCED)
    if refuted and not held:
        return Verdict(NOT, reason="refuted: " + ", ".join(refuted))
    if held and not refuted:
        return Verdict(PARTLY, reason="holds: " + ", ".join(held) + "; undecided: " + ", ".join(open_))
    if held and refuted:
        return Verdict(INCONCLUSIVE, reason="parts disagree: holds " + ", ".join(held) + "; refuted "
                                            + ", ".join(refuted))
    return Verdict(INCONCLUSIVE, reason="no part could be decided: " + "; ".join(
        f"{k}: {parts[k].reason}" for k in open_))


def paired_rows(row_a, row_b, n_images: int, **bootstrap) -> Effect:
    """:func:`paired_images` of two rows of an :func:`rnorm.evaluate.evaluate` frame computed with
    ``per_image=True`` on the same ``n_images`` images (b minus a, on the images both scored)."""
    from .evaluate import unpack_bits
    for row in (row_a, row_b):
        if not isinstance(row.get("correct_bits"), str):
            raise ConfigError("rows need per-image correctness: evaluate them with per_image=True.")
    sa, sb = unpack_bits(row_a["scored_bits"], n_images), unpack_bits(row_b["scored_bits"], n_images)
    if not (sa == sb).all():
        raise ConfigError("the two rows scored different images; a paired comparison needs the same ones.")
    ca, cb = unpack_bits(row_a["correct_bits"], n_images), unpack_bits(row_b["correct_bits"], n_images)
    return paired_images(ca[sa], cb[sb], **bootstrap)
