"""Tests of rnorm.train: routing of slices to branches, example generation, recipes, precision."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rnorm import train as T
from rnorm.models import resnet20
from rnorm.norms import MultiBatchNorm2d, route, use_stats

EPS = 8 / 255



def tiny(norm="multibn", branches=("adv", "easy"), **kw):
    torch.manual_seed(0)
    if norm == "multibn":
        kw["branches"] = branches
    return resnet20(num_classes=10, in_channels=1, width=4, norm=norm, mean=(0.5,), std=(0.25,), **kw)


def sgd(model, lr=0.05):
    return T.make_optimizer(model, lr, 0.9, 0.0)


def buffers(model):
    return {k: v.detach().clone() for k, v in model.named_buffers()}


def same_buffers(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def multibn_layers(model):
    return [m for m in model.modules() if isinstance(m, MultiBatchNorm2d)]


def real_batch(n):
    """n FashionMNIST training images if the files are there, else a separable synthetic set."""
    root = Path(os.environ.get("RNORM_DATA", "data")) / "FashionMNIST" / "raw"
    if (root / "train-images-idx3-ubyte").exists() or (root / "train-images-idx3-ubyte.gz").exists():
        from rnorm import data
        x, y = data.load("fashion_mnist", "train")
        x, y = data.subset(x, y, n, seed=0)
        return x.float() / 255, y
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    for k in range(10):  # class k: a bright horizontal band at rows 2k..2k+3
        x[y == k, :, 2 * k + 2:2 * k + 6, :] += 0.6
    return x.clamp(0, 1), y


# ------------------------------------------------------------------------------------ recipes
def test_recipes_and_branches():
    assert set(T.RECIPES) == {"standard", "pgd_at", "advprop", "ebn", "advprop_ebn"}
    assert T.branches_for("standard") == ()
    assert T.branches_for("pgd_at") == ()
    assert T.branches_for("advprop") == ("adv",)
    assert T.branches_for("ebn") == ("easy",)
    assert T.branches_for("advprop_ebn") == ("adv", "easy")
    assert T.metric_columns("advprop") == ["loss", "loss_main", "acc_main", "loss_adv", "acc_adv"]
    with pytest.raises(T.ConfigError, match="recipe.*advprop"):
        T.branches_for("adv_prop")


# ------------------------------------------------------------------------------------ routing
def _fixed_examples(offsets):
    """A stand-in for make_examples: clean images as they are, others shifted to a far-off mean."""
    def fake(model, x, y, kind, branch, cfg=None):
        return x if kind == "clean" else (x * 0.1 + offsets[kind]).clamp(0, 1)
    return fake


@pytest.mark.parametrize("recipe", ["advprop", "ebn", "advprop_ebn"])
def test_each_branch_running_stats_move_only_with_its_slice(recipe, monkeypatch):
    offsets = {"adv": 0.9, "easy": 0.5}
    monkeypatch.setattr(T, "make_examples", _fixed_examples(offsets))
    model = tiny()  # both auxiliary branches, so an unused one can be seen to stay untouched
    n = 12
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.2
    y = torch.randint(0, 10, (n,), generator=g)
    before = copy.deepcopy(model)
    layers, seen = multibn_layers(model), {}
    hooks = [m.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, a[0].detach().clone()))
             for i, m in enumerate(layers)]
    out = T.train_step(model, sgd(model), x, y, recipe, {"train_steps": 1})
    for h in hooks:
        h.remove()
    slices = T.RECIPES[recipe].slices
    assert set(out) == {"n", *T.metric_columns(recipe)}
    # default loss weighting: the mean over slices of the per-slice mean cross-entropies
    assert out["loss"] == pytest.approx(sum(out[f"loss_{b}"] for b, _ in slices) / len(slices))

    # 1) First norm layer: its input does not depend on routing, so compare with plain
    #    nn.BatchNorm2d layers fed each slice on their own.
    old = before.net.bn1
    for branch, kind in slices:
        xs = T.make_examples(before, x, y, kind, branch)
        ref = nn.BatchNorm2d(4)
        src = (old if branch == "main" else old.aux[branch]).state_dict()
        ref.load_state_dict({k: v for k, v in src.items() if not k.startswith("aux.")})
        ref.train()
        with torch.no_grad():
            ref(before.net.conv1(before.normalize(xs)))
        got = model.net.bn1 if branch == "main" else model.net.bn1.aux[branch]
        torch.testing.assert_close(got.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.running_var, ref.running_var, rtol=1e-5, atol=1e-6)

    # 2) Every multi-branch layer: each branch's buffers are the EMA of its own slice of the
    #    layer's actual input, and a branch the recipe does not use is untouched.
    used = {b for b, _ in slices}
    for i, (new, ref) in enumerate(zip(layers, multibn_layers(before))):
        parts = dict(zip([b for b, _ in slices], seen[i].split(n)))
        for branch in ("main", "adv", "easy"):
            a = new if branch == "main" else new.aux[branch]
            r = ref if branch == "main" else ref.aux[branch]
            if branch not in used:
                assert torch.equal(a.running_mean, r.running_mean) and torch.equal(a.running_var, r.running_var)
                assert a.num_batches_tracked == r.num_batches_tracked
                continue
            s = parts[branch]
            exp_mean = 0.9 * r.running_mean + 0.1 * s.mean(dim=(0, 2, 3))
            exp_var = 0.9 * r.running_var + 0.1 * s.var(dim=(0, 2, 3), unbiased=True)
            torch.testing.assert_close(a.running_mean, exp_mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.running_var, exp_var, rtol=1e-4, atol=1e-5)
            assert a.num_batches_tracked == r.num_batches_tracked + 1
    # the slices really are different, so a mix-up could not pass by accident
    assert (seen[0].split(n)[0].mean() - seen[0].split(n)[1].mean()).abs() > 0.1


def test_routing_is_reset_after_a_step(monkeypatch):
    monkeypatch.setattr(T, "make_examples", _fixed_examples({"adv": 0.9, "easy": 0.5}))
    model = tiny()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    T.train_step(model, sgd(model), x, y, "advprop_ebn", None)
    assert all(m.route == "main" for m in multibn_layers(model))
    assert model.training


# ------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("kind,branch,norm", [("adv", "adv", "multibn"), ("easy", "easy", "multibn"),
                                              ("adv", "main", "bn"), ("adv", "main", "robustnorm")])
@pytest.mark.parametrize("attack_stats", ["batch", "population"])
def test_generation_touches_no_buffer_and_sees_its_branch(kind, branch, norm, attack_stats):
    model = tiny(norm=norm)
    model.train()
    x, y = real_batch(16)
    snap = buffers(model)
    states = []
    norm_layers = [m for m in model.modules() if hasattr(m, "stats") and not isinstance(m, nn.ModuleDict)]
    probe = norm_layers[0]
    h = probe.register_forward_pre_hook(
        lambda m, a: states.append((m.training, m.stats, getattr(m, "route", "main"))))
    xa = T.make_examples(model, x, y, kind, branch, {"train_steps": 3, "attack_stats": attack_stats})
    h.remove()
    assert same_buffers(snap, buffers(model)), "example generation changed a running buffer"
    assert model.training, "train mode must be restored"
    assert states and all(s == (False, attack_stats, branch) for s in states), states
    assert all(m.stats == "population" for m in norm_layers)
    assert all(m.route == "main" for m in multibn_layers(model))
    assert not xa.requires_grad and xa.dtype == torch.float32
    assert (xa - x).abs().max() <= EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert (xa - x).abs().max() > EPS / 2  # it really moved
    # PGD raises the branch's loss, easy examples lower it (batch statistics of that branch)
    model.eval()
    with torch.no_grad(), use_stats(model, attack_stats), route(model, branch):
        l0, l1 = F.cross_entropy(model(x), y), F.cross_entropy(model(xa), y)
    assert (l1 > l0) if kind == "adv" else (l1 < l0)


def test_generation_uses_the_step_settings(monkeypatch):
    captured = {}
    real = T._attacks.make_attack

    def spy(name, model, eps, **params):
        captured.update(name=name, eps=eps, **params)
        return real(name, model, eps, **params)

    monkeypatch.setattr(T._attacks, "make_attack", spy)
    model = tiny()
    x, y = real_batch(4)
    T.make_examples(model, x, y, "easy", "easy", {"train_eps": 4 / 255, "train_steps": 2})
    assert captured == dict(name="easy", eps=4 / 255, steps=2, alpha=2.5 * (4 / 255) / 2, random_start=True)
    T.make_examples(model, x, y, "adv", "adv", {"train_eps": 0.1, "train_steps": 3, "train_alpha": 0.01})
    assert captured["name"] == "pgd" and captured["alpha"] == 0.01 and captured["steps"] == 3


# ------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("recipe,norm", [("standard", "bn"), ("standard", "robustnorm"), ("pgd_at", "bn"),
                                         ("pgd_at", "none"), ("advprop", "multibn"), ("ebn", "multibn"),
                                         ("advprop_ebn", "multibn")])
def test_each_recipe_lowers_the_training_loss(recipe, norm):
    # 12 steps on one batch of 64. RobustNorm (p=0.2) and the norm-free SkipInit network start
    # slowly at this learning rate, so they get a looser (but still strict) threshold.
    torch.manual_seed(0)
    model = tiny(norm=norm, branches=T.branches_for(recipe))
    opt = sgd(model, lr=0.1)
    x, y = real_batch(64)
    cfg = {"train_steps": 2, "train_eps": 4 / 255}
    losses = [T.train_step(model, opt, x, y, recipe, cfg)["loss"] for _ in range(12)]
    ratio = {"bn": 0.85, "multibn": 0.85, "robustnorm": 0.98, "none": 0.995}[norm]
    assert sum(losses[-3:]) < ratio * sum(losses[:3]), losses
    assert losses[-1] < losses[0]


def test_bf16_channels_last_step_runs_and_learns():
    torch.manual_seed(0)
    model = tiny(branches=("adv",)).to(memory_format=torch.channels_last)
    opt = sgd(model, lr=0.1)  # the two slices' losses are averaged: 0.1 here is the step of 0.05 on their sum
    x, y = real_batch(64)
    cfg = {"train_steps": 1, "precision": "bf16", "channels_last": True}
    seen = []
    h = model.net.conv1.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    losses = [T.train_step(model, opt, x, y, "advprop", cfg)["loss"] for _ in range(10)]
    h.remove()
    assert seen[-1], "training input is channels_last"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "fp32 master weights"
    assert model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses


def test_bf16_forward_really_uses_autocast():
    model = tiny(branches=())
    dtypes = []
    h = model.net.fc.register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
    x, y = real_batch(8)
    T.train_step(model, sgd(model), x, y, "standard", {"precision": "bf16"})
    T.train_step(model, sgd(model), x, y, "standard", {"precision": "fp32"})
    h.remove()
    assert dtypes == [torch.bfloat16, torch.float32]


# ------------------------------------------------------------------------------ schedule
def test_lr_shapes():
    cos = T.LRShape("cosine", 100, 10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    step = T.LRShape("step", 100)
    assert [step(i) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert T.LRShape("constant", 100, 0)(99) == 1.0
    with pytest.raises(T.ConfigError, match="schedule"):
        T.LRShape("cosinus", 10)


def test_scheduler_state_round_trips_with_weights_only(tmp_path):
    model = tiny(branches=())
    opt = sgd(model)
    sch = T.make_scheduler(opt, "cosine", 20, 2)
    for _ in range(7):
        opt.step()
        sch.step()
    torch.save({"s": sch.state_dict(), "o": opt.state_dict()}, tmp_path / "s.pt")
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = sgd(model)
    sch2 = T.make_scheduler(opt2, "cosine", 20, 2)
    opt2.load_state_dict(blob["o"])
    sch2.load_state_dict(blob["s"])
    for _ in range(3):
        opt.step(), sch.step(), opt2.step(), sch2.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_epoch_plan_drops_only_a_single_image_last_batch():
    assert T.epoch_plan(129, 128) == (1, True)
    assert T.epoch_plan(130, 128) == (2, False)
    assert T.epoch_plan(256, 128) == (2, False)
    assert T.epoch_plan(50, 128) == (1, False)


def test_step_settings_validation():
    with pytest.raises(T.ConfigError, match="attack_stats"):
        T.StepSettings(attack_stats="running")
    with pytest.raises(T.ConfigError, match="train_eps"):
        T.StepSettings(train_eps=2.0)
    assert T.StepSettings(train_eps=0.1, train_steps=5).alpha == pytest.approx(0.05)


# ------------------------------------------------------------------------------------ loss weighting
def _shared_weight_grad(recipe, loss_weighting, monkeypatch):
    """The gradient on the first convolution's weight after one step on identical slices."""
    monkeypatch.setattr(T, "make_examples", lambda model, x, y, kind, branch, cfg=None: x)  # every slice = x
    model = tiny(norm="multibn" if T.branches_for(recipe) else "bn", branches=T.branches_for(recipe))
    x, y = real_batch(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, .grad stays
    T.train_step(model, opt, x, y, recipe, {"train_steps": 1, "loss_weighting": loss_weighting})
    return model.net.conv1.weight.grad.clone()


@pytest.mark.parametrize("recipe,k", [("advprop", 2), ("ebn", 2), ("advprop_ebn", 3)])
def test_mean_weighting_gives_every_recipe_the_gradient_scale_of_standard(recipe, k, monkeypatch):
    """On identical slices every branch sees the same images and statistics, so with the default
    ("mean") the shared weight's gradient equals standard training's; with "sum" it is k times it."""
    standard = _shared_weight_grad("standard", "mean", monkeypatch)
    assert standard.abs().sum() > 0
    tol = dict(rtol=0, atol=1e-3 * float(standard.abs().max()))  # float32 sums in another order; k x would miss by far
    torch.testing.assert_close(_shared_weight_grad(recipe, "mean", monkeypatch), standard, **tol)
    torch.testing.assert_close(_shared_weight_grad(recipe, "sum", monkeypatch), k * standard,
                               rtol=0, atol=k * tol["atol"])


@pytest.mark.parametrize("recipe", list(T.RECIPES))
def test_a_training_step_never_reads_back_to_the_host(monkeypatch, recipe):
    """On CUDA a read-back (``item``, ``float``, ``bool`` of a tensor, ``nonzero``) makes the host wait
    for the device. The step used in the hot loop, attacks included, calls none of them; detected on
    CPU by making each one raise."""
    torch.manual_seed(0)
    model = tiny()  # multibn with adv and easy branches serves every recipe
    opt = sgd(model)
    x, y = real_batch(16)

    def sync(*a, **k):
        raise AssertionError("host read-back in the training step")
    for name in ("item", "tolist", "nonzero", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    monkeypatch.setattr(torch, "nonzero", sync)
    out = T.step_metrics(model, opt, x, y, recipe, {"train_steps": 2})
    monkeypatch.undo()
    assert set(out) == {"n", *T.metric_columns(recipe)}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for k, v in out.items() if k != "n")


def test_one_step_training_attack_lands_on_the_surface_when_its_step_reaches_across_the_ball():
    """Why 04's training attack steps by eps / steps: from a random start, one step of at least 2*eps puts
    every pixel on the ball's surface (|delta| = eps: an FGSM taken at a random point), erasing the start;
    a step of eps keeps part of it inside the ball."""
    model = tiny()
    torch.manual_seed(1)
    x, y = torch.rand(16, 1, 28, 28) * 0.8 + 0.1, torch.randint(0, 10, (16,))
    interior = (x > EPS) & (x < 1 - EPS)  # where clamping to [0, 1] cannot cut delta
    wide = T.make_examples(model, x, y, "adv", "adv", {"train_eps": EPS, "train_steps": 1})  # default 2.5 eps
    narrow = T.make_examples(model, x, y, "adv", "adv", {"train_eps": EPS, "train_steps": 1, "train_alpha": EPS})
    on_surface = lambda xa: ((xa - x).abs() > EPS - 1e-5)[interior].float().mean().item()
    assert on_surface(wide) > 0.99
    assert ((narrow - x).abs() <= EPS + 1e-6).all()
    assert on_surface(narrow) < 0.8  # the random start survives in part
