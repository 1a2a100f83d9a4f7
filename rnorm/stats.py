"""Effects with 95 % confidence intervals, and verdicts that can say "we could not tell".

Two kinds of comparison stand behind the claims:

* **Same weights, two conditions** (population vs batch statistics, white-box vs transfer):
  every test image is scored under both, so the comparison is *paired over images*.
  :func:`paired_images` gives the difference in accuracy with a percentile bootstrap CI,
  hierarchical over seeds and images where several models are scored (:func:`hierarchical_mean`),
  and the exact McNemar p-value on the discordant pairs. Pairing removes the image-to-image
  variance that an unpaired comparison of two accuracies carries.
* **Two trainings** (RobustNorm vs BatchNorm, EBN vs AdvProp): a seed gives both recipes the same
  initialization and data order, so the comparison is *paired over seeds*. :func:`paired_seeds`
  gives the mean difference with a Student-t CI (``n - 1`` degrees of freedom); with fewer than
  :data:`MIN_SEEDS` seeds the interval is not computed and the verdict is inconclusive. Where
  per-image results exist, :func:`paired_trainings` takes the wider of that interval and the
  hierarchical bootstrap over seeds and images.

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


UNITS = ("points", "ratio", "share", "epochs")
_SCALE = {"points": 100, "ratio": 1, "share": 100, "epochs": 1}  # stored value -> shown value
_SUFFIX = {"points": " points", "ratio": "×", "share": " %", "epochs": " epochs"}
_DIGITS = {"points": ".1f", "ratio": ".2f", "share": ".0f", "epochs": ".1f"}


def in_unit(value: float, unit: str, *, signed: bool = False, spec: str | None = None, suffix: bool = True) -> str:
    """``value`` (stored as the effects store it: accuracies as fractions) shown in ``unit``: x100 for
    points and shares, with the unit's suffix ("points", "×", "%", "epochs") unless ``suffix`` is
    False, a sign with ``signed``, and the unit's usual digits unless ``spec`` (a format spec such
    as ``"g"``) is given; a value that rounds to zero carries no sign. The one formatter of effects,
    reasons and the rules' thresholds."""
    if unit not in _SCALE:
        raise ConfigError(f"unit={unit!r} is not allowed; allowed: {', '.join(map(repr, UNITS))}.")
    text = format(_SCALE[unit] * value, ("+" if signed else "") + (spec or _DIGITS[unit]))
    if float(text) == 0:  # a value that rounds to zero reads "0.0", not "-0.0" or "+0.0" (as rnorm.tables.number)
        text = text.lstrip("+-")
    return text + (_SUFFIX[unit] if suffix else "")


def bound_in_unit(value: float, unit: str, *, signed: bool = False, suffix: bool = True) -> str:
    """A CI bound as :func:`in_unit` writes it, except that a bound which is not zero but rounds to zero at
    the unit's digits gets up to two more decimals, so that it keeps its side of zero: "[-0.7, -0.04]",
    not "[-0.7, 0.0]" beside a verdict that says the CI lies below zero."""
    text = in_unit(value, unit, signed=signed, suffix=suffix)
    digits = int(_DIGITS.get(unit, ".1f")[1:-1])
    for extra in (1, 2):
        if value == 0 or math.isnan(value) or float(in_unit(value, unit, spec=f".{digits + extra - 1}f",
                                                             suffix=False)) != 0:
            break
        text = in_unit(value, unit, signed=signed, spec=f".{digits + extra}f", suffix=suffix)
    return text


