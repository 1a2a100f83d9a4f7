"""Tests of rnorm.norms against nn.BatchNorm2d / F.batch_norm and hand computations.

Every numeric check compares with an independent computation: torch's own BatchNorm, the
formula written out by hand in float64, or an EMA followed step by step.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from rnorm._validate import ConfigError
from rnorm.norms import (
    BatchNorm2d, MultiBatchNorm2d, NoNorm2d, RobustNorm2d, branches_of, convert_norms, make_norm,
    norm_layers, route, use_stats,
)

D = torch.float64
MODES = ("population", "batch", "population_mean")
EPS = 1e-5



# ----------------------------------------------------------------------------- helpers

def rand_x(n=6, c=4, h=5, w=3, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    # per-channel offsets and scales so that the statistics are far from 0 / 1
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    return x * torch.linspace(0.5, 3.0, c, dtype=dtype)[None, :, None, None] + torch.arange(c, dtype=dtype)[None, :, None, None]


def randomize(m, seed=1):
    """Give a BN-like layer random affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            t = getattr(m, name, None)
            if t is not None:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
        for name in ("running_var", "running_range"):
            t = getattr(m, name, None)
            if t is not None:
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 + 0.5)
    return m


def bc(t):
    return t[None, :, None, None]


def hand_bn(x, mean, var, w, b, eps=EPS):
    y = (x - bc(mean)) / torch.sqrt(bc(var) + eps)
    return y * bc(w) + bc(b) if w is not None else y


def batch_mean_var(x):
    return x.mean(dim=(0, 2, 3)), ((x - bc(x.mean(dim=(0, 2, 3)))) ** 2).mean(dim=(0, 2, 3))


def batch_mean_range(x):
    return x.mean(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3)) - x.amin(dim=(0, 2, 3))


def hand_rn(x, mean, rng, p, w, b, eps=EPS):
    y = (x - bc(mean)) / (bc(rng) ** p + eps)
    return y * bc(w) + bc(b) if w is not None else y


def buffers(m):
    return {k: v.clone() for k, v in m.named_buffers()}


def assert_same_buffers(before, after):
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"buffer {k} changed"


def bn_pair(c=4, seed=1, stats="population", **kw):
    ours = BatchNorm2d(c, stats=stats, **kw).double()
    ref = nn.BatchNorm2d(c, **kw).double()
    randomize(ref, seed)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


# ----------------------------------------------------------------------------- BatchNorm2d

@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_bn_matches_torch_in_train_and_eval(momentum):
    ours, ref = bn_pair(momentum=momentum)
    for step in range(4):
        x = rand_x(seed=10 + step) * (step + 1)
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(step), dtype=D)
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        ys = [m(xi) for m, xi in zip((ours, ref), xs)]
        for y in ys:
            (y * g).sum().backward()
        torch.testing.assert_close(ys[0], ys[1], rtol=0, atol=1e-12)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-12)
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    # the buffers really moved (so the comparison above could fail)
    assert not torch.allclose(ours.running_var, torch.ones(4, dtype=D))
    ours.eval(), ref.eval()
    x = rand_x(seed=99)
    before = buffers(ours)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)
    assert_same_buffers(before, buffers(ours))


@pytest.mark.parametrize("stats", ["batch", "population_mean"])
def test_bn_train_mode_ignores_stats_mode(stats):
    """In train() every mode is exactly nn.BatchNorm2d (batch stats, buffer update)."""
    ours, ref = bn_pair(stats=stats)
    for step in range(2):
        x = rand_x(seed=step)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=1e-12)


def test_bn_batch_mode_is_batch_statistics_and_never_writes_buffers():
    ours, _ = bn_pair()
    ours.eval()
    ours.stats = "batch"
    x = rand_x(seed=3).requires_grad_(True)
    before = buffers(ours)
    y = ours(x)
    mean, var = batch_mean_var(x.detach())
    torch.testing.assert_close(y, hand_bn(x.detach(), mean, var, ours.weight.detach(), ours.bias.detach()),
                               rtol=0, atol=1e-12)
    # differs from the population output (the running stats are random, far from the batch's)
    ours.stats = "population"
    assert not torch.allclose(ours(x), y)
    assert_same_buffers(before, buffers(ours))
    assert ours.num_batches_tracked.item() == 0
    # the gradient flows through the batch statistics as autograd of the hand formula does
    ours.stats = "batch"
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    (gx,) = torch.autograd.grad((ours(x) * g).sum(), x)
    xh = x.detach().clone().requires_grad_(True)
    m, v = batch_mean_var(xh)
    (gh,) = torch.autograd.grad((hand_bn(xh, m, v, ours.weight.detach(), ours.bias.detach()) * g).sum(), xh)
    torch.testing.assert_close(gx, gh, rtol=0, atol=1e-10)
    assert_same_buffers(before, buffers(ours))


def test_bn_population_mean_is_running_mean_with_batch_variance():
    ours, _ = bn_pair()
    ours.eval()
    ours.stats = "population_mean"
    x = rand_x(seed=4).requires_grad_(True)
    before = buffers(ours)
    y = ours(x)
    _, var = batch_mean_var(x.detach())
    expected = hand_bn(x.detach(), ours.running_mean, var, ours.weight.detach(), ours.bias.detach())
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=D)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    xh = x.detach().clone().requires_grad_(True)
    _, vh = batch_mean_var(xh)
    (gh,) = torch.autograd.grad((hand_bn(xh, ours.running_mean, vh, ours.weight.detach(), ours.bias.detach()) * g).sum(), xh)
    torch.testing.assert_close(gx, gh, rtol=0, atol=1e-10)
    assert_same_buffers(before, buffers(ours))


