"""Tests of rnorm.attacks and of how rnorm's norm layers behave under torchattacks.

The reference for every attack is a hand-written loop (FGSM, PGD, PGD targeted at the true
label) in float64, and for the statistics modes a copy of the model whose BatchNorms are
replaced by a hand computation of batch (or running) statistics.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

from rnorm._validate import ConfigError
from rnorm.attacks import Attack, format_eps, make_attack, parse_eps
from rnorm.models import resnet20
from rnorm.norms import BatchNorm2d, MultiBatchNorm2d, route, use_stats

EPS = 8 / 255



def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    # a learnable signal: the class shifts the brightness of one channel; then clip to [0, 1]
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.6 + 0.2
    x[torch.arange(n), y % 3] += (y[:, None, None].float() - 4.5) / 20
    x[:, :, :2] = 0.0  # some pixels at the bounds so that clipping to [0, 1] matters
    x[:, :, -2:] = 1.0
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """resnet20 (depth 8, width 8, BN) trained for 20 SGD steps on seeded synthetic data."""
    torch.manual_seed(0)
    model = resnet20(width=8, depth=8, norm="bn")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(20):
        x, y = _data(32, seed=step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _data(16, seed=1000)
    return model, x, y


@pytest.fixture
def model(trained):
    m, x, y = trained
    return copy.deepcopy(m).eval(), x.clone(), y.clone()


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


# ----------------------------------------------------------------------------- hand-made references

def hand_pgd(model, x, y, eps, alpha, steps, targeted=False):
    """PGD (no random start) written out: signed-gradient steps, projection, clipping."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (g,) = torch.autograd.grad(-loss if targeted else loss, adv)
        adv = adv.detach() + alpha * g.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


class HandBN(nn.Module):
    """BatchNorm by hand: the batch's mean and biased variance (``batch``) or the running ones."""

    def __init__(self, bn: nn.BatchNorm2d, mode: str):
        super().__init__()
        self.mode = mode
        self.eps = bn.eps
        for k in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(k, getattr(bn, k).detach().clone())

    def forward(self, x):
        if self.mode == "batch":
            mean = x.mean(dim=(0, 2, 3))
            var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def with_hand_bn(model, mode):
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, HandBN(child, mode))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    return twin


def buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def assert_same_buffers(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"buffer {k} changed"


# ----------------------------------------------------------------------------- the attacks themselves

@pytest.mark.parametrize("name", ["fgsm", "pgd", "easy", "apgd", "noise_sign", "noise_uniform"])
def test_attack_stays_in_the_ball_and_in_range(model, name):
    m, x, y = model
    torch.manual_seed(0)
    adv = make_attack(name, m, EPS)(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert (adv - x).abs().max().item() > EPS / 2  # it did move
    # pixels at the bounds stay at the bounds on the side that is clipped
    assert (adv[:, :, :2] >= 0).all() and (adv[:, :, -2:] <= 1).all()


def test_pgd_raises_the_loss_and_easy_lowers_it(model):
    m, x, y = model
    clean = ce(m, x, y)
    torch.manual_seed(0)
    up = ce(m, make_attack("pgd", m, EPS, steps=10)(x, y), y)
    torch.manual_seed(0)
    down = ce(m, make_attack("easy", m, EPS)(x, y), y)
    torch.manual_seed(0)
    fgsm = ce(m, make_attack("fgsm", m, EPS)(x, y), y)
    assert up > clean * 1.2, (clean, up)
    assert down < clean * 0.8, (clean, down)
    assert fgsm > clean
    with torch.no_grad():  # an attack called under no_grad still gets its gradients
        torch.manual_seed(0)
        x_easy = make_attack("easy", m, EPS)(x, y)
        # the easy examples are classified at least as often correctly
        assert (m(x_easy).argmax(1) == y).float().mean() >= (m(x).argmax(1) == y).float().mean()
    assert ce(m, x_easy, y) == pytest.approx(down, rel=1e-6)


@pytest.mark.parametrize("name,targeted", [("pgd", False), ("easy", True)])
def test_pgd_and_easy_equal_a_hand_written_loop(model, name, targeted):
    m, x, y = model
    m, x = m.double(), x.double()
    atk = make_attack(name, m, EPS, steps=4, alpha=EPS / 3, random_start=False)
    torch.testing.assert_close(atk(x, y), hand_pgd(m, x, y, EPS, EPS / 3, 4, targeted), rtol=0, atol=1e-12)


def test_fgsm_equals_a_hand_written_step(model):
    m, x, y = model
    m, x = m.double(), x.double()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(m(xr), y), xr)
    torch.testing.assert_close(make_attack("fgsm", m, EPS)(x, y), (x + EPS * g.sign()).clamp(0, 1), rtol=0, atol=1e-12)


def test_defaults_and_repr(model):
    m, _, _ = model
    pgd = make_attack("pgd", m, EPS)
    assert pgd.params == {"steps": 20, "alpha": 2.5 * EPS / 20, "random_start": True, "restarts": 1}
    assert isinstance(pgd._impl, torchattacks.PGD)  # one run: torchattacks' PGD itself, nothing around it
    assert pgd._impl.steps == 20 and pgd._impl.alpha == pytest.approx(2.5 * EPS / 20) and pgd._impl.eps == EPS
    easy = make_attack("easy", m, EPS)
    assert easy.params["steps"] == 10 and easy._impl.targeted and not pgd._impl.targeted
    assert make_attack("pgd", m, EPS, alpha=EPS / 10).params["alpha"] == EPS / 10
    assert repr(pgd).startswith("Attack('pgd', eps=0.0313725, steps=20")
    aa = make_attack("autoattack", m, EPS)
    assert aa.params == {"version": "standard", "seed": 0, "n_classes": 10}
    pgd3 = make_attack("pgd", m, EPS, restarts=3)
    assert pgd3.params["restarts"] == 3 and pgd3._impl.restarts == 3 and pgd3._impl.attack.steps == 20
    assert "restarts=3" in repr(pgd3) and "restarts" not in easy.params
    apgd = make_attack("apgd", m, EPS)
    assert apgd.params == {"steps": 100, "restarts": 1, "seed": 0}
    a = apgd._impl.attack  # as in AutoAttack's standard version: APGD-CE, 100 steps, rho 0.75
    assert isinstance(a, torchattacks.APGD)
    assert (a.norm, a.eps, a.steps, a.n_restarts, a.seed, a.loss, a.thr_decr) == ("Linf", EPS, 100, 1, 0, "ce", 0.75)
    a = make_attack("apgd", m, EPS, steps=7, restarts=2, seed=5)._impl.attack
    assert (a.steps, a.n_restarts, a.seed) == (7, 2, 5)
    for name in ("noise_sign", "noise_uniform"):
        assert make_attack(name, m, EPS).params == {}


@pytest.mark.parametrize("name", ["fgsm", "pgd", "easy", "autoattack", "apgd", "noise_sign", "noise_uniform"])
def test_eps_zero_returns_the_input(model, name):
    m, x, y = model
    adv = make_attack(name, m, 0)(x, y)
    assert torch.equal(adv, x) and adv is not x
    assert not adv.requires_grad


def test_autocast_is_switched_off_inside_the_attack(model):
    m, x, y = model
    torch.manual_seed(0)
    ref = make_attack("pgd", m, EPS, steps=3)(x, y)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adv = make_attack("pgd", m, EPS, steps=3)(x, y)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match="dtype torch.float16"):
        make_attack("pgd", m, EPS)(x.half(), y)


def _check_autoattack(m, x, y):
    adv = make_attack("autoattack", m, EPS, version="standard", seed=0)(x, y)
    assert adv.shape == x.shape and not adv.requires_grad and adv.grad_fn is None
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min().item() >= 0 and adv.max().item() <= 1
    with torch.no_grad():  # AutoAttack keeps an image only where it fools the model
        assert (m(adv).argmax(1) == y).sum() <= (m(x).argmax(1) == y).sum()
    return adv