@dataclasses.dataclass(frozen=True)
class Effect:
    """An effect with its 95 % CI, how it was paired and on how many units.

    ``unit``: ``points`` (a difference of accuracies, stored as a fraction, shown x100),
    ``ratio`` (shown as "2.1x"), ``share`` (a fraction of something, shown as "62 %") or ``epochs``.
    """

    estimate: float
    low: float
    high: float
    n: int
    paired_over: str  # "images", "images x models", "seeds", ...
    p_value: float | None = None
    unit: str = "points"

    def _fmt(self, v: float) -> str:  # differences signed; ratios and shares carry their unit sign here
        return in_unit(v, self.unit, signed=self.unit in ("points", "epochs"),
                       suffix=self.unit in ("ratio", "share"))

    def _fmt_bound(self, v: float) -> str:
        return bound_in_unit(v, self.unit, signed=self.unit in ("points", "epochs"),
                             suffix=self.unit in ("ratio", "share"))

    def text(self) -> str:
        """E.g. "+4.2 points [95 % CI +1.0, +7.5] (paired over 3000 images x models)"."""
        suffix = {"points": " points", "ratio": "", "share": "", "epochs": " epochs"}[self.unit]
        if math.isnan(self.low):
            return f"{self._fmt(self.estimate)}{suffix} (n = {self.n} {self.paired_over}: no CI)"
        return (f"{self._fmt(self.estimate)}{suffix} [95 % CI {self._fmt_bound(self.low)}, {self._fmt_bound(self.high)}] "
                f"(paired over {self.n} {self.paired_over})")

    def short(self) -> str:
        """E.g. "+4.2 points [+1.0, +7.5]": the estimate and its 95 % CI, without how it was paired."""
        suffix = {"points": " points", "ratio": "", "share": "", "epochs": " epochs"}[self.unit]
        if math.isnan(self.low):
            return f"{self._fmt(self.estimate)}{suffix} (no CI)"
        return f"{self._fmt(self.estimate)}{suffix} [{self._fmt_bound(self.low)}, {self._fmt_bound(self.high)}]"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verdict, the effect it rests on, and (for ``inconclusive``) why."""

    verdict: str
    effect: Effect | None = None
    reason: str = ""


def _bools(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D (images) or 2-D (models x images) array of "
                          f"per-image correctness (0/1); got shape {arr.shape}.")
    if not np.isin(arr, (0, 1)).all():
        raise ConfigError(f"{name} must hold only 0/1 or False/True (per-image correctness).")
    return arr.astype(bool)


def _hierarchical_draws(rng, k: int, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` hierarchical resamples of a crossed models x images design: model indices
    (size x k, with replacement) and image counts (size x n, a resample of n images with
    replacement, the same images for every drawn model so the design stays crossed)."""
    rows = rng.integers(0, k, size=(size, k)) if k > 1 else np.zeros((size, 1), dtype=int)
    idx = rng.integers(0, n, size=(size, n))
    counts = np.zeros((size, n))
    np.add.at(counts, (np.repeat(np.arange(size), n), idx.ravel()), 1.0)
    return rows, counts