def test_bn_without_running_stats_matches_torch_in_eval():
    ours, ref = bn_pair(track_running_stats=False)
    ours.eval(), ref.eval()
    x = rand_x(seed=5)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stats", MODES)
def test_bn_channels_last(stats, training):
    ours, _ = bn_pair(stats=stats)
    twin = copy.deepcopy(ours)
    ours.train(training), twin.train(training)
    x = rand_x(seed=6)
    y_cl = ours(x.to(memory_format=torch.channels_last))
    y = twin(x)
    torch.testing.assert_close(y_cl, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, twin.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_var, twin.running_var, rtol=0, atol=1e-12)


def _norm_of(kind, c, stats):
    if kind == "bn":
        return BatchNorm2d(c, stats=stats)
    if kind == "robustnorm":
        return RobustNorm2d(c, stats=stats)
    m = MultiBatchNorm2d(c, stats=stats)
    m.route = [("main", 3), ("adv", 5)]
    return m


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stats", MODES)
@pytest.mark.parametrize("kind", ["bn", "robustnorm", "multibn"])
def test_autocast_bf16_close_to_fp32(kind, stats, training):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), _norm_of(kind, 6, stats))
    with torch.no_grad():  # non-trivial population statistics
        for m in net.modules():
            if isinstance(m, (BatchNorm2d, RobustNorm2d)):
                randomize(m)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    ref_net = copy.deepcopy(net)
    net.train(training), ref_net.train(training)
    y32 = ref_net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = net(x)
    assert y16.dtype in (torch.bfloat16, torch.float32)
    assert torch.isfinite(y16).all()
    err = (y16.float() - y32).abs()
    scale = y32.abs().max().item()
    assert err.max().item() <= 0.05 * scale + 0.05, err.max().item()
    assert err.mean().item() <= 0.01 * scale + 0.01
    for (k, b16), (_, b32) in zip(net.named_buffers(), ref_net.named_buffers()):
        assert b16.dtype == b32.dtype, k  # buffers stay fp32 under autocast
        if b16.is_floating_point():
            torch.testing.assert_close(b16, b32, rtol=2e-2, atol=2e-2)


def test_bn_bad_stats_mode_is_named():
    with pytest.raises(ConfigError, match=r"stats='batchs'.*Did you mean 'batch'"):
        BatchNorm2d(4, stats="batchs")
    m = BatchNorm2d(4)
    with pytest.raises(ConfigError, match="stats='pop'"):
        m.stats = "pop"
    assert m.stats == "population"


# ----------------------------------------------------------------------------- RobustNorm2d

@pytest.mark.parametrize("p", [0.2, 1.0])
def test_rn_train_matches_hand_and_ema(p):
    m = RobustNorm2d(4, p=p).double()
    randomize_affine = torch.Generator().manual_seed(3)
    with torch.no_grad():
        m.weight.copy_(torch.randn(4, generator=randomize_affine, dtype=D))
        m.bias.copy_(torch.randn(4, generator=randomize_affine, dtype=D))
    assert torch.equal(m.running_range, torch.ones(4, dtype=D))  # the range buffer starts at 1
    assert torch.equal(m.running_mean, torch.zeros(4, dtype=D))
    rm, rr = torch.zeros(4, dtype=D), torch.ones(4, dtype=D)
    for step in range(4):
        x = rand_x(seed=20 + step) * (step + 1)
        mean, rng = batch_mean_range(x)
        y = m(x)
        torch.testing.assert_close(y, hand_rn(x, mean, rng, p, m.weight.detach(), m.bias.detach()), rtol=0, atol=1e-12)
        rm = 0.9 * rm + 0.1 * mean
        rr = 0.9 * rr + 0.1 * rng
        torch.testing.assert_close(m.running_mean, rm, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.running_range, rr, rtol=0, atol=1e-12)
        assert m.num_batches_tracked.item() == step + 1


@pytest.mark.parametrize("p", [0.2, 1.0])
@pytest.mark.parametrize("stats", MODES)
def test_rn_eval_modes_match_hand_and_never_write_buffers(stats, p):
    m = randomize(RobustNorm2d(4, p=p).double())
    m.eval()
    m.stats = stats
    x = rand_x(seed=7)
    bmean, brng = batch_mean_range(x)
    mean = m.running_mean if stats in ("population", "population_mean") else bmean
    rng = m.running_range if stats == "population" else brng
    before = buffers(m)
    y = m(x)
    torch.testing.assert_close(y, hand_rn(x, mean, rng, p, m.weight.detach(), m.bias.detach()), rtol=0, atol=1e-12)
    assert_same_buffers(before, buffers(m))
    # the three modes give three different answers here (so the check above discriminates)
    others = []
    for s in MODES:
        m.stats = s
        others.append(m(x))
    assert not torch.allclose(others[0], others[1]) and not torch.allclose(others[0], others[2])
    assert not torch.allclose(others[1], others[2])