def test_autoattack_stays_in_the_ball():
    """An untrained tiny model: APGD-CE fools every image, so only the first attack runs."""
    torch.manual_seed(0)
    m = resnet20(width=4, depth=8, norm="bn").eval()
    x, y = _data(8, seed=5)
    adv = _check_autoattack(m, x, y)
    assert (adv - x).abs().max().item() > EPS / 2


@pytest.mark.slow
def test_autoattack_full_pipeline_stays_in_the_ball(trained):
    """The trained model resists APGD-CE on some images: APGD-T, FAB-T and Square run too (~7 s)."""
    m, x, y = trained
    _check_autoattack(copy.deepcopy(m), x[:8], y[:8])


# ----------------------------------------------------------------------------- random-noise controls


class Boom(nn.Module):
    """A model whose forward fails: an attack that calls the model cannot run on it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        raise AssertionError("the model was called")


def _unclipped(adv):
    return (adv > 0) & (adv < 1)


def test_noise_sign_moves_every_pixel_by_eps():
    x, y = _data(16, seed=7)
    x = x.double()
    torch.manual_seed(0)
    adv = make_attack("noise_sign", Boom(), EPS)(x, y)
    delta, inner = adv - x, _unclipped(adv)
    assert inner.float().mean() > 0.8  # most pixels are inside (0, 1), so the test below is about them
    torch.testing.assert_close(delta[inner].abs(), torch.full_like(delta[inner], EPS), rtol=0, atol=1e-12)
    assert 0.48 < (delta[inner] > 0).double().mean().item() < 0.52  # the sign is a fair coin
    # the pixels at 0 and 1 move inwards by eps or are clipped back to the bound
    low, high = delta[:, :, :2], delta[:, :, -2:]
    for d, inward in ((low, EPS), (high, -EPS)):
        moved = (d - inward).abs() < 1e-12
        assert ((d == 0) | moved).all() and 0.45 < moved.double().mean().item() < 0.55
    # float32 images: the same up to float32 rounding
    adv32 = make_attack("noise_sign", Boom(), EPS)(x.float(), y)
    assert adv32.dtype == torch.float32
    d32 = (adv32 - x.float())[_unclipped(adv32)].abs()
    torch.testing.assert_close(d32, torch.full_like(d32, EPS), rtol=0, atol=1e-6)


def test_noise_uniform_is_uniform_in_the_ball():
    x, y = _data(16, seed=7)
    x = x.double()
    torch.manual_seed(0)
    adv = make_attack("noise_uniform", Boom(), EPS)(x, y)
    d = (adv - x)[_unclipped(adv)]
    assert d.numel() > 30000
    assert d.abs().max().item() <= EPS + 1e-12
    assert d.abs().mean().item() == pytest.approx(EPS / 2, rel=0.02)  # E|u| = eps / 2
    assert d.mean().item() == pytest.approx(0, abs=0.01 * EPS)
    assert (d.abs() < EPS / 4).double().mean().item() == pytest.approx(0.25, abs=0.01)  # not all at +-eps
    # it is PGD's random start: x + U[-eps, eps] from the global generator, clipped to [0, 1]
    torch.manual_seed(0)
    torch.testing.assert_close(adv, (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["noise_sign", "noise_uniform"])
def test_noise_never_calls_the_model_and_is_seeded_by_torch(model, name):
    m, x, y = model
    with pytest.raises(AssertionError, match="the model was called"):
        make_attack("fgsm", Boom(), EPS)(x, y)  # Boom really fails when an attack calls it
    torch.manual_seed(3)
    a = make_attack(name, Boom(), EPS)(x, y)
    b = make_attack(name, Boom(), EPS)(x, y)
    torch.manual_seed(3)
    c = make_attack(name, m, EPS)(x, y)  # another model, same seed: the same noise
    assert torch.equal(a, c)
    assert not torch.equal(a, b)  # the generator moves on: two calls give two draws
    torch.manual_seed(4)
    assert not torch.equal(a, make_attack(name, m, EPS)(x, y))
    # the labels play no part either
    torch.manual_seed(3)
    assert torch.equal(a, make_attack(name, m, EPS)(x, (y + 1) % 10))


# ----------------------------------------------------------------------------- APGD and PGD restarts


@pytest.fixture(scope="module")
def fitted():
    """A one-conv BN net with global max pooling fitted (Adam, 80 steps) to the synthetic data: 21 of
    its 32 images right, and the max makes it sensitive to PGD's random start, so that attacks of
    different strength, and restarts, fool different numbers of images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for step in range(80):
        x, y = _data(32, seed=step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _data(32, seed=1000)
    return model, x, y


def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def test_apgd_is_at_least_as_strong_as_fgsm(fitted):
    m, x, y = fitted
    eps = 2 / 255
    clean = correct(m, x, y)
    fgsm = correct(m, make_attack("fgsm", m, eps)(x, y), y)
    adv = make_attack("apgd", m, eps, steps=20)(x, y)
    apgd = correct(m, adv, y)
    assert clean.float().mean() >= 0.6 and fgsm.sum() < clean.sum()  # a model worth attacking, FGSM fools some
    assert apgd.sum() <= fgsm.sum() and apgd.sum() < clean.sum()
    # torchattacks' APGD keeps only successful examples: an image is fooled or returned unchanged
    unchanged = (adv == x).flatten(1).all(1)
    assert (unchanged | ~apgd).all() and (~unchanged).any()
    assert unchanged[~clean].all()  # an image misclassified from the start is not attacked
    # more restarts (same seed: the same first run) fool every image one restart fools
    apgd3 = correct(m, make_attack("apgd", m, eps, steps=20, restarts=3)(x, y), y)
    assert not (apgd3 & ~apgd).any()


def test_apgd_is_seeded_by_its_seed_and_leaves_the_callers_random_state(fitted):
    m, x, y = fitted
    atk = make_attack("apgd", m, 8 / 255, steps=5)
    torch.manual_seed(1)
    a = atk(x, y)
    after = torch.rand(4)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(4))  # the attack did not reseed the caller's generator
    torch.manual_seed(2)
    assert torch.equal(a, atk(x, y))  # the global seed plays no part
    b = make_attack("apgd", m, 8 / 255, steps=5, seed=1)(x, y)
    assert not torch.equal(a, b)  # its own seed does