def hierarchical_mean(values, *, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a models x images array (e.g. per-image differences of two conditions) and its
    percentile 95 % CI under the hierarchical bootstrap: each resample draws the models (seeds)
    with replacement, then the images with replacement (the same images for every drawn model).

    The seed level carries the variance between trainings that an images-only bootstrap ignores;
    with few seeds (3) it is coarse, which is why comparisons of two *trainings* also take the
    Student-t interval over seeds (:func:`paired_trainings`). Returns ``(estimate, low, high)``."""
    v = np.asarray(values, dtype=float)
    v = v.reshape(-1, v.shape[-1])
    k, n = v.shape
    n_boot = check_int("n_boot", n_boot, min_value=100)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # chunks bound the memory to 500 x n counts
        size = min(500, n_boot - start)
        rows, counts = _hierarchical_draws(rng, k, n, size)
        per_model = counts @ v.T / n  # size x k: each model's mean over the resampled images
        boots[start:start + size] = np.take_along_axis(per_model, rows, axis=1).mean(axis=1)
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return float(v.mean()), float(low), float(high)


def paired_images(a, b, *, n_boot: int = 10_000, seed: int = 0) -> Effect:
    """Accuracy of ``b`` minus accuracy of ``a``, scored on the same images (per-image 0/1 arrays).

    ``a`` and ``b`` are 1-D (one model) or 2-D (one row per model, e.g. per seed, the same images
    in every row). CI: percentile bootstrap over images for one model; for several, the
    hierarchical bootstrap over models and images (:func:`hierarchical_mean`), so the CI carries
    the seed-to-seed variance as well as the images'. p-value: exact two-sided McNemar test on the
    discordant pairs, all rows pooled (for several models an approximation: it treats them as
    independent).
    """
    a, b = _bools("a", a), _bools("b", b)
    if a.shape != b.shape:
        raise ConfigError(f"a and b must score the same images; got shapes {a.shape} and {b.shape}.")
    d = (b.astype(np.int8) - a.astype(np.int8)).reshape(-1, a.shape[-1])
    est, low, high = hierarchical_mean(d, n_boot=n_boot, seed=seed)
    over = "images" if d.shape[0] == 1 else f"images x {d.shape[0]} models (hierarchical bootstrap)"
    return Effect(est, low, high, int(d.shape[1]), over, mcnemar(a.ravel(), b.ravel()))


def paired_trainings(a, b, *, n_boot: int = 10_000, seed: int = 0) -> Effect:
    """``b`` minus ``a`` for two *trainings* compared seed by seed, from per-image 0/1 results
    (seeds x images, the same images for every seed and both recipes).

    The CI is the wider of two: the Student-t interval over the seeds' accuracies
    (:func:`paired_seeds`: the variance between trainings, with the small-sample penalty of 3
    seeds) and the hierarchical bootstrap over seeds and images (:func:`hierarchical_mean`: it
    adds the sampling variance of the images, which a t-interval over a fixed image set leaves
    out). Fewer than :data:`MIN_SEEDS` seeds give no CI."""
    a, b = _bools("a", a), _bools("b", b)
    if a.shape != b.shape or a.ndim != 2:
        raise ConfigError(f"a and b must be seeds x images arrays of the same shape; got {a.shape} and {b.shape}.")
    t = paired_seeds(a.mean(axis=1), b.mean(axis=1))
    if math.isnan(t.low):
        return t
    _, low, high = hierarchical_mean(b.astype(np.int8) - a.astype(np.int8), n_boot=n_boot, seed=seed)
    return Effect(t.estimate, min(t.low, low), max(t.high, high), t.n,
                  f"seeds x {a.shape[1]} images (the wider of Student-t and the hierarchical bootstrap)")


def bootstrap_images(statistic, *arrays, n_boot: int = 10_000, seed: int = 0):
    """Estimate and percentile 95 % CI of ``statistic(*arrays)`` under resampling.

    The image axis is the *last* axis of every array (1-D: images; 2-D: models x images); the
    same resampled image indices are used for every array, so a comparison stays paired. For 2-D
    arrays of several models the resampling is hierarchical: the models (seeds) are drawn with
    replacement first, the same ones for every array. Returns ``(estimate, low, high, n_images)``.
    """
    n_boot = check_int("n_boot", n_boot, min_value=100)
    arrays = [np.asarray(a) for a in arrays]
    sizes = {arr.shape[-1] for arr in arrays}
    if len(sizes) != 1:
        raise ConfigError(f"the arrays must score the same images; got image counts {sorted(sizes)}.")
    n = sizes.pop()
    models = {arr.shape[0] for arr in arrays if arr.ndim == 2}
    if len(models) > 1:
        raise ConfigError(f"the arrays must hold the same models; got model counts {sorted(models)}.")
    k = models.pop() if models else 1
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, k, size=k) if k > 1 else None
        idx = rng.integers(0, n, size=n)
        boots[i] = statistic(*((arr[rows][:, idx] if rows is not None and arr.ndim == 2 else arr[..., idx])
                               for arr in arrays))
    alpha = (1 - LEVEL) / 2
    low, high = np.nanquantile(boots, [alpha, 1 - alpha])
    return float(statistic(*arrays)), float(low), float(high), n


def recovered_fraction(clean, attacked, repaired, *, n_boot: int = 2000, seed: int = 0) -> Effect:
    """The share of what an attack took that a repair gives back, paired over images:
    ``(acc(repaired) - acc(attacked)) / (acc(clean) - acc(attacked))``, with a bootstrap 95 % CI
    (0/1 arrays, 1-D or models x images, the same images in all three; hierarchical over models
    and images for several models, :func:`bootstrap_images`)."""
    arrs = [_bools(n, v) for n, v in (("clean", clean), ("attacked", attacked), ("repaired", repaired))]
    if len({a.shape for a in arrs}) != 1:
        raise ConfigError(f"clean, attacked and repaired must score the same images; got {[a.shape for a in arrs]}.")
    arrs = [a.reshape(-1, a.shape[-1]) for a in arrs]

    def share(c, a, r):
        took = c.mean() - a.mean()
        return (r.mean() - a.mean()) / took if took > 0 else math.nan

    est, low, high, n = bootstrap_images(share, *arrs, n_boot=n_boot, seed=seed)
    over = "images" if arrs[0].shape[0] == 1 else f"images x {arrs[0].shape[0]} models (hierarchical bootstrap)"
    return Effect(est, low, high, n, over, unit="share")


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


def paired_seeds(a, b, *, unit: str = "points") -> Effect:
    """Mean over seeds of ``b - a`` (one value per seed, same seed = same init and data order),
    with a Student-t 95 % CI; fewer than :data:`MIN_SEEDS` seeds give no CI (NaN bounds)."""
    a = np.asarray([check_float("a", v) for v in a], dtype=float)
    b = np.asarray([check_float("b", v) for v in b], dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ConfigError(f"a and b need one value per seed, the same seeds; got {a.size} and {b.size}.")
    d = b - a
    if d.size < MIN_SEEDS:
        return Effect(float(d.mean()), math.nan, math.nan, int(d.size), "seeds", unit=unit)
    half = _t_quantile(d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return Effect(float(d.mean()), float(d.mean() - half), float(d.mean() + half), int(d.size), "seeds",
                  unit=unit)


def power_below(true_difference: float, sd: float, n: int, margin: float) -> float:
    """The power of :func:`judge`'s "not reproduced" on a :func:`paired_seeds` effect: the probability
    that the 95 % Student-t CI of the mean of ``n`` paired differences lies wholly below ``margin``
    when the differences are normal with mean ``true_difference`` and standard deviation ``sd``.

    The CI's upper bound is below the margin exactly when the t statistic ``(mean - margin) / (s /
    sqrt(n))`` is below ``-t``, and that statistic follows the noncentral t distribution with ``n - 1``
    degrees of freedom and noncentrality ``(true_difference - margin) sqrt(n) / sd``. NaN with fewer
    than :data:`MIN_SEEDS` values; with ``sd`` 0 the test is deterministic (1 or 0)."""
    from scipy.stats import nct
    n = check_int("n", n, min_value=1)
    sd = check_float("sd", sd, min_value=0.0)
    if n < MIN_SEEDS:
        return math.nan
    if sd == 0:
        return float(true_difference < margin)
    nc = (true_difference - margin) * math.sqrt(n) / sd
    return float(nct.sf(_t_quantile(n - 1), n - 1, -nc))  # = cdf(-t; nc), which is NaN far in the tail


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
        return Verdict(INCONCLUSIVE, effect, f"only {effect.n} of the at least {MIN_SEEDS} {effect.paired_over} a "
                                             f"confidence interval needs")
    if max_width is not None and effect.high - effect.low > max_width:
        return Verdict(INCONCLUSIVE, effect, f"the 95 % CI is {_size(effect, effect.high - effect.low)} wide, "
                                             f"more than the {_size(effect, max_width)} that could decide")
    if effect.low > margin:
        return Verdict(REPRODUCED, effect)
    if effect.high < margin:
        return Verdict(NOT, effect)
    return Verdict(INCONCLUSIVE, effect, f"the 95 % CI contains the margin {_size(effect, margin, signed=True)}: "
                                         f"the data cannot tell")


def _size(effect: Effect, value: float, signed: bool = False) -> str:
    """``value`` in the effect's unit, for a reason text (signed only for differences)."""
    return in_unit(value, effect.unit, signed=signed and effect.unit in ("points", "epochs"))