@pytest.mark.parametrize("training,stats", [(True, "population"), (False, "population"),
                                            (False, "batch"), (False, "population_mean")])
def test_rn_gradient_is_autograd_of_the_formula(training, stats):
    m = randomize(RobustNorm2d(3, p=0.2).double())
    m.train(training)
    m.stats = stats
    x = rand_x(n=2, c=3, h=3, w=2, seed=8).requires_grad_(True)
    w = m.weight.detach().clone().requires_grad_(True)
    b = m.bias.detach().clone().requires_grad_(True)

    def f(x, w, b):
        return torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))

    def hand(x, w, b):
        bm, br = batch_mean_range(x)
        mean = bm if training or stats == "batch" else m.running_mean
        rng = br if training or stats != "population" else m.running_range
        return hand_rn(x, mean, rng, 0.2, w, b)

    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    ours = torch.autograd.grad((f(x, w, b) * g).sum(), (x, w, b))
    ref = torch.autograd.grad((hand(x, w, b) * g).sum(), (x, w, b))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rn_mask_spread_for_cuda_gives_the_same_gradient_without_host_syncs(monkeypatch, dtype, channels_last):
    """The CUDA path spreads the range gradient with a mask instead of ``nonzero`` (a host sync on
    CUDA). Forced on CPU: the gradients are bit-identical to the index path, ties included, and the
    backward calls nothing that makes the host wait (``nonzero``, ``item``, ``tolist``, ``bool``)."""
    from rnorm import norms
    x = torch.randint(-3, 4, (8, 5, 6, 4), generator=torch.Generator().manual_seed(3)).to(dtype)  # many ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(dtype)

    def grads():
        m = randomize(RobustNorm2d(5, p=0.2)).train()
        xx = x.clone().requires_grad_(True)
        (m(xx).float() * g.float()).sum().backward()
        return xx.grad, m.weight.grad, m.bias.grad

    by_index = grads()
    monkeypatch.setattr(norms.robustnorm, "_spread_by_index", norms.robustnorm._spread_by_mask)

    def sync(*a, **k):
        raise AssertionError("host synchronization in the CUDA backward path")
    for name in ("nonzero", "item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch, "nonzero", sync)
    by_mask = grads()
    monkeypatch.undo()
    for a, b in zip(by_index, by_mask):
        assert torch.equal(a, b)
    assert by_index[0].abs().sum() > 0


def test_rn_without_affine_and_channels_last():
    m = RobustNorm2d(4, p=1.0, affine=False).double()
    assert m.weight is None and m.bias is None
    x = rand_x(seed=9)
    mean, rng = batch_mean_range(x)
    y = m(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, hand_rn(x, mean, rng, 1.0, None, None), rtol=0, atol=1e-12)
    m.eval()
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), m(x), rtol=0, atol=1e-12)


def test_rn_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="p=0.0"):
        RobustNorm2d(4, p=0)
    with pytest.raises(ConfigError, match="momentum=1.5"):
        RobustNorm2d(4, momentum=1.5)
    with pytest.raises(ConfigError, match="num_features=0"):
        RobustNorm2d(0)
    with pytest.raises(ConfigError, match="stats='bach'"):
        RobustNorm2d(4, stats="bach")
    with pytest.raises(ValueError, match=r"4-D input"):
        RobustNorm2d(4)(torch.zeros(2, 4, 3))


# ----------------------------------------------------------------------------- MultiBatchNorm2d

def make_multi(c=4, branches=("adv", "easy"), share="none", seed=0, **kw):
    m = MultiBatchNorm2d(c, branches=branches, share=share, **kw).double()
    randomize(m, seed)
    for i, a in enumerate(m.aux.values()):
        randomize(a, seed + 100 + i)
    return m


def separate_bns(m):
    """One independent nn.BatchNorm2d per branch, loaded with that branch's parameters and stats."""
    out = {}
    for b in m.branches:
        src = m if b == "main" else m.aux[b]
        ref = nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum).double()
        ref.load_state_dict({k: v for k, v in src.state_dict().items() if not k.startswith("aux.")})
        out[b] = ref
    return out


def branch_of(m, b):
    return m if b == "main" else m.aux[b]


def main_buffers(m):
    return {k: v.clone() for k, v in m.named_buffers() if not k.startswith("aux.")}


def branch_buffers(m, b):
    """The running buffers of one branch only (the main module's own, without aux.*)."""
    return main_buffers(m) if b == "main" else buffers(m.aux[b])