def _pgd_runs(m, x, y, eps, runs, **kw):
    """``runs`` one-restart PGD runs in a row after torch.manual_seed(0), and their predictions."""
    torch.manual_seed(0)
    advs = [make_attack("pgd", m, eps, **kw)(x, y) for _ in range(runs)]
    with torch.no_grad():
        wrong = [m(a).argmax(1) != y for a in advs]
    return advs, wrong


def _combine(advs, wrong):
    """The restarts rule by hand: each image's first fooling example, else the last run's."""
    out = advs[-1].clone()
    for i in range(len(advs[0])):
        for a, w in zip(advs, wrong):
            if w[i]:
                out[i] = a[i]
                break
    return out


def test_pgd_restarts_keep_the_first_fooling_example(fitted):
    m, x, y = fitted
    eps, kw = 2 / 255, dict(steps=1)
    advs, wrong = _pgd_runs(m, x, y, eps, 3, **kw)
    torch.manual_seed(0)
    one = make_attack("pgd", m, eps, **kw)(x, y)
    torch.manual_seed(0)
    three = make_attack("pgd", m, eps, restarts=3, **kw)(x, y)
    assert torch.equal(one, advs[0])
    torch.testing.assert_close(three, _combine(advs, wrong), rtol=0, atol=0)
    c1, c3 = correct(m, one, y), correct(m, three, y)
    assert not (c3 & ~c1).any()  # per image: fooled by restart 1, still fooled
    assert torch.equal(three[~c1], one[~c1])  # ... by restart 1's example
    fooled_by_none = ~torch.stack(wrong).any(0)
    assert torch.equal(c3, fooled_by_none)  # correct after 3 restarts exactly where no restart fooled it
    assert (three - x).abs().max().item() <= eps + 1e-6 and three.min() >= 0 and three.max() <= 1


