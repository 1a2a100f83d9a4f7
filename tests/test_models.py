"""Tests of rnorm.models: shapes, the CIFAR stem, widths, parameter counts, input normalization,
SkipInit for norm="none", argument checks and seeded initialisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from rnorm._validate import ConfigError
from rnorm.models import Normalize, SkipInit, build_model, resnet18, resnet20, resnet50
from rnorm.norms import BatchNorm2d, MultiBatchNorm2d, NoNorm2d, RobustNorm2d, route, use_stats

ARCHS = {"resnet18": resnet18, "resnet50": resnet50, "resnet20": resnet20}
NORM_CLASS = {"bn": BatchNorm2d, "robustnorm": RobustNorm2d, "multibn": MultiBatchNorm2d, "none": NoNorm2d}
# number of normalization layers: stem + 2 (or 3) per block + one per downsampling shortcut
N_NORMS = {"resnet18": 1 + 8 * 2 + 3, "resnet50": 1 + 16 * 3 + 4, "resnet20": 1 + 9 * 2 + 2}



@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("norm", ["bn", "robustnorm", "multibn", "none"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20"])
def test_output_shape_for_each_arch_and_norm(arch, norm, in_channels, size):
    torch.manual_seed(0)
    model = ARCHS[arch](num_classes=7, in_channels=in_channels, width=4, norm=norm)
    n = sum(type(m) is NORM_CLASS[norm] for m in model.modules() if not isinstance(m, SkipInit))
    expected = N_NORMS[arch]
    if norm == "none":  # SkipInit replaces the last norm of each block
        n_blocks = {"resnet18": 8, "resnet50": 16, "resnet20": 9}[arch]
        expected = N_NORMS[arch] - n_blocks
        assert sum(isinstance(m, SkipInit) for m in model.modules()) == n_blocks
    assert n == expected
    x = torch.rand(4, in_channels, size, size)
    model.train()
    y = model(x)
    assert y.shape == (4, 7) and torch.isfinite(y).all()
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 7)
        if norm == "multibn":
            with route(model, ["main", "adv"]):
                assert model(x).shape == (4, 7)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20"])
def test_cifar_stem(arch):
    model = ARCHS[arch](width=8)
    net = model.net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert net.conv1.in_channels == 3 and net.conv1.out_channels == 8
    assert isinstance(net.maxpool, nn.Identity)
    # the first stage keeps the 32x32 resolution, each later stage halves it
    seen = {}
    hooks = [getattr(net, f"layer{i}").register_forward_hook(
        lambda m, i, o, k=i: seen.__setitem__(k, o.shape[-1])) for i in (1, 2, 3)]
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == {1: 32, 2: 16, 3: 8}
    if arch == "resnet20":
        assert isinstance(net.layer4, nn.Identity)
        assert all(len(getattr(net, f"layer{i}")) == 3 for i in (1, 2, 3))


@pytest.mark.parametrize("arch,width,fc_in,stage_out", [
    ("resnet18", 16, 128, [16, 32, 64, 128]),
    ("resnet18", 64, 512, [64, 128, 256, 512]),
    ("resnet50", 16, 512, [64, 128, 256, 512]),
    ("resnet20", 8, 32, [8, 16, 32]),
    ("resnet20", 16, 64, [16, 32, 64]),
])
def test_width_multiplier_sets_channels(arch, width, fc_in, stage_out):
    net = ARCHS[arch](width=width).net
    assert net.fc.in_features == fc_in
    outs = []
    for i in range(1, len(stage_out) + 1):
        last = getattr(net, f"layer{i}")[-1]
        outs.append((last.conv3 if isinstance(last, Bottleneck) else last.conv2).out_channels)
    assert outs == stage_out


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_count_is_torchvision_minus_the_stem(arch):
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    ours = ARCHS[arch](width=64, norm="bn", num_classes=10)
    stem_difference = 3 * 64 * (7 * 7 - 3 * 3)  # torchvision's 7x7 stem conv vs our 3x3 one: 7680
    assert _n_params(ours) == _n_params(tv) - stem_difference
    # the rest is the same tensors under the same names (Normalize holds buffers, no parameters)
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items()}
    our_shapes = {k.removeprefix("net."): v.shape for k, v in ours.state_dict().items() if k.startswith("net.")}
    assert set(tv_shapes) == set(our_shapes)
    assert {k for k in tv_shapes if tv_shapes[k] != our_shapes[k]} == {"conv1.weight"}


def test_resnet20_parameter_count():
    # He et al.'s CIFAR ResNet-20 has 269,722 parameters with identity (option A) shortcuts; our
    # 1x1 conv + norm shortcuts (option B, as the RobustNorm reference) add 16*32 + 2*32 + 32*64 + 2*64.
    assert _n_params(resnet20(norm="bn")) == 269_722 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_normalize_is_inside_the_model():
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    torch.manual_seed(0)
    model = resnet20(width=4, mean=mean, std=std).eval()
    x = torch.rand(3, 3, 32, 32)
    m = torch.tensor(mean).reshape(1, 3, 1, 1)
    s = torch.tensor(std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - m) / s), rtol=0, atol=1e-6)
        assert not torch.allclose(model(x), model.net(x), atol=1e-3)
    assert model.spec["mean"] == list(mean) and model.spec["std"] == list(std)
    # defaults: 0.5 per channel
    one = resnet20(width=4, in_channels=1)
    assert one.normalize.mean.flatten().tolist() == [0.5] and one.normalize.std.flatten().tolist() == [0.5]
    with pytest.raises(ValueError, match=r"expected images \[N, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="std="):
        Normalize((0.5,), (0.0,))


def _block_outputs_equal_relu_shortcut(model):
    """For every residual block: output == relu(shortcut(input)), with hooks capturing both."""
    records = []

    def hook(block, inputs, output):
        x = inputs[0]
        sc = block.downsample(x) if block.downsample is not None else x
        records.append(torch.equal(output, torch.relu(sc)))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    with torch.no_grad():
        model(torch.rand(2, model.spec["in_channels"], 32, 32))
    for h in hooks:
        h.remove()
    return records


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20"])
def test_norm_none_uses_skipinit_so_blocks_start_as_identity(arch):
    torch.manual_seed(0)
    model = ARCHS[arch](width=4, norm="none")
    assert model.spec["skipinit"] is True
    last = "bn3" if arch == "resnet50" else "bn2"
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert all(isinstance(getattr(b, last), SkipInit) for b in blocks)
    assert all(getattr(b, last).alpha.item() == 0.0 for b in blocks)
    records = _block_outputs_equal_relu_shortcut(model)
    assert len(records) == len(blocks) and all(records)
    # without SkipInit the residual branches are not zero (so the check above can fail)
    torch.manual_seed(0)
    plain = ARCHS[arch](width=4, norm="none", skipinit=False)
    assert plain.spec["skipinit"] is False
    assert not any(isinstance(m, SkipInit) for m in plain.modules())
    assert not all(_block_outputs_equal_relu_shortcut(plain))


def test_skipinit_defaults_off_with_a_norm_and_is_learnable():
    bn = resnet18(width=4, norm="bn")
    assert not any(isinstance(m, SkipInit) for m in bn.modules()) and bn.spec["skipinit"] is False
    forced = resnet18(width=4, norm="bn", skipinit=True)
    assert sum(isinstance(m, SkipInit) for m in forced.modules()) == 8
    none = resnet20(width=4, norm="none")
    none(torch.rand(4, 3, 32, 32)).sum().backward()
    alphas = [m.alpha for m in none.modules() if isinstance(m, SkipInit)]
    assert any(a.grad is not None and a.grad.abs() > 0 for a in alphas)


@pytest.mark.parametrize("call,pattern", [
    (lambda: resnet18(width=0), r"width=0"),
    (lambda: resnet20(width=-3), r"width=-3"),
    (lambda: resnet18(width=2.5), r"width=2.5"),
    (lambda: build_model("resnet34"), r"arch='resnet34'.*'resnet18', 'resnet50', 'resnet20'"),
    (lambda: resnet20(depth=21), r"depth=21.*6n\+2"),
    (lambda: resnet20(depth=2), r"depth=2"),
    (lambda: resnet18(mean=(0.5, 0.5)), r"mean=.*in_channels=3"),
    (lambda: resnet18(in_channels=1, std=(0.2, 0.2, 0.2)), r"std=.*in_channels=1"),
    (lambda: resnet18(num_classes=1), r"num_classes=1"),
    (lambda: resnet18(in_channels=0), r"in_channels=0"),
    (lambda: resnet18(norm="batchnorm"), r"norm='batchnorm'"),
    (lambda: resnet18(norm="bn", p=0.2), r"takes no argument p=0.2"),
    (lambda: resnet18(norm="robustnorm", p=-1.0), r"p=-1.0"),
    (lambda: resnet20(stds="x"), r"stds"),
])
def test_bad_arguments_name_the_parameter(call, pattern):
    with pytest.raises(ConfigError, match=pattern):
        call()


def test_norm_kwargs_reach_every_layer_and_spec():
    rn = resnet20(width=4, norm="robustnorm", p=1.0)
    layers = [m for m in rn.modules() if isinstance(m, RobustNorm2d)]
    assert len(layers) == N_NORMS["resnet20"] and all(m.p == 1.0 for m in layers)
    assert rn.spec["norm_kwargs"] == {"p": 1.0}
    mb = resnet20(width=4, norm="multibn", branches=("adv",))
    layers = [m for m in mb.modules() if type(m) is MultiBatchNorm2d]
    assert len(layers) == N_NORMS["resnet20"] and all(m.branches == ("main", "adv") for m in layers)
    assert build_model("resnet20", width=4).spec == dict(
        arch="resnet20", num_classes=10, in_channels=3, width=4, norm="bn", mean=[0.5] * 3, std=[0.5] * 3,
        skipinit=False, norm_kwargs={})


def test_use_stats_on_a_model_changes_its_eval_output():
    torch.manual_seed(0)
    model = resnet20(width=4, norm="bn")
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)  # move the running statistics a little
        model.eval()
        y_pop = model(x)
        with use_stats(model, "batch"):
            y_batch = model(x)
            model.train()
            y_train = model(x[:8])  # train mode = batch statistics as well
            model.eval()
    torch.testing.assert_close(y_batch, y_train, rtol=0, atol=1e-5)
    assert not torch.allclose(y_pop, y_batch, atol=1e-4)


@pytest.mark.parametrize("arch,norm", [("resnet18", "bn"), ("resnet50", "multibn"), ("resnet20", "robustnorm"),
                                       ("resnet20", "none")])
def test_same_seed_same_init(arch, norm):
    def build(seed):
        torch.manual_seed(seed)
        return ARCHS[arch](width=4, norm=norm)

    a, b, c = build(3), build(3), build(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