@pytest.mark.parametrize("the_route,n,sizes", [
    ([("main", 3), ("adv", 5)], 8, [3, 5]),
    (["main", "adv", "easy"], 9, [3, 3, 3]),
    ([("easy", 2), ("main", 0), ("adv", 4)], 6, [2, 0, 4]),
])
def test_split_equals_separate_batchnorms(the_route, n, sizes):
    m = make_multi()
    refs = separate_bns(m)
    m.route = the_route
    names = [r if isinstance(r, str) else r[0] for r in the_route]
    untouched = [b for b in m.branches if b not in [nm for nm, s in zip(names, sizes) if s > 0]]
    frozen = {b: branch_buffers(m, b) for b in untouched}
    for step in range(3):
        x = rand_x(n=n, seed=30 + step) * (1 + step)
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        y = m(xs[0])
        parts, start = [], 0
        for b, s in zip(names, sizes):
            if s:
                parts.append(refs[b](xs[1][start:start + s]))
            start += s
        y_ref = torch.cat(parts)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(step), dtype=D)
        (y * g).sum().backward()
        (y_ref * g).sum().backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=1e-12)
        for b in set(names):
            own, ref = branch_of(m, b), refs[b]
            torch.testing.assert_close(own.running_mean, ref.running_mean, rtol=0, atol=1e-12)
            torch.testing.assert_close(own.running_var, ref.running_var, rtol=0, atol=1e-12)
            assert own.num_batches_tracked.item() == ref.num_batches_tracked.item()
            if ref.weight.grad is not None:
                torch.testing.assert_close(own.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)
                torch.testing.assert_close(own.bias.grad, ref.bias.grad, rtol=0, atol=1e-12)
    for b in untouched:
        assert_same_buffers(frozen[b], branch_buffers(m, b))
    # eval: each slice normalized by its branch's running statistics
    m.eval()
    x = rand_x(n=n, seed=40)
    parts, start = [], 0
    for b, s in zip(names, sizes):
        if s:
            parts.append(refs[b].eval()(x[start:start + s]))
        start += s
    torch.testing.assert_close(m(x), torch.cat(parts), rtol=0, atol=1e-12)


@pytest.mark.parametrize("branch", ["main", "adv", "easy"])
def test_whole_batch_route_moves_only_its_own_statistics(branch):
    m = make_multi()
    refs = separate_bns(m)
    before = {b: branch_buffers(m, b) for b in m.branches}
    m.route = branch
    for step in range(2):
        x = rand_x(seed=50 + step)
        torch.testing.assert_close(m(x), refs[branch](x), rtol=0, atol=1e-12)
    own = branch_of(m, branch)
    assert not torch.equal(own.running_mean, before[branch]["running_mean"])
    torch.testing.assert_close(own.running_var, refs[branch].running_var, rtol=0, atol=1e-12)
    assert own.num_batches_tracked.item() == 2
    for b in m.branches:
        if b != branch:
            assert_same_buffers(before[b], branch_buffers(m, b))


def test_main_branch_has_plain_batchnorm_state_dict_keys():
    m = make_multi()
    sd = m.state_dict()
    plain = nn.BatchNorm2d(4).state_dict()
    main_keys = {k for k in sd if not k.startswith("aux.")}
    assert main_keys == set(plain)
    assert {k for k in sd if k.startswith("aux.")} == {f"aux.{b}.{k}" for b in ("adv", "easy") for k in plain}
    ref = nn.BatchNorm2d(4).double()
    res = ref.load_state_dict(sd, strict=False)
    assert res.missing_keys == []
    assert set(res.unexpected_keys) == {k for k in sd if k.startswith("aux.")}
    m.eval(), ref.eval()
    x = rand_x(seed=11)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=1e-12)
    # and a plain BN checkpoint loads into the main branch
    m2 = MultiBatchNorm2d(4).double()
    res = m2.load_state_dict(ref.state_dict(), strict=False)
    assert res.unexpected_keys == [] and all(k.startswith("aux.") for k in res.missing_keys)
    m2.eval()
    torch.testing.assert_close(m2(x), ref(x), rtol=0, atol=1e-12)


def test_eval_route_to_adv_uses_auxiliary_statistics():
    m = make_multi().eval()
    x = rand_x(seed=12)
    before = buffers(m)
    with route(m, "adv"):
        y = m(x)
    a = m.aux["adv"]
    expected = F.batch_norm(x, a.running_mean, a.running_var, a.weight, a.bias, False, 0.0, a.eps)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(y, m(x))  # main differs
    assert m.route == "main"
    assert_same_buffers(before, buffers(m))


@pytest.mark.parametrize("stats", ["batch", "population_mean"])
def test_eval_stats_mode_propagates_to_aux_branches(stats):
    m = make_multi().eval()
    net = nn.Sequential(m)
    x = rand_x(seed=13)
    before = buffers(m)
    a = m.aux["easy"]
    mean, var = batch_mean_var(x)
    with use_stats(net, stats):
        assert m.stats == stats and all(b.stats == stats for b in m.aux.values())
        with route(net, "easy"):
            y = m(x)
    rmean = mean if stats == "batch" else a.running_mean
    torch.testing.assert_close(y, hand_bn(x, rmean, var, a.weight.detach(), a.bias.detach()), rtol=0, atol=1e-12)
    assert m.stats == "population" and all(b.stats == "population" for b in m.aux.values())
    assert_same_buffers(before, buffers(m))


