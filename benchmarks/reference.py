"""The comparison networks, built without rnorm.

* :func:`torchvision_resnet18` -- the CIFAR ResNet-18 of :func:`rnorm.models.resnet18` built
  from torchvision's own ``ResNet`` class: its ``_make_layer`` and ``BasicBlock`` with plain
  ``nn.BatchNorm2d``, the stem replaced by a 3x3 stride-1 convolution, no max-pool, stage
  widths w, 2w, 4w, 8w, and an explicit input normalization in front.
* :func:`copy_rnorm_weights` loads an rnorm model's weights into it, so the benchmark can show
  the two compute the same function before it times them.
* :func:`robustnorm_before` -- the ``RobustNorm2d.forward`` that rnorm had before the benchmark
  (batch min/max by ``torch.aminmax`` over a transposed copy, affine map and gradient left to
  autograd), kept to measure the current implementation against it.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, ResNet


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel, inputs in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def torchvision_resnet18(width: int = 16, num_classes: int = 10, in_channels: int = 3, mean=None, std=None) -> nn.Sequential:
    """Plain torchvision ResNet-18 (``nn.BatchNorm2d``) with a CIFAR stem and base width ``width``."""
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.maxpool = nn.Identity()
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    net.fc = nn.Linear(8 * width, num_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    mean = (0.5,) * in_channels if mean is None else tuple(mean)
    std = (0.5,) * in_channels if std is None else tuple(std)
    return nn.Sequential(InputNormalize(mean, std), net)


def copy_rnorm_weights(src: nn.Module, dst: nn.Sequential) -> None:
    """Load an rnorm ``ImageClassifier``'s state into :func:`torchvision_resnet18` (strict)."""
    state = {}
    for k, v in src.state_dict().items():
        if k.startswith("normalize."):
            state["0." + k[len("normalize."):]] = v
        elif k.startswith("net."):
            state["1." + k[len("net."):]] = v
        else:
            raise KeyError(f"unexpected key {k!r} in the rnorm model")
    dst.load_state_dict(state, strict=True)


def _before_forward(self, x: torch.Tensor) -> torch.Tensor:
    """rnorm's ``RobustNorm2d.forward`` before the benchmark (verbatim, statistics inlined)."""
    if x.dim() != 4:
        raise ValueError(f"RobustNorm2d expects a 4-D input [N, C, H, W]; got shape {tuple(x.shape)}.")
    if self.training or self._stats != "population":
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        lo, hi = torch.aminmax(flat, dim=1)
        mean, rng = flat.mean(dim=1), hi - lo
    if self.training:
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
            self.running_range.mul_(1 - m).add_(rng.detach().to(self.running_range.dtype), alpha=m)
            self.num_batches_tracked.add_(1)
    elif self._stats == "population":
        mean, rng = self.running_mean, self.running_range
    elif self._stats == "population_mean":
        mean = self.running_mean
    scale = rng.pow(self.p) + self.eps
    if self.affine:
        w = self.weight / scale
        b = self.bias - mean * w
    else:
        w = 1.0 / scale
        b = -mean * w
    return x * w.to(x.dtype)[None, :, None, None] + b.to(x.dtype)[None, :, None, None]


@contextlib.contextmanager
def robustnorm_before():
    """Within the block every ``RobustNorm2d`` runs the earlier implementation."""
    from rnorm.norms import RobustNorm2d

    current = RobustNorm2d.__dict__["forward"]
    RobustNorm2d.forward = _before_forward
    try:
        yield
    finally:
        RobustNorm2d.forward = current
