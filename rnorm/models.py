"""CIFAR-style ResNets whose normalization layer is chosen by name.

* :func:`resnet18`, :func:`resnet50`: torchvision's ResNet blocks (``BasicBlock``,
  ``Bottleneck``) with a CIFAR stem -- a 3x3 stride-1 convolution and no max-pool -- as is usual
  for 32x32 inputs and as the EBN paper's ResNet-18/50 on CIFAR-10 and FashionMNIST imply.
  ``width`` is the base channel count (64 = the standard network; stages use w, 2w, 4w, 8w).
* :func:`resnet20`: the CIFAR ResNet of depth 6n+2 (He et al. 2016) that the RobustNorm
  reference code trains (``models/resnet.py``: stages of width w, 2w, 4w; a 1x1 convolution
  plus norm on the shortcut when the shape changes). We pool adaptively, so 28x28 FashionMNIST
  works, where the reference's fixed 8x8 pool fails.

Every model starts with :class:`Normalize` (the dataset's mean and std), so models and attacks
take images in [0, 1] and epsilon is in pixel units.

``norm="none"`` removes normalization. Deep residual networks without normalization are hard to
train at BatchNorm's learning rate, so by default each residual branch then ends in a learnable
scalar initialised to zero (SkipInit, De & Smith 2020); ``skipinit=False`` gives the plain
identity of the reference code's ``NoBN``. This is a departure the book states.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ._validate import ConfigError, as_sequence, check_choice, check_float, check_int
from .norms import NORMS, make_norm

ARCHS = ("resnet18", "resnet50", "resnet20")


def _per_channel(name: str, value) -> list[float]:
    """``mean`` / ``std``: one finite number per channel. A single number, or a bare string such as
    ``"0.5"``, is one channel's value (:func:`rnorm._validate.as_sequence`), never split into characters."""
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    return [check_float(f"{name}[{i}]", v) for i, v in enumerate(as_sequence(name, value))]


class Normalize(nn.Module):
    """Subtract the dataset mean and divide by its std, per channel (inputs in [0, 1])."""

    def __init__(self, mean, std):
        super().__init__()
        mean, std = _per_channel("mean", mean), _per_channel("std", std)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if not torch.isfinite(mean).all():
            raise ConfigError(f"mean={mean.flatten().tolist()} must be finite numbers.")
        if not torch.isfinite(std).all() or (std <= 0).any():  # NaN passes a `<= 0` test on its own
            raise ConfigError(f"std={std.flatten().tolist()} must be finite and positive.")
        if mean.shape != std.shape:
            raise ConfigError(f"mean has {mean.numel()} channels but std has {std.numel()}; give one value per channel.")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected images [N, {self.mean.shape[1]}, H, W] in [0, 1]; got shape {tuple(x.shape)}.")
        return (x - self.mean) / self.std


class SkipInit(nn.Module):
    """A learnable scalar, initialised to 0, ending a residual branch (SkipInit, De & Smith 2020)."""

    def __init__(self, num_features: int | None = None):
        super().__init__()
        self.num_features = num_features
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha


class CifarResNet(ResNet):
    """torchvision's ResNet with a CIFAR stem, a width multiplier and any number of stages."""

    def __init__(self, block, layers, *, num_classes: int, in_channels: int, width: int, norm_layer,
                 stage_widths=(1, 2, 4, 8)):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # torchvision's group width; with groups=1 it leaves the widths as given
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        stages = []
        for i, (mult, n) in enumerate(zip(stage_widths, layers)):
            stages.append(self._make_layer(block, width * mult, n, stride=1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3 = stages[:3]
        self.layer4 = stages[3] if len(stages) > 3 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * stage_widths[len(layers) - 1] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class ImageClassifier(nn.Sequential):
    """``Normalize`` followed by a network; records how it was built in ``self.spec``."""

    def __init__(self, normalize: Normalize, net: nn.Module, spec: dict):
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.spec = spec


def _build(arch: str, block, layers, stage_widths, *, num_classes=10, in_channels=3, width=64,
           norm="bn", mean=None, std=None, skipinit=None, **norm_kwargs) -> ImageClassifier:
    num_classes = check_int("num_classes", num_classes, min_value=2)
    in_channels = check_int("in_channels", in_channels, min_value=1)
    width = check_int("width", width, min_value=1)
    check_choice("norm", norm, tuple(NORMS))
    mean = (0.5,) * in_channels if mean is None else tuple(_per_channel("mean", mean))
    std = (0.5,) * in_channels if std is None else tuple(_per_channel("std", std))
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"mean={mean} and std={std} must have in_channels={in_channels} entries each.")
    make_norm(norm, 1, **norm_kwargs)  # validate the norm's options before building anything
    norm_layer = functools.partial(make_norm, norm, **norm_kwargs)
    net = CifarResNet(block, layers, num_classes=num_classes, in_channels=in_channels, width=width,
                      norm_layer=norm_layer, stage_widths=stage_widths)
    if skipinit is None:
        skipinit = norm == "none"
    if skipinit:
        last = "bn3" if block is Bottleneck else "bn2"
        for m in net.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                setattr(m, last, SkipInit(getattr(m, last).num_features))
    spec = dict(arch=arch, num_classes=num_classes, in_channels=in_channels, width=width, norm=norm,
                mean=list(mean), std=list(std), skipinit=bool(skipinit), norm_kwargs=dict(norm_kwargs))
    return ImageClassifier(Normalize(mean, std), net, spec)


def resnet18(*, num_classes=10, in_channels=3, width=64, norm="bn", mean=None, std=None, skipinit=None,
             **norm_kwargs) -> ImageClassifier:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a CIFAR stem; ``width=64`` is the standard size."""
    return _build("resnet18", BasicBlock, [2, 2, 2, 2], (1, 2, 4, 8), num_classes=num_classes,
                  in_channels=in_channels, width=width, norm=norm, mean=mean, std=std, skipinit=skipinit,
                  **norm_kwargs)


def resnet50(*, num_classes=10, in_channels=3, width=64, norm="bn", mean=None, std=None, skipinit=None,
             **norm_kwargs) -> ImageClassifier:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]) with a CIFAR stem; ``width=64`` is the standard size."""
    return _build("resnet50", Bottleneck, [3, 4, 6, 3], (1, 2, 4, 8), num_classes=num_classes,
                  in_channels=in_channels, width=width, norm=norm, mean=mean, std=std, skipinit=skipinit,
                  **norm_kwargs)


def resnet20(*, num_classes=10, in_channels=3, width=16, norm="bn", mean=None, std=None, skipinit=None,
             depth=20, **norm_kwargs) -> ImageClassifier:
    """CIFAR ResNet of depth 6n+2 (default 20) with stages w, 2w, 4w (``width=16`` as in the paper)."""
    depth = check_int("depth", depth, min_value=8)
    if (depth - 2) % 6:
        raise ConfigError(f"depth={depth} must be of the form 6n+2 (8, 14, 20, 32, 44, 56, ...).")
    n = (depth - 2) // 6
    return _build("resnet20", BasicBlock, [n, n, n], (1, 2, 4), num_classes=num_classes,
                  in_channels=in_channels, width=width, norm=norm, mean=mean, std=std, skipinit=skipinit,
                  **norm_kwargs)


BUILDERS = {"resnet18": resnet18, "resnet50": resnet50, "resnet20": resnet20}


def build_model(arch: str, **kwargs) -> ImageClassifier:
    """Build a model by architecture name (``resnet18``, ``resnet50``, ``resnet20``)."""
    return BUILDERS[check_choice("arch", arch, ARCHS)](**kwargs)


def for_dataset(arch: str, dataset: str, **kwargs) -> ImageClassifier:
    """Build ``arch`` sized for a dataset of :mod:`rnorm.data` (classes, channels, mean and std)."""
    from .data import info
    d = info(dataset)
    kwargs.setdefault("num_classes", d.num_classes)
    kwargs.setdefault("in_channels", d.in_channels)
    kwargs.setdefault("mean", d.mean)
    kwargs.setdefault("std", d.std)
    return build_model(arch, **kwargs)