def test_share_affine_uses_main_weight_and_own_statistics():
    m = make_multi(share="affine")
    assert m.aux["adv"].weight is None and "aux.adv.weight" not in m.state_dict()
    assert "aux.adv.running_mean" in m.state_dict()
    main_before = main_buffers(m)
    rm, rv = m.aux["adv"].running_mean.clone(), m.aux["adv"].running_var.clone()
    m.route = "adv"
    x = rand_x(seed=14).requires_grad_(True)
    y = m(x)
    mean, var = batch_mean_var(x.detach())
    torch.testing.assert_close(y, hand_bn(x.detach(), mean, var, m.weight.detach(), m.bias.detach()), rtol=0, atol=1e-12)
    n = x.numel() // x.shape[1]
    torch.testing.assert_close(m.aux["adv"].running_mean, 0.9 * rm + 0.1 * mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.aux["adv"].running_var, 0.9 * rv + 0.1 * var * n / (n - 1), rtol=0, atol=1e-12)
    assert_same_buffers(main_before, main_buffers(m))
    y.sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0  # the shared affine learns
    m.eval()
    a = m.aux["adv"]
    torch.testing.assert_close(m(x.detach()), hand_bn(x.detach(), a.running_mean, a.running_var, m.weight.detach(),
                                                      m.bias.detach()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_share_stats_one_set_of_statistics_separate_affine(momentum):
    m = make_multi(share="stats", momentum=momentum)
    for a in m.aux.values():
        assert a.running_mean is None and a.weight is not None
    assert not any(k.startswith("aux.") and "running" in k for k in m.state_dict())
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    m.route = ["main", "adv"]
    means, vars_ = [], []
    for step in range(2):
        x = rand_x(n=8, seed=60 + step) * (step + 1)
        y = m(x)
        mean, var = batch_mean_var(x)  # over the whole batch, both slices
        means.append(mean), vars_.append(var * (x.numel() // 4) / (x.numel() // 4 - 1))
        expected = torch.cat([
            hand_bn(x[:4], mean, var, m.weight.detach(), m.bias.detach()),
            hand_bn(x[4:], mean, var, m.aux["adv"].weight.detach(), m.aux["adv"].bias.detach()),
        ])
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
        assert m.num_batches_tracked.item() == step + 1
        if momentum is not None:
            rm, rv = 0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * vars_[-1]
        else:  # cumulative average, as nn.BatchNorm2d with momentum=None
            rm, rv = sum(means) / len(means), sum(vars_) / len(vars_)
        torch.testing.assert_close(m.running_mean, rm, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.running_var, rv, rtol=0, atol=1e-12)
    # whole batch to "adv" in eval: main running statistics, adv affine parameters
    m.eval()
    m.route = "adv"
    x = rand_x(seed=70)
    a = m.aux["adv"]
    torch.testing.assert_close(m(x), hand_bn(x, m.running_mean, m.running_var, a.weight.detach(), a.bias.detach()),
                               rtol=0, atol=1e-12)
    m.stats = "batch"
    mean, var = batch_mean_var(x)
    torch.testing.assert_close(m(x), hand_bn(x, mean, var, a.weight.detach(), a.bias.detach()), rtol=0, atol=1e-12)


def test_multibn_momentum_none_matches_torch_per_branch():
    m = make_multi(momentum=None)
    refs = separate_bns(m)
    for r in refs.values():
        r.momentum = None
    m.route = [("main", 2), ("adv", 4)]
    for step in range(3):
        x = rand_x(seed=80 + step)
        torch.testing.assert_close(m(x), torch.cat([refs["main"](x[:2]), refs["adv"](x[2:])]), rtol=0, atol=1e-12)
    for b in ("main", "adv"):
        torch.testing.assert_close(branch_of(m, b).running_var, refs[b].running_var, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad,exc,pattern", [
    ("adversarial", ConfigError, "branch='adversarial'"),
    (["main", "avd"], ConfigError, r"branch='avd'.*Did you mean 'adv'"),
    ([("main", 3), ("adv", -1)], ConfigError, r"size for 'adv' is -1"),
    ([("main", 3), ("adv", 2.5)], ConfigError, r"size for 'adv' is 2.5"),
    ([("main", 3), "adv"], ConfigError, "mixes names"),
    ([], ConfigError, "empty"),
    (3, ConfigError, "branch=3"),
])
def test_bad_routes_are_named(bad, exc, pattern):
    m = MultiBatchNorm2d(4)
    with pytest.raises(exc, match=pattern):
        m.route = bad
    with pytest.raises(exc, match=pattern):
        route(nn.Sequential(m), bad)
    assert m.route == "main"


def test_route_sizes_must_fit_the_batch():
    m = MultiBatchNorm2d(4)
    m.route = [("main", 3), ("adv", 5)]
    with pytest.raises(ValueError, match=r"sum to 8 but the batch has 7"):
        m(torch.randn(7, 4, 2, 2))
    m.route = ["main", "adv"]
    with pytest.raises(ValueError, match=r"batch of 7 into 2 equal slices"):
        m(torch.randn(7, 4, 2, 2))


def test_bad_branch_names():
    for branches, pattern in [(("main",), "'main'"), (("adv", "adv"), "repeats"), (("1x",), "'1x'")]:
        with pytest.raises(ConfigError, match=pattern):
            MultiBatchNorm2d(4, branches=branches)
    with pytest.raises(ConfigError, match="share='weights'"):
        MultiBatchNorm2d(4, share="weights")
    assert MultiBatchNorm2d(4, branches=("adv",)).branches == ("main", "adv")


# ----------------------------------------------------------------------------- make_norm / convert_norms

def test_make_norm_builds_each_name():
    assert type(make_norm("bn", 8)) is BatchNorm2d
    assert make_norm("bn", 8, stats="batch", momentum=0.2).stats == "batch"
    rn = make_norm("robustnorm", 8, p=1.0)
    assert type(rn) is RobustNorm2d and rn.p == 1.0 and rn.num_features == 8
    mb = make_norm("multibn", 8, branches=("adv",), share="affine")
    assert type(mb) is MultiBatchNorm2d and mb.branches == ("main", "adv") and mb.share == "affine"
    nn_ = make_norm("none", 8)
    x = torch.randn(2, 8, 3, 3)
    assert isinstance(nn_, NoNorm2d) and torch.equal(nn_(x), x)


def test_make_norm_unknown_name_suggests():
    with pytest.raises(ConfigError, match=r"norm='robustnrom'.*Did you mean 'robustnorm'"):
        make_norm("robustnrom", 8)
    with pytest.raises(ConfigError, match=r"'bn', 'robustnorm', 'multibn', 'none'"):
        make_norm("layernorm", 8)


@pytest.mark.parametrize("name,kw,pattern", [
    ("bn", {"momentun": 0.1}, r"momentun=0.1.*Did you mean 'momentum'"),
    ("bn", {"p": 0.2}, r"norm 'bn' takes no argument p=0.2"),
    ("robustnorm", {"branches": ("adv",)}, r"takes no argument branches"),
    ("robustnorm", {"track_running_stats": False}, r"track_running_stats"),
    ("multibn", {"pp": 1}, r"takes no argument pp=1"),
])
def test_make_norm_unknown_kwarg_is_named(name, kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_norm(name, 8, **kw)


@pytest.fixture(scope="module")
def tv_resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * (1 + i))
    model.eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        y = model(x)
    return model, x, y


def test_convert_torchvision_resnet_to_bn_keeps_outputs(tv_resnet):
    model, x, y = tv_resnet
    conv = convert_norms(copy.deepcopy(model), "bn")
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n_bn == 20
    assert sum(type(m) is BatchNorm2d for m in conv.modules()) == n_bn
    assert not conv.training and not any(m.training for m in conv.modules())
    with torch.no_grad():
        torch.testing.assert_close(conv(x), y, rtol=0, atol=1e-5)
        with use_stats(conv, "batch"):
            yb = conv(x)
    assert not torch.allclose(yb, y, atol=1e-3)  # the statistics mode reaches the converted layers


def test_convert_torchvision_resnet_to_multibn_keeps_outputs(tv_resnet):
    model, x, y = tv_resnet
    conv = convert_norms(copy.deepcopy(model), "multibn")
    assert sum(isinstance(m, MultiBatchNorm2d) for m in conv.modules()) == 20
    assert branches_of(conv) == ("main", "adv", "easy")
    with torch.no_grad():
        torch.testing.assert_close(conv(x), y, rtol=0, atol=1e-5)
        for b in ("adv", "easy"):  # auxiliary branches start as copies of the main one
            with route(conv, b):
                torch.testing.assert_close(conv(x), y, rtol=0, atol=1e-5)
    # main-branch keys are those of the torchvision checkpoint
    sd = {k: v for k, v in conv.state_dict().items() if ".aux." not in k}
    assert set(sd) == set(model.state_dict())


def test_convert_torchvision_resnet_to_robustnorm_and_none(tv_resnet):
    model, x, _ = tv_resnet
    rn = convert_norms(copy.deepcopy(model), "robustnorm")
    assert sum(isinstance(m, RobustNorm2d) for m in rn.modules()) == 20
    torch.testing.assert_close(rn.bn1.running_mean, model.bn1.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(rn.bn1.weight, model.bn1.weight, rtol=0, atol=0)
    assert torch.equal(rn.bn1.running_range, torch.ones(64))
    none = convert_norms(copy.deepcopy(model), "none")
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in none.modules())
    assert sum(isinstance(m, NoNorm2d) for m in none.modules()) == 20
    assert none.layer2[0].downsample[1].num_features == 128
    z = torch.randn(2, 64, 4, 4)
    assert torch.equal(none.bn1(z), z)
    with torch.no_grad():
        assert none(x).shape == (4, 10)
    with pytest.raises(ConfigError, match="norm='bnn'"):
        convert_norms(copy.deepcopy(model), "bnn")


def test_convert_keeps_dtype_training_flag_and_untracked_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)).double()
    randomize(net[1])
    randomize(net[2])
    net.train()
    ref = copy.deepcopy(net)
    convert_norms(net, "bn")
    assert net[1].weight.dtype == D and net[1].running_mean.dtype == D
    assert net[1].training and not net[2].track_running_stats
    x = rand_x(n=4, c=3, seed=1)
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-12)
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-12)