def combine(parts: dict[str, Verdict]) -> Verdict:
    """A claim made of several parts, all of which it asserts: reproduced if all hold; not reproduced if
    any is refuted (a claim that "X improves both A and B" is false when B is shown to get worse, even
    if A improves; the reason then names the parts that hold as well); partly if some hold and none is
    refuted; inconclusive otherwise (naming the parts)."""
    verdicts = {k: v.verdict for k, v in parts.items()}
    held = [k for k, v in verdicts.items() if v == REPRODUCED]
    refuted = [k for k, v in verdicts.items() if v == NOT]
    open_ = [k for k, v in verdicts.items() if v not in (REPRODUCED, NOT)]
    if verdicts and len(held) == len(verdicts):
        return Verdict(REPRODUCED)
    if refuted:
        return Verdict(NOT, reason="refuted: " + ", ".join(refuted) + ("; holds: " + ", ".join(held) if held else ""))
    if held:
        return Verdict(PARTLY, reason="holds: " + ", ".join(held) + "; undecided: " + ", ".join(open_))
    return Verdict(INCONCLUSIVE, reason="no part could be decided: " + "; ".join(
        f"{k}: {parts[k].reason}" for k in open_))


def paired_rows(row_a, row_b, n_images: int, **bootstrap) -> Effect:
    """:func:`paired_images` of two rows of an :func:`rnorm.evaluate.evaluate` frame computed with
    ``per_image=True`` on the same ``n_images`` images (b minus a, on the images both scored)."""
    from ._tensors import unpack_bits
    for row in (row_a, row_b):
        if not isinstance(row.get("correct_bits"), str):
            raise ConfigError("rows need per-image correctness: evaluate them with per_image=True.")
    sa, sb = unpack_bits(row_a["scored_bits"], n_images), unpack_bits(row_b["scored_bits"], n_images)
    if not (sa == sb).all():
        raise ConfigError("the two rows scored different images; a paired comparison needs the same ones.")
    ca, cb = unpack_bits(row_a["correct_bits"], n_images), unpack_bits(row_b["correct_bits"], n_images)
    return paired_images(ca[sa], cb[sb], **bootstrap)
