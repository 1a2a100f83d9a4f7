"""The verdict rules themselves, on synthetic data where the truth is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rnorm import stats
from rnorm._validate import ConfigError


def _pair(n, p_a, p_b, corr, rng):
    """Per-image correctness of two conditions with accuracies p_a, p_b, strongly correlated per image."""
    u = rng.random(n)
    a = u < p_a
    v = np.where(rng.random(n) < corr, u, rng.random(n))  # the same image is mostly easy or hard for both
    return a, v < p_b


def test_mcnemar_by_hand():
    a = np.array([1] * 10 + [0] * 0 + [1] * 5 + [0] * 5, bool)
    b = np.array([1] * 10 + [1] * 0 + [0] * 5 + [0] * 5, bool)
    # 5 discordant pairs, all one way: p = 2 * (1/2)^5
    assert stats.mcnemar(a, b) == pytest.approx(2 / 32)
    assert stats.mcnemar(a, a) == 1.0


def test_paired_seeds_by_hand():
    e = stats.paired_seeds([0.5, 0.6, 0.7], [0.6, 0.8, 0.7])  # differences 0.1, 0.2, 0.0
    assert e.estimate == pytest.approx(0.1)
    half = 4.303 * 0.1 / math.sqrt(3)
    assert (e.low, e.high) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert math.isnan(stats.paired_seeds([0.5, 0.6], [0.6, 0.8]).low)  # 2 seeds: no CI


def test_a_null_effect_is_never_partly_or_reproduced():
    rng = np.random.default_rng(0)
    outcomes = []
    for rep in range(60):
        a, b = _pair(1000, 0.6, 0.6, 0.9, rng)
        outcomes.append(stats.judge(stats.paired_images(a, b, n_boot=500, seed=rep), margin=0.0).verdict)
        seeds_a = 0.6 + 0.02 * rng.standard_normal(3)
        seeds_b = 0.6 + 0.02 * rng.standard_normal(3)
        outcomes.append(stats.judge(stats.paired_seeds(seeds_a, seeds_b), margin=0.0).verdict)
    assert stats.PARTLY not in outcomes
    # a 95 % CI: "reproduced" by chance at most about 2.5 % of the time, far below the old rules' 58 %
    assert outcomes.count(stats.REPRODUCED) / len(outcomes) < 0.08
    assert set(outcomes) <= {stats.INCONCLUSIVE, stats.NOT, stats.REPRODUCED}


def test_a_failed_precondition_makes_the_verdict_inconclusive():
    rng = np.random.default_rng(1)
    a, b = _pair(2000, 0.2, 0.8, 0.9, rng)  # a huge effect ...
    v = stats.judge(stats.paired_images(a, b, n_boot=500), preconditions={
        "BN with population statistics is more vulnerable than the no-norm model": False})
    assert v.verdict == stats.INCONCLUSIVE and "no-norm" in v.reason  # ... cannot rescue a failed precondition
    assert stats.judge(None).verdict == stats.NOT_RUN


def test_a_paired_effect_is_detected_where_an_unpaired_one_is_not():
    rng = np.random.default_rng(2)
    a, b = _pair(500, 0.50, 0.55, 0.97, rng)  # +5 points, the same images mostly easy or hard for both
    paired = stats.paired_images(a, b, n_boot=2000)
    unpaired = stats.unpaired_images(a, b)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert stats.judge(paired).verdict == stats.REPRODUCED
    assert stats.judge(unpaired).verdict == stats.INCONCLUSIVE
    assert paired.high - paired.low < 0.5 * (unpaired.high - unpaired.low)


def test_a_clear_shortfall_is_not_reproduced_and_a_wide_ci_is_inconclusive():
    e = stats.paired_seeds([0.8, 0.81, 0.79, 0.8], [0.7, 0.71, 0.69, 0.71])
    assert stats.judge(e).verdict == stats.NOT
    wide = stats.paired_seeds([0.5, 0.9, 0.1], [0.9, 0.1, 0.6])
    v = stats.judge(wide, max_width=0.1)
    assert v.verdict == stats.INCONCLUSIVE and "wide" in v.reason


def test_combining_parts():
    r, n, i = (stats.Verdict(x) for x in (stats.REPRODUCED, stats.NOT, stats.INCONCLUSIVE))
    assert stats.combine({"clean": r, "robust": r}).verdict == stats.REPRODUCED
    assert stats.combine({"clean": r, "robust": i}).verdict == stats.PARTLY
    assert stats.combine({"clean": n, "robust": i}).verdict == stats.NOT
    # a claim asserts all its parts: one refuted part refutes it, and the reason still names what held
    mixed = stats.combine({"clean": r, "robust": n})
    assert mixed.verdict == stats.NOT
    assert mixed.reason == "refuted: robust; holds: clean"
    assert stats.combine({"clean": i, "robust": i}).verdict == stats.INCONCLUSIVE


@pytest.mark.parametrize("a,b", [([], []), ([0, 1, 2], [0, 1, 1]), ([0, 1], [0, 1, 1])])
def test_bad_correctness_arrays(a, b):
    with pytest.raises(ConfigError):
        stats.paired_images(a, b)


def test_paired_rows_compares_the_same_images():
    import torch
    from rnorm.evaluate import pack_bits
    a = {"correct_bits": pack_bits(torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)),
         "scored_bits": pack_bits(torch.ones(5, dtype=torch.bool))}
    b = {"correct_bits": pack_bits(torch.tensor([1, 1, 1, 1, 1], dtype=torch.bool)),
         "scored_bits": pack_bits(torch.ones(5, dtype=torch.bool))}
    assert stats.paired_rows(a, b, 5, n_boot=200).estimate == pytest.approx(0.4)
    c = dict(b, scored_bits=pack_bits(torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)))
    with pytest.raises(ConfigError, match="different images"):
        stats.paired_rows(a, c, 5)


# --- the hierarchical bootstrap over seeds and images ------------------------------------------

def test_hierarchical_bootstrap_carries_the_seed_to_seed_variance_an_images_only_bootstrap_misses():
    # three seeds whose every image differs by a constant: resampling images alone sees no spread at all
    v = np.repeat(np.array([[0.0], [0.5], [1.0]]), 200, axis=1)
    est, low, high = stats.hierarchical_mean(v, n_boot=4000)
    assert est == pytest.approx(0.5)
    # a resample of 3 seeds takes all three the same with probability 3/27: its mean is 0 or 1
    assert low <= 1 / 3 + 1e-9 and high >= 2 / 3 - 1e-9
    _, one_low, one_high = stats.hierarchical_mean(v[1:2], n_boot=4000)
    assert one_low == one_high == 0.5


def test_hierarchical_bootstrap_of_identical_seeds_matches_the_images_only_bootstrap():
    rng = np.random.default_rng(3)
    row = (rng.random(500) < 0.3).astype(float)
    _, lo1, hi1 = stats.hierarchical_mean(row[None], n_boot=4000)
    _, lo3, hi3 = stats.hierarchical_mean(np.stack([row] * 3), n_boot=4000)
    assert (hi3 - lo3) == pytest.approx(hi1 - lo1, rel=0.1)
    # and the images-only width is the binomial one: 2 x 1.96 x sqrt(p (1 - p) / n)
    assert (hi1 - lo1) == pytest.approx(2 * 1.96 * np.sqrt(row.mean() * (1 - row.mean()) / row.size), rel=0.1)


def test_paired_trainings_takes_the_wider_of_student_t_and_the_hierarchical_bootstrap():
    rng = np.random.default_rng(4)
    a = rng.random((3, 400)) < 0.40
    b = rng.random((3, 400)) < np.array([[0.45], [0.47], [0.50]])
    e = stats.paired_trainings(a, b)
    t = stats.paired_seeds(a.mean(axis=1), b.mean(axis=1))
    _, lo, hi = stats.hierarchical_mean(b.astype(int) - a.astype(int))
    assert e.estimate == pytest.approx(t.estimate)
    assert e.low == pytest.approx(min(t.low, lo)) and e.high == pytest.approx(max(t.high, hi))
    assert "hierarchical" in e.paired_over
    assert np.isnan(stats.paired_trainings(a[:2], b[:2]).low)  # two seeds: no CI, as paired_seeds


def test_paired_images_of_several_models_is_hierarchical():
    a = np.zeros((3, 300), bool)
    b = np.zeros((3, 300), bool)
    b[2] = True  # only one seed gains, by 100 points: the images alone would see a tight +33
    e = stats.paired_images(a, b)
    assert e.estimate == pytest.approx(1 / 3)
    assert e.low <= 0.0 + 1e-9 and e.high >= 2 / 3 - 1e-9 and "hierarchical" in e.paired_over


def test_power_below_matches_a_simulation_of_the_paired_t_test():
    """The noncentral-t power against the frequency with which paired_seeds' CI lies below the margin in
    simulated experiments (normal differences, 3 and 5 seeds), within Monte Carlo error."""
    import numpy as np
    from rnorm import stats
    rng = np.random.default_rng(0)
    for n, mean, sd, margin in ((3, -0.046, 0.02, -0.05 + 0.04), (3, -0.046, 0.02, -0.05), (5, -0.08, 0.03, -0.05)):
        d = rng.normal(mean, sd, size=(4000, n))
        hits = np.mean([stats.paired_seeds(np.zeros(n), row).high < margin for row in d])
        assert stats.power_below(mean, sd, n, margin) == pytest.approx(hits, abs=0.025), (n, mean, sd, margin)
    assert stats.power_below(-0.1, 0.0, 3, -0.05) == 1.0 and stats.power_below(0.0, 0.0, 3, -0.05) == 0.0
    assert np.isnan(stats.power_below(-0.1, 0.02, 1, -0.05))
    assert stats.power_below(-0.2, 0.01, 3, -0.05) > 0.99 > 0.01 > stats.power_below(0.1, 0.01, 3, -0.05)


def test_in_unit_is_the_one_formatter_of_effects_reasons_and_thresholds():
    from rnorm import stats
    from rnorm.experiments.claims import Part
    assert stats.in_unit(0.0123, "points", signed=True) == "+1.2 points"
    assert stats.in_unit(1.184, "ratio") == "1.18×" and stats.in_unit(0.62, "share") == "62 %"
    assert stats.in_unit(-2.0, "epochs", signed=True, suffix=False) == "-2.0"
    assert stats.in_unit(1.5, "ratio", spec="g") == "1.5×"
    with pytest.raises(stats.ConfigError, match=r"unit='pct' is not allowed; allowed: 'points', 'ratio'"):
        stats.in_unit(1.0, "pct")
    e = stats.Effect(0.042, 0.01, 0.075, 3, "seeds")
    assert e.text().startswith("+4.2 points [95 % CI +1.0, +7.5]")
    assert Part("p", "core", "m", -0.05).threshold() == "CI above -5 points"
    assert Part("p", "core", "m", 1.5, "ratio").threshold() == "CI above 1.5×"
    assert Part("p", "core", "m", 0.0).threshold() == "CI above 0"


def test_a_ci_bound_that_rounds_to_zero_keeps_its_side_of_zero():
    """A refuted part's CI lies wholly below zero: its upper bound must not print as "0.0" (issue 36)."""
    refuted = stats.Effect(-0.004, -0.007, -0.0004, 3, "seeds")
    assert "[95 % CI -0.7, -0.04]" in refuted.text() and refuted.short() == "-0.4 points [-0.7, -0.04]"
    assert stats.bound_in_unit(0.00003, "points", signed=True) == "+0.003 points"   # at most two more decimals
    assert stats.bound_in_unit(0.0000001, "points", signed=True) == "0.000 points"  # then it gives up, unsigned
    assert stats.bound_in_unit(0.001, "share") == "0.1 %"
    zero = stats.Effect(0.0, 0.0, 0.0, 3, "seeds")                                  # a true zero stays "0.0"
    assert zero.short() == "0.0 points [0.0, 0.0]"
    assert stats.Effect(0.05, 0.012, 0.09, 3, "seeds").short() == "+5.0 points [+1.2, +9.0]"  # unchanged