def _mixed_model():
    return nn.Sequential(nn.Conv2d(3, 4, 1), BatchNorm2d(4), RobustNorm2d(4), MultiBatchNorm2d(4))


def test_use_stats_setter_and_context_manager_restore():
    model = _mixed_model()
    layers = [model[1], model[2], model[3]] + list(model[3].aux.values())
    assert [n for n, _ in norm_layers(model)] == ["1", "2", "3"]
    use_stats(model, "batch")
    assert all(m.stats == "batch" for m in layers)
    with use_stats(model, "population_mean") as got:
        assert got is model
        assert all(m.stats == "population_mean" for m in layers)
        with use_stats(model, "population"):
            assert all(m.stats == "population" for m in layers)
        assert all(m.stats == "population_mean" for m in layers)
    assert all(m.stats == "batch" for m in layers)
    with pytest.raises(RuntimeError):
        with use_stats(model, "population"):
            raise RuntimeError("boom")
    assert all(m.stats == "batch" for m in layers)
    with pytest.raises(ConfigError, match="stats='batches'"):
        use_stats(model, "batches")
    assert use_stats(nn.Sequential(nn.Conv2d(3, 3, 1)), "batch") is not None  # nothing to set: fine


def test_use_stats_refuses_plain_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match="convert_norms"):
        use_stats(model, "batch")


