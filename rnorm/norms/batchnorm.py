""":class:`BatchNorm2d`: ``nn.BatchNorm2d`` plus a statistics mode used at inference
(:mod:`rnorm.norms.base`), and :func:`_bn_eval`, BatchNorm at inference in each mode, which the
branches of :class:`~rnorm.norms.MultiBatchNorm2d` use too.

Departure from the RobustNorm reference code: its BN baseline divides by ``sqrt(var) + eps``
with an unbiased variance; we keep PyTorch's ``sqrt(var + eps)`` so that models match
``nn.BatchNorm2d`` and torchvision exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import _StatsModeMixin, _check_norm_args


def _bn_eval(x, running_mean, running_var, weight, bias, eps: float, stats: str):
    """BatchNorm at inference with the given statistics mode; never writes a buffer."""
    if stats == "population":
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
    if stats == "batch":
        # training=True with no buffers: normalize with the batch's mean and biased variance.
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    # population_mean: running mean, batch variance (biased, about the batch mean).
    var = x.var(dim=(0, 2, 3), unbiased=False)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale + (bias if bias is not None else 0.0)
    return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


def _check_bn_args(num_features, kw: dict) -> None:
    """The arguments nn.BatchNorm2d accepts without a word but that make a wrong layer (checked
    with :func:`_check_norm_args`; the checked eps and momentum are written back into ``kw``)."""
    flags = {k: kw[k] for k in ("affine", "track_running_stats") if k in kw}
    _, kw["eps"], kw["momentum"] = _check_norm_args("BatchNorm2d", num_features, kw.get("eps", 1e-5),
                                                    kw.get("momentum", 0.1), momentum_none=True, **flags)


class BatchNorm2d(_StatsModeMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a statistics mode for inference.

    Training mode (and eval mode with ``stats="population"``) is exactly ``nn.BatchNorm2d``:
    same code path, same outputs, same running-buffer updates. In eval mode ``stats="batch"``
    normalizes with the current batch's mean and (biased) variance and ``"population_mean"``
    with the running mean and the batch variance; neither touches the running buffers.

    Departure from the RobustNorm reference code: its BN baseline divides by ``sqrt(var) + eps``
    with an unbiased variance; we keep PyTorch's ``sqrt(var + eps)`` so that models match
    ``nn.BatchNorm2d`` and torchvision exactly.
    """

    def __init__(self, num_features: int, stats: str = "population", **bn_kwargs):
        _check_bn_args(num_features, bn_kwargs)
        super().__init__(num_features, **bn_kwargs)
        self.stats = stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self._stats == "population" or not self.track_running_stats:
            return super().forward(x)
        self._check_input_dim(x)
        return _bn_eval(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps, self._stats)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", stats={self._stats!r}"