def test_pgd_restarts_predict_in_eval_mode_with_the_callers_statistics(fitted):
    """A model in train() with batch statistics: the runs and the per-restart predictions use eval()
    and batch statistics; no running buffer changes; every module's training flag comes back."""
    m, x, y = fitted
    m = copy.deepcopy(m)
    eps, kw = 2 / 255, dict(steps=1)
    with use_stats(m, "batch"):
        advs, _ = _pgd_runs(m, x, y, eps, 3, **kw)
        with torch.no_grad():
            wrong = [m(a).argmax(1) != y for a in advs]  # eval, batch statistics
    m.train()
    m[-1].eval()  # a mixed set of flags, which a blanket train() afterwards would lose
    flags = {n: mod.training for n, mod in m.named_modules()}
    before = buffers(m)
    torch.manual_seed(0)
    with use_stats(m, "batch"):
        adv = make_attack("pgd", m, eps, restarts=3, **kw)(x, y)
    assert flags == {n: mod.training for n, mod in m.named_modules()}
    assert_same_buffers(before, buffers(m))
    torch.testing.assert_close(adv, _combine(advs, wrong), rtol=0, atol=0)
    # population-statistics predictions would pick other examples here, so the mode matters
    with torch.no_grad():
        wrong_pop = [m.eval()(a).argmax(1) != y for a in advs]
    assert not torch.equal(_combine(advs, wrong_pop), adv)


def test_new_attacks_in_evaluate(fitted):
    """evaluate() takes the new names: APGD on all the images with a seed from the grid's, the noise
    controls without parameters, PGD restarts recorded; APGD in batch statistics warns."""
    from rnorm.evaluate import EVAL_ATTACKS, evaluate
    m, x, y = fitted
    names = ("clean", "apgd", "noise_sign", "noise_uniform", "pgd")
    assert set(names) <= set(EVAL_ATTACKS)
    kw = dict(attacks=names, eps=(2 / 255,), batch_sizes=(16,), device="cpu",
              attack_params={"apgd": {"steps": 5}, "pgd": {"steps": 1, "restarts": 2}})
    df = evaluate(m, x, y, **kw).set_index("attack")
    assert (df.n == 32).all()
    params = df.params.map(json.loads)
    assert params["noise_sign"] == {} and params["noise_uniform"] == {} and params["pgd"]["restarts"] == 2
    assert params["apgd"]["steps"] == 5 and params["apgd"]["seed"] != 0  # derived from the grid's seed
    assert df.accuracy["apgd"] < df.accuracy["clean"]
    assert df.equals(evaluate(m, x, y, **kw).set_index("attack").assign(seconds=df.seconds))  # reproducible
    with pytest.warns(UserWarning, match="APGD in a batch-dependent"):
        evaluate(m, x, y, attacks=("apgd",), eps=(2 / 255,), stats=("batch",), batch_sizes=(16,), device="cpu",
                 attack_params={"apgd": {"steps": 2}})


def test_restarts_must_be_a_positive_integer(model):
    m = model[0]
    for bad, pattern in [(0, r"restarts=0 is out of range"), ("two", r"restarts='two' must be an integer"),
                         (-1, r"restarts=-1"), (1.5, r"restarts=1.5"), (True, r"restarts=True")]:
        with pytest.raises(ConfigError, match=pattern):
            make_attack("pgd", m, EPS, restarts=bad)
        with pytest.raises(ConfigError, match=pattern):
            make_attack("apgd", m, EPS, restarts=bad)
    with pytest.raises(ConfigError, match=r"attack 'easy' takes no parameter restarts=2; allowed: alpha, "
                                          r"random_start, steps"):
        make_attack("easy", m, EPS, restarts=2)
    with pytest.raises(ConfigError, match=r"attack 'apgd' takes no parameter alpha"):
        make_attack("apgd", m, EPS, alpha=0.1)
    with pytest.raises(ConfigError, match=r"attack 'noise_sign' takes no parameter steps=3; allowed: none"):
        make_attack("noise_sign", m, EPS, steps=3)
    with pytest.raises(ConfigError, match=r"attack 'noise_uniform' takes no parameter seed"):
        make_attack("noise_uniform", m, EPS, seed=0)
    with pytest.raises(ConfigError, match=r"steps=0"):
        make_attack("apgd", m, EPS, steps=0)
    with pytest.raises(ConfigError, match=r"seed=-1"):
        make_attack("apgd", m, EPS, seed=-1)
    with pytest.raises(ConfigError, match=r"restarts=2 needs random_start=True"):
        make_attack("pgd", m, EPS, restarts=2, random_start=False)
    assert make_attack("pgd", m, EPS, restarts=1, random_start=False).params["restarts"] == 1
    assert make_attack("pgd", m, EPS, restarts=2.0).params["restarts"] == 2