def test_route_setter_and_context_manager_restore():
    model = _mixed_model()
    m = model[3]
    route(model, ["main", "adv"])
    assert m.route == (("main", None), ("adv", None))
    with route(model, "easy"):
        assert m.route == "easy"
        with route(model, [("main", 1), ("easy", 3)]):
            assert m.route == (("main", 1), ("easy", 3))
        assert m.route == "easy"
    assert m.route == (("main", None), ("adv", None))  # a split route is restored too
    route(model, "main")
    assert m.route == "main"
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNorm2d(4))
    with route(plain, "main"):
        pass
    with pytest.raises(ConfigError, match="branch='adv'"):
        route(plain, "adv")
    assert branches_of(plain) == ("main",)


# ----------------------------------------------------------------------------- reliability, round 3

def _rn_fn(m):
    def f(x, w, b):
        return torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))
    return f


def _rn_args(m, x):
    return (x.clone().requires_grad_(True), m.weight.detach().clone().requires_grad_(True),
            m.bias.detach().clone().requires_grad_(True))


def _with_constant_channel(seed=8):
    x = rand_x(n=2, c=3, h=3, w=2, seed=seed)
    x[:, 1] = 0.7  # range 0 over N, H, W
    return x


@pytest.mark.parametrize("training,stats", [(True, "population"), (False, "batch"), (False, "population_mean")])
@pytest.mark.parametrize("shape", ["constant_channel", "batch1_1x1"])
def test_rn_gradient_matches_finite_differences_on_a_constant_channel(training, stats, shape):
    """Where a channel's range is 0, ``range ** (p-1)`` is inf for p < 1 (the backward used to give
    NaN). With batch statistics the true derivative there is the direct path w (x - mean) / eps: the
    term of ``range ** p`` is of order |dx| ** (1+p), so finite differences with a step h where
    h ** p << eps see it. p=0.5, eps=0.5 and h=1e-10 make that error ~1e-5 relative."""
    m = randomize(RobustNorm2d(3, p=0.5, eps=0.5).double())
    m.train(training)
    m.stats = stats
    x = _with_constant_channel() if shape == "constant_channel" else rand_x(n=1, c=3, h=1, w=1, seed=3)
    if stats == "population_mean" and shape == "batch1_1x1":
        pytest.skip("population_mean at a zero range is not differentiable (x - running_mean != 0)")
    if stats == "population_mean":
        x[:, 1] = m.running_mean[1]  # the only point where it is differentiable: x - running_mean = 0
    args = _rn_args(m, x)
    assert torch.autograd.gradcheck(_rn_fn(m), args, eps=1e-10, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_rn_constant_channel_gradient_is_finite_and_the_direct_path_at_default_p(monkeypatch, channels_last):
    """At the default p=0.2, eps=1e-5, a constant channel's input gradient is, by hand,
    w / eps * (g - mean(g)) (BatchNorm's backward with scale eps and no range term); the other
    channels' gradients are unchanged by the constant one. Also on the CUDA (mask) path."""
    from rnorm import norms
    for spread in ("index", "mask"):
        if spread == "mask":
            monkeypatch.setattr(norms.robustnorm, "_spread_by_index", norms.robustnorm._spread_by_mask)
        m = randomize(RobustNorm2d(3).double()).train()
        x = _with_constant_channel()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=D)
        (m(x) * g).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(m.weight.grad).all()
        hand = m.weight[1].detach() / EPS * (g[:, 1] - g[:, 1].mean())
        torch.testing.assert_close(x.grad[:, 1], hand, rtol=1e-10, atol=1e-6)
        assert abs(float(m.weight.grad[1])) < 1e-9  # x - mean is 0 on the channel (up to rounding / eps)
        ref = randomize(RobustNorm2d(3).double()).train()
        xr = x.detach().clone()
        xr[:, 1] = rand_x(n=2, c=3, h=3, w=2, seed=1)[:, 1]  # channel 1 varying: channels 0, 2 as before
        xr.requires_grad_(True)
        (ref(xr) * g).sum().backward()
        torch.testing.assert_close(x.grad[:, [0, 2]], xr.grad[:, [0, 2]], rtol=0, atol=0)
        monkeypatch.undo()


def test_rn_batch_1_on_1x1_maps_has_zero_finite_gradient():
    """Batch 1 on 1x1 maps: every channel is constant and y = bias whatever x, so dy/dx = 0 (up to
    the rounding of x - mean, magnified by w / eps; float32 gives NaN no more either)."""
    for dtype, tol in ((D, 1e-9), (torch.float32, 1e-2)):
        m = randomize(RobustNorm2d(4)).to(dtype).train()
        x = torch.rand(1, 4, 1, 1, dtype=dtype, requires_grad=True)
        y = m(x)
        torch.testing.assert_close(y.detach(), m.bias.detach().view(1, 4, 1, 1), rtol=0, atol=tol)
        (y * torch.arange(1.0, 5.0, dtype=dtype).view(1, 4, 1, 1)).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(m.weight.grad).all()
        torch.testing.assert_close(x.grad, torch.zeros_like(x), rtol=0, atol=tol)


