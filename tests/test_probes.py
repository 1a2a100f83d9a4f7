"""Tests of rnorm.probes: recorded norm-layer input statistics, shift distances, hook hygiene."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rnorm import models, norms
from rnorm._validate import ConfigError
from rnorm.probes import compare_batches, make_batches, record_norm_inputs, shift_distance



def tiny(norm=norms.BatchNorm2d) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), norm(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1), norm(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )


def images(n=16, seed=0):
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained():
    """A few training steps on random data, so the running statistics are non-trivial."""
    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(10):
        x = images(16, seed=100 + step) * 0.8 + 0.1
        y = torch.arange(16) % 3
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _hand_inputs(model, x):
    """The inputs of the two norm layers of `tiny`, computed by hand in population mode."""
    with torch.no_grad():
        in1 = model[0](x)
        bn1 = model[1]
        c = lambda t: t[None, :, None, None]  # noqa: E731
        out1 = (in1 - c(bn1.running_mean)) / c(torch.sqrt(bn1.running_var + bn1.eps))
        out1 = out1 * c(bn1.weight) + c(bn1.bias)
        in2 = model[3](torch.relu(out1))
    return in1, in2


def test_recorded_statistics_equal_a_hand_computation(trained):
    x = images(12, seed=1)
    frame = record_norm_inputs(trained, x, tag="clean")
    assert list(frame.columns) == ["layer_index", "layer", "channel", "statistic", "value", "running", "tag"]
    assert len(frame) == (4 + 5) * 2
    assert (frame.tag == "clean").all()
    assert list(frame.drop_duplicates("layer_index").layer) == ["1", "4"]
    for index, (inp, bn) in enumerate(zip(_hand_inputs(trained, x), (trained[1], trained[4]))):
        f = frame[frame.layer_index == index].sort_values("channel")
        mean = f[f.statistic == "mean"]
        var = f[f.statistic == "var"]
        np.testing.assert_allclose(mean.value, inp.mean(dim=(0, 2, 3)).double(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var.value, inp.var(dim=(0, 2, 3), unbiased=False).double(), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(mean.running, bn.running_mean.double().numpy())
        np.testing.assert_array_equal(var.running, bn.running_var.double().numpy())
    # the running statistics are non-trivial (trained), so the test would catch a mix-up
    assert not torch.allclose(trained[1].running_var, torch.ones(4))


def test_stats_mode_and_training_flags_are_respected(trained):
    model = copy.deepcopy(trained).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(8, seed=2)
    pop = record_norm_inputs(model, x)
    with norms.use_stats(model, "batch"):
        bat = record_norm_inputs(model, x)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval mode: no update
    # layer 0 sees the same input; layer 1's input depends on how layer 0 normalized
    l0 = lambda f: f[f.layer_index == 0].value.to_numpy()
    l1 = lambda f: f[f.layer_index == 1].value.to_numpy()
    np.testing.assert_allclose(l0(pop), l0(bat))
    assert not np.allclose(l1(pop), l1(bat))
    assert pop.tag.isna().all()


def test_hooks_are_removed_after_success_and_after_an_error(trained):
    model = copy.deepcopy(trained)
    record_norm_inputs(model, images(4))
    assert all(not m._forward_hooks for m in model.modules())

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model[5] = Boom()  # after both norm layers have run (their hooks fired)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        record_norm_inputs(model, images(4))
    assert all(not m._forward_hooks for m in model.modules())
    assert all(m.training for m in model.modules())
    with pytest.raises(RuntimeError, match="channels"):  # wrong channel count: fails in the first conv
        record_norm_inputs(model, torch.rand(2, 5, 6, 6))
    assert all(not m._forward_hooks for m in model.modules())


def test_robustnorm_records_range_with_running_range():
    model = tiny(norms.RobustNorm2d).train()
    with torch.no_grad():
        model(images(16, seed=3))  # one training step: non-trivial running mean and range
    model.eval()
    x = images(8, seed=4)
    frame = record_norm_inputs(model, x)
    assert set(frame.statistic) == {"mean", "var", "range"}
    rng = frame[(frame.layer_index == 0) & (frame.statistic == "range")].sort_values("channel")
    inp = model[0](x).detach()
    np.testing.assert_allclose(rng.value, (inp.amax(dim=(0, 2, 3)) - inp.amin(dim=(0, 2, 3))).double(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rng.running, model[1].running_range.double().numpy())
    assert frame[frame.statistic == "var"].running.isna().all()
    d = shift_distance(frame)
    assert set(d.statistic) == {"mean", "range"} and (d.distance > 0).all()


def test_multibranch_layer_reports_the_routed_branch_buffers():
    model = norms.convert_norms(tiny(nn.BatchNorm2d), "multibn", branches=("adv",)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norms.MultiBatchNorm2d):
                m.aux["adv"].running_mean.fill_(0.25)
    with norms.route(model, "adv"):
        f = record_norm_inputs(model, images(4))
    assert (f[f.statistic == "mean"].running == 0.25).all()
    f = record_norm_inputs(model, images(4))
    assert (f[f.statistic == "mean"].running == 0.0).all()


def test_shift_distance_is_zero_when_running_equals_batch_statistics(trained):
    model = copy.deepcopy(trained)
    x = images(16, seed=5)
    d0 = shift_distance(record_norm_inputs(model, x, tag="clean"))
    assert list(d0.columns) == ["layer_index", "layer", "statistic", "distance", "tag"]
    assert len(d0) == 4 and (d0.distance > 0).all()
    # set each layer's buffers to its input's statistics, layer by layer (a layer's input depends
    # on how the previous layers normalize, so record again after each change)
    for index, (_, layer) in enumerate(norms.norm_layers(model)):
        f = record_norm_inputs(model, x)
        f = f[f.layer_index == index].sort_values("channel")
        with torch.no_grad():
            layer.running_mean.copy_(torch.tensor(f[f.statistic == "mean"].value.to_numpy()))
            layer.running_var.copy_(torch.tensor(f[f.statistic == "var"].value.to_numpy()))
    d = shift_distance(record_norm_inputs(model, x, tag="clean"))
    np.testing.assert_allclose(d.distance, 0.0, atol=1e-5)
    # by hand: the mean distance of layer 0 before the change
    f = record_norm_inputs(trained, x)
    f0 = f[f.layer_index == 0]
    mb, mr = f0[f0.statistic == "mean"].value.to_numpy(), f0[f0.statistic == "mean"].running.to_numpy()
    vb, vr = f0[f0.statistic == "var"].value.to_numpy(), f0[f0.statistic == "var"].running.to_numpy()
    row = d0[(d0.layer_index == 0)].set_index("statistic").distance
    assert row["mean"] == pytest.approx(np.mean(np.abs(mb - mr) / np.sqrt(vr + 1e-5)))
    assert row["var"] == pytest.approx(np.mean(np.abs(np.log((vb + 1e-5) / (vr + 1e-5)))))


def test_compare_batches_tags_and_adversarial_shift(trained):
    x = images(32, seed=6)
    y = torch.arange(32) % 3
    batches = make_batches(trained, x, y, attacks=("clean", "fgsm", "pgd"), eps=0.3,
                           attack_params={"pgd": {"steps": 3}})
    assert list(batches) == ["clean", "fgsm", "pgd"] and torch.equal(batches["clean"], x)
    assert (batches["pgd"] - x).abs().max() <= 0.3 + 1e-6
    frame = compare_batches(trained, batches)
    assert list(dict.fromkeys(frame.tag)) == ["clean", "fgsm", "pgd"]
    assert len(frame) == 3 * (4 + 5) * 2
    d = shift_distance(frame)
    assert len(d) == 3 * 2 * 2 and list(dict.fromkeys(d.tag)) == ["clean", "fgsm", "pgd"]
    with pytest.raises(ConfigError):
        compare_batches(trained, {})
    with pytest.raises(ConfigError, match="Did you mean 'pgd'"):
        make_batches(trained, x, y, attacks=("pgdd",))


def test_works_on_a_resnet():
    torch.manual_seed(0)
    model = models.resnet20(width=4, depth=8, num_classes=3).eval()
    frame = record_norm_inputs(model, images(4))
    layers = norms.norm_layers(model)
    assert frame.layer_index.nunique() == len(layers) == frame.layer.nunique()
    assert list(frame.drop_duplicates("layer_index").layer) == [name for name, _ in layers]
    d = shift_distance(frame)
    assert len(d) == 2 * len(layers) and np.isfinite(d.distance).all()
    assert d.tag.isna().all()
    assert isinstance(d, pd.DataFrame)


# --- per-image moments and the bootstrap of the shift -------------------------------------------

def test_moments_give_back_any_subsets_batch_statistics(trained):
    from rnorm.probes import moment_distances, norm_input_moments
    x = images(12, seed=2)
    moments = norm_input_moments(trained, x, batch_size=5)  # chunks must not matter in population mode
    frame = record_norm_inputs(trained, x[[0, 3, 3, 7]])  # a "resample" with a repeated image
    w = np.zeros((1, 12))
    w[0, [0, 3, 7]] = [0.25, 0.5, 0.25]
    for layer in moments:
        f = frame[frame.layer_index == layer["layer_index"]].sort_values("channel")
        mu = w @ layer["m1"]
        var = w @ layer["m2"] - mu * mu
        np.testing.assert_allclose(mu[0], f[f.statistic == "mean"].value, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(var[0], f[f.statistic == "var"].value, rtol=1e-5, atol=1e-8)
    # the distances equal shift_distance's, averaged over layers
    d = moment_distances(moments, np.full((1, 12), 1 / 12))
    ref = shift_distance(record_norm_inputs(trained, x))
    for stat in ("mean", "var"):
        assert d[stat][0] == pytest.approx(ref[ref.statistic == stat].distance.mean(), rel=1e-5)


def test_moments_refuse_batch_statistics(trained):
    from rnorm.probes import norm_input_moments
    m = copy.deepcopy(trained)
    norms.use_stats(m, "batch")
    with pytest.raises(ConfigError, match="population statistics"):
        norm_input_moments(m, images(4))


def test_shift_effects_ratio_and_paired_bootstrap():
    """Synthetic distances: the adversarial batch is exactly 3x the noise batch in every resample of
    seed 0 and 5x in seed 1: the ratio is their mean, 4, with a CI spanning the seeds (the seeds are resampled
    too); both seeds at 3x give a zero-width CI; unpaired (shuffled) resamples widen it."""
    from rnorm.experiments.shift import bootstrap_weights, shift_effects
    w = bootstrap_weights(50, 200, seed=1)
    assert w.shape == (201, 50) and np.allclose(w.sum(axis=1), 1) and np.allclose(w[-1], 1 / 50)
    rng = np.random.default_rng(0)
    base = {s: {"mean": 1 + rng.random(201), "var": 1 + rng.random(201)} for s in (0, 1)}
    batches = [("clean", 0.0), ("pgd", 0.1), ("noise_sign", 0.1)]
    dist = {}
    for s, k in ((0, 3.0), (1, 5.0)):
        dist[(s, "precise", ("clean", 0.0))] = {st: 0.5 * v for st, v in base[s].items()}
        dist[(s, "precise", ("noise_sign", 0.1))] = base[s]
        dist[(s, "precise", ("pgd", 0.1))] = {st: k * v for st, v in base[s].items()}
    effects, per_seed = shift_effects(dist, [0, 1], batches)
    row = effects[(effects.attack == "pgd") & (effects.control == "noise_sign") & (effects.statistic == "mean")].iloc[0]
    # the observed ratio is the seeds' mean; the hierarchical bootstrap also resamples the seeds, so the CI
    # spans the seed-to-seed spread (basic interval 2 x 4 - [5, 3] at its widest), not the zero width of images alone
    assert row.raw_ratio == pytest.approx(4.0)
    assert 3.0 - 1e-9 <= row.low < 4.0 < row.high <= 5.0 + 1e-9
    same = {k: ({st: 3.0 * v for st, v in base[k[0]].items()} if k[2] == ("pgd", 0.1) else v) for k, v in dist.items()}
    alike, _ = shift_effects(same, [0, 1], batches)  # both seeds exactly 3x: nothing to resample, zero width
    row = alike[(alike.attack == "pgd") & (alike.control == "noise_sign") & (alike.statistic == "mean")].iloc[0]
    assert row.ratio == pytest.approx(3.0) and row.low == pytest.approx(3.0) and row.high == pytest.approx(3.0)
    assert sorted(per_seed[(per_seed.attack == "pgd") & (per_seed.control == "noise_sign")
                           & (per_seed.statistic == "mean")].ratio) == pytest.approx([3.0, 5.0])
    noise_vs_clean = effects[(effects.attack == "noise_sign") & (effects.control == "clean")]
    assert list(noise_vs_clean.ratio) == pytest.approx([2.0, 2.0])
    # an unpaired comparison would not be exact: shuffle one seed's adversarial resamples
    dist[(0, "precise", ("pgd", 0.1))] = {st: 3.0 * v[rng.permutation(201)] for st, v in base[0].items()}
    effects, _ = shift_effects(dist, [0, 1], batches)
    row = effects[(effects.attack == "pgd") & (effects.control == "noise_sign") & (effects.statistic == "mean")].iloc[0]
    assert row.high - row.low > 0.5


def test_basic_interval_reflects_a_biased_bootstrap_around_the_estimate():
    from rnorm.experiments.shift import basic_interval
    rng = np.random.default_rng(0)
    boots = 8.0 - 2.0 + 0.5 * rng.standard_normal(4000)  # resamples biased 2 below the estimate 8
    est, low, high = basic_interval(8.0, boots)
    assert est == pytest.approx(10.0, abs=0.05)  # the bias of the resamples, reflected around 8
    assert low > 8.0 + 2.0 - 1.1 and high < 8.0 + 2.0 + 1.1 and low < est < high