# ----------------------------------------------------------------------------- eps and argument checks

@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), (" 4/255 ", 4 / 255), ("0.03", 0.03), (0.5, 0.5),
                                        (0, 0.0), ("1", 1.0), ("0/255", 0.0)])
def test_parse_eps(text, value):
    assert parse_eps(text) == value


@pytest.mark.parametrize("bad,pattern", [
    (-0.1, r"eps=-0.1 is out of range"), (1.5, r"eps=1.5 is out of range"), ("abc", r"eps='abc' is not a number"),
    ("8/0", r"eps='8/0'"), ("1/2/3", r"eps='1/2/3'"), ("-8/255", r"eps=-0.03"), ("nan", r"eps=nan"),
    (True, r"eps=True"), (None, r"eps=None"),
])
def test_parse_eps_rejects_bad_values(bad, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_eps(bad)


@pytest.mark.parametrize("eps,text", [(8 / 255, "8/255"), (1 / 255, "1/255"), (16 / 255, "16/255"), (0.03, "0.03"),
                                      (0.1, "0.1"), (1 / 7, "0.1429"), (0.3, "0.3"),
                                      (0.25 / 255, "0.25/255"), (1.5 / 255, "1.5/255"), (0.0001, "0.0001")])
def test_format_eps(eps, text):
    assert format_eps(eps) == text
    if "/" in text:
        assert parse_eps(format_eps(eps)) == pytest.approx(eps, abs=1e-15)


@pytest.mark.parametrize("bad,pattern", [(-0.1, "eps=-0.1"), (1.5, "eps=1.5"), ("abc", "eps='abc'")])
def test_make_attack_rejects_bad_eps(model, bad, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_attack("pgd", model[0], bad)


def test_unknown_attack_and_parameters(model):
    m = model[0]
    with pytest.raises(ConfigError, match=r"attack='pdg'.*Did you mean 'pgd'"):
        make_attack("pdg", m, EPS)
    with pytest.raises(ConfigError, match=r"attack 'pgd' takes no parameter step=5.*Did you mean 'steps'"):
        make_attack("pgd", m, EPS, step=5)
    with pytest.raises(ConfigError, match=r"attack 'fgsm' takes no parameter steps=5; allowed: none"):
        make_attack("fgsm", m, EPS, steps=5)
    with pytest.raises(ConfigError, match=r"attack 'autoattack' takes no parameter alpha"):
        make_attack("autoattack", m, EPS, alpha=0.1)
    with pytest.raises(ConfigError, match=r"steps=0"):
        make_attack("pgd", m, EPS, steps=0)
    with pytest.raises(ConfigError, match=r"alpha=-1.0"):
        make_attack("easy", m, EPS, alpha=-1.0)
    with pytest.raises(ConfigError, match=r"version='fast'"):
        make_attack("autoattack", m, EPS, version="fast")
    with pytest.raises(ConfigError, match=r"model=function"):
        make_attack("pgd", lambda x: x, EPS)
    assert isinstance(make_attack("pgd", m, EPS), Attack)


# ----------------------------------------------------------------------------- statistics modes, branches, torchattacks

def test_batch_stats_give_a_different_attack_than_population(model):
    m, x, y = model
    assert not m.training
    torch.manual_seed(0)
    pop = make_attack("pgd", m, EPS, steps=5)(x, y)
    torch.manual_seed(0)
    with use_stats(m, "batch"):
        bat = make_attack("pgd", m, EPS, steps=5)(x, y)
    torch.manual_seed(0)
    pop2 = make_attack("pgd", m, EPS, steps=5)(x, y)
    assert torch.equal(pop, pop2)  # same seed, same mode: identical
    assert (pop - bat).abs().max().item() > 1e-3
    assert (bat - x).abs().max().item() <= EPS + 1e-6


@pytest.mark.parametrize("stats", ["population", "batch"])
def test_torchattacks_on_a_training_model_leaves_buffers_and_mode(model, stats):
    """A model in train() attacked with torchattacks PGD: eval() inside the attack, with the
    statistics mode of our layers; running buffers untouched; train() again afterwards."""
    m, x, y = model
    m, x = m.double().train(), x.double()
    before = buffers(m)
    hand = with_hand_bn(m, stats).eval()
    with use_stats(m, stats):
        adv = torchattacks.PGD(m, eps=EPS, alpha=EPS / 4, steps=3, random_start=False)(x, y)
        assert m.training and all(mod.training for mod in m.modules())
        assert_same_buffers(before, buffers(m))
        # the attack's forward used the statistics we asked for: a hand-made BN model agrees
        ref = torchattacks.PGD(hand, eps=EPS, alpha=EPS / 4, steps=3, random_start=False)(x, y)
        torch.testing.assert_close(adv, ref, rtol=0, atol=1e-12)
        # and so does the loss gradient with respect to the input
        m.eval()
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        grads = [torch.autograd.grad(F.cross_entropy(net(xi), y), xi)[0] for net, xi in zip((m, hand), xs)]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
        m.train()
    other = with_hand_bn(m, "population" if stats == "batch" else "batch").eval()
    ref_other = torchattacks.PGD(other, eps=EPS, alpha=EPS / 4, steps=3, random_start=False)(x, y)
    assert (adv - ref_other).abs().max().item() > 1e-3  # the two modes really differ here
    assert_same_buffers(before, buffers(m))
    assert all(mod.stats == "population" for mod in m.modules() if isinstance(mod, BatchNorm2d))


def test_make_attack_on_a_training_model_leaves_buffers_and_mode(model):
    m, x, y = model
    m.train()
    before = buffers(m)
    torch.manual_seed(0)
    with use_stats(m, "batch"):
        adv = make_attack("pgd", m, EPS, steps=3)(x, y)
    assert m.training
    assert_same_buffers(before, buffers(m))
    m.eval()
    torch.manual_seed(0)
    with use_stats(m, "batch"):
        assert torch.equal(adv, make_attack("pgd", m, EPS, steps=3)(x, y))  # train or eval: same attack


def test_attack_runs_against_the_routed_branch():
    torch.manual_seed(0)

    def net(norm):
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(6, 10)).double()

    multi = net(MultiBatchNorm2d(6, branches=("adv",)))
    with torch.no_grad():
        a = multi[1].aux["adv"]
        a.weight.uniform_(0.5, 2.0), a.bias.normal_(), a.running_mean.normal_(), a.running_var.uniform_(0.5, 2.0)
    plain = net(BatchNorm2d(6))
    plain.load_state_dict({k.replace("1.aux.adv.", "1."): v for k, v in multi.state_dict().items()
                           if not k.startswith("1.") or k.startswith("1.aux.adv.")})
    multi.eval(), plain.eval()
    x, y = _data(8, seed=3)
    x = x.double()
    kw = dict(steps=3, alpha=EPS / 3, random_start=False)
    with route(multi, "adv"):
        adv = make_attack("pgd", multi, EPS, **kw)(x, y)
    torch.testing.assert_close(adv, make_attack("pgd", plain, EPS, **kw)(x, y), rtol=0, atol=1e-12)
    main = make_attack("pgd", multi, EPS, **kw)(x, y)
    assert (main - adv).abs().max().item() > 1e-3