def test_rn_forward_and_gradient_with_a_positive_range_are_unchanged_by_the_fix():
    """Where every range is > 0 the gradient is the former expression, bit for bit (the fix only
    replaces the NaN of a zero range)."""
    m = randomize(RobustNorm2d(3, p=0.2).double()).train()
    x = rand_x(n=2, c=3, h=3, w=2, seed=8).requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    (m(x) * g).sum().backward()
    # the former d_range, written out: -grad_w * w / s * p * range ** (p - 1), spread to the max and min
    with torch.no_grad():
        mean, rng = batch_mean_range(x)
        s = rng ** 0.2 + EPS
        xhat = (x - bc(mean)) / bc(s)
        gw, gb = (g * xhat).sum(dim=(0, 2, 3)), g.sum(dim=(0, 2, 3))
        w = m.weight
        d_range = -gw * w / s * 0.2 * rng.pow(0.2 - 1)
        hand = bc(w / s) * (g - bc(gb / x[0, 0].numel() / x.shape[0]))
        hand = hand + (x == x.amax(dim=(0, 2, 3), keepdim=True)) * bc(d_range) \
            - (x == x.amin(dim=(0, 2, 3), keepdim=True)) * bc(d_range)
    torch.testing.assert_close(x.grad, hand, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"eps": 0}, r"eps=0.0 is out of range; allowed: a number > 0.0"),
    ({"eps": float("nan")}, r"eps=nan is not a finite number"),
    ({"momentum": None}, r"momentum=None .* not supported by RobustNorm2d; allowed: a number in \[0.0, 1.0\]"),
    ({"momentum": -0.1}, r"momentum=-0.1 is out of range"),
    ({"affine": "yes"}, r"affine='yes' must be True or False"),
    ({"p": float("inf")}, r"p=inf is not a finite number"),
])
def test_rn_arguments_get_batchnorms_checks(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RobustNorm2d(4, **kwargs)
    with pytest.raises(ConfigError, match="num_features=2.5"):
        RobustNorm2d(2.5)
    if "p" not in kwargs and "momentum" not in kwargs:  # the same argument, the same check in BatchNorm2d
        with pytest.raises(ConfigError, match=pattern.split(" ")[0]):
            BatchNorm2d(4, **kwargs)


def _net_with(layer):
    return nn.Sequential(nn.Conv2d(3, 4, 1), layer)


@pytest.mark.parametrize("layer,pattern", [
    (nn.SyncBatchNorm(4), r"layer '1' is an nn.SyncBatchNorm"),
    (nn.BatchNorm1d(4), r"layer '1' is an nn.BatchNorm1d; .*allowed: nn.BatchNorm2d"),
    (nn.BatchNorm3d(4), r"layer '1' is an nn.BatchNorm3d"),
    (nn.LazyBatchNorm2d(), r"layer '1' is an uninitialized LazyBatchNorm2d"),
])
def test_convert_refuses_batchnorms_it_cannot_replace_and_changes_nothing(layer, pattern):
    net = nn.Sequential(nn.BatchNorm2d(3), _net_with(layer))
    for name in ("bn", "robustnorm", "multibn", "none"):
        with pytest.raises(ConfigError, match=pattern.replace("'1'", "'1.1'")):
            convert_norms(net, name)
        assert type(net[0]) is nn.BatchNorm2d and net[1][1] is layer  # refused before any change


@pytest.mark.parametrize("name", ["bn", "multibn", "robustnorm"])
def test_convert_keeps_affine_false_without_parameters(name):
    net = _net_with(nn.BatchNorm2d(4, affine=False))
    convert_norms(net, name)
    assert net[1].weight is None and net[1].bias is None and not net[1].affine
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]  # no trainable gamma / beta
    if name == "multibn":
        assert all(a.weight is None for a in net[1].aux.values())


def test_convert_untracked_bn_to_robustnorm_keeps_batch_statistics_at_inference():
    net = _net_with(nn.BatchNorm2d(4, track_running_stats=False)).double().eval()
    convert_norms(net, "robustnorm")
    assert net[1].stats == "batch"
    x = rand_x(n=4, c=3, seed=2)
    with torch.no_grad():
        h = net[0](x)
        mean, rng = batch_mean_range(h)
        torch.testing.assert_close(net(x), hand_rn(h, mean, rng, 0.2, net[1].weight, net[1].bias), rtol=0, atol=1e-12)
    explicit = convert_norms(_net_with(nn.BatchNorm2d(4, track_running_stats=False)), "robustnorm", stats="population")
    assert explicit[1].stats == "population"  # a mode given by the caller wins


def test_convert_keeps_momentum_none_or_refuses_it_for_robustnorm():
    net = _net_with(nn.BatchNorm2d(4, momentum=None))
    assert convert_norms(copy.deepcopy(net), "bn")[1].momentum is None  # cumulative average, as before
    assert convert_norms(copy.deepcopy(net), "multibn")[1].aux["adv"].momentum is None
    with pytest.raises(ConfigError, match=r"layer '1' has momentum=None .* give momentum="):
        convert_norms(copy.deepcopy(net), "robustnorm")
    assert convert_norms(copy.deepcopy(net), "robustnorm", momentum=0.2)[1].momentum == 0.2

