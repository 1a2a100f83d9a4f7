""":class:`RobustNorm2d`, the range-based normalization of RobustNorm (Awais et al., arXiv 2006.11007),
following the reference ``models/norm.py``, and its hand-written forward and backward
(:class:`_RobustNormFn`).

Per channel, ``y = weight * (x - mean) / (range ** p + eps) + bias`` with ``range = max(x) - min(x)``
over N*H*W. Where it differs from BatchNorm (the scale is the range raised to a power, ``eps`` added
after the power; running mean and running *range*) is in the docstring of :class:`RobustNorm2d`.
The implementation (two-stage min/max, ``F.batch_norm`` in inference form, a backward pass that
scatters the range's gradient only to the min/max elements) is for speed only: the values and
gradients are those of the formula.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float
from .base import _StatsModeMixin, _check_norm_args


def _channel_extremes(x: torch.Tensor):
    """Per-channel (min, max) of ``x`` [N, C, H, W] over N, H, W, plus the stage-1 (min, max).

    Two stages, each a fast vectorized reduction, chosen by memory layout: for a contiguous
    input over H, W first (stage 1: [N, C]), then over N; for a channels-last input over the
    rows N*H of the [N*H, W*C] view first (stage 1: [W, C]), then over W.
    """
    n, c, h, w = x.shape
    if _memory_format(x) is torch.channels_last:
        rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)
        lo1, hi1 = rows.amin(dim=0).view(w, c), rows.amax(dim=0).view(w, c)
    else:
        lo1, hi1 = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    return lo1.amin(dim=0), hi1.amax(dim=0), lo1, hi1


def _where_equal(x: torch.Tensor, ext: torch.Tensor, stage1: torch.Tensor):
    """Indices (n, c, h, w) of every element of ``x`` equal to its channel's ``ext`` (min or max).

    Only the stage-1 cells of :func:`_channel_extremes` that reach the extreme are searched, so
    the cost is a few rows of ``x``, not a pass over it.
    """
    if _memory_format(x) is torch.channels_last:  # stage 1 is [W, C]: search x[:, c, :, w]
        w, c = (stage1 == ext[None, :]).nonzero(as_tuple=True)
        k, n, h = (x[:, c, :, w] == ext[c][:, None, None]).nonzero(as_tuple=True)
        return n, c[k], h, w[k]
    n, c = (stage1 == ext[None, :]).nonzero(as_tuple=True)  # stage 1 is [N, C]: search x[n, c]
    k, h, w = (x[n, c] == ext[c][:, None, None]).nonzero(as_tuple=True)
    return n[k], c[k], h, w


def _spread_by_index(gx: torch.Tensor, x: torch.Tensor, ext: torch.Tensor, stage1: torch.Tensor,
                     d: torch.Tensor) -> None:
    """Add ``d[c] / ties[c]`` to ``gx`` at every element of ``x`` equal to its channel's ``ext``,
    found with :func:`_where_equal` (a search of a few rows; used on CPU, where it is the faster).
    ``nonzero`` makes the host wait for the device, so CUDA uses :func:`_spread_by_mask`."""
    idx = _where_equal(x, ext, stage1)
    count = torch.bincount(idx[1], minlength=x.shape[1]).to(d.dtype)
    gx.index_put_(idx, (d / count)[idx[1]].to(gx.dtype), accumulate=True)


def _spread_by_mask(gx: torch.Tensor, x: torch.Tensor, ext: torch.Tensor, stage1: torch.Tensor,
                    d: torch.Tensor) -> None:
    """The same as :func:`_spread_by_index` with a full-size mask instead of an index search: one more
    pass over ``x`` but no ``nonzero``, hence no host synchronization (used on CUDA). Adds exactly
    the same values (``0`` elsewhere), so both give identical gradients."""
    c = x.shape[1]
    mask = x == ext.view(1, c, 1, 1)
    count = mask.sum(dim=(0, 2, 3), dtype=d.dtype)
    gx.add_(mask.to(gx.dtype) * (d / count).to(gx.dtype).view(1, c, 1, 1))


def _bn_params(x: torch.Tensor, *tensors):
    """Per-channel tensors in a dtype ``F.batch_norm`` accepts with ``x`` (fp32 with bf16/fp16 input)."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return tuple(t if t is None or t.dtype == torch.float32 else t.float() for t in tensors)
    return tuple(t if t is None or t.dtype == x.dtype else t.to(x.dtype) for t in tensors)


class _RobustNormFn(torch.autograd.Function):
    """RobustNorm's normalization with batch statistics, forward and backward written out.

    ``y = weight * (x - mean) / s + bias`` with ``s = range**p + eps``, ``mean`` the batch mean
    (or ``running_mean`` when given: no gradient through it) and ``range`` the batch max - min.
    Returns ``(y, mean, range)``; the last two (fp32 for low-precision ``x``) are not
    differentiable outputs, for the running-buffer update.

    Backward: BatchNorm's inference backward gives ``g * weight / s`` for x, ``sum g (x-mean)/s``
    for weight and ``sum g`` for bias; from these two sums follow the per-channel gradients of
    the mean (``-sum(g) weight / s``, spread evenly over the N*H*W inputs) and of ``s`` (``-grad_weight
    * weight / s``), hence of the range (times ``p range**(p-1)``), which goes to the max
    elements (+) and the min elements (-), shared evenly among ties, as autograd of
    ``amax - amin`` does.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, p, eps):
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        batch_mean = running_mean is None
        mean = x.mean(dim=(0, 2, 3), dtype=stat_dtype) if batch_mean else running_mean.to(stat_dtype)
        lo, hi, lo1, hi1 = _channel_extremes(x)
        rng = hi.to(stat_dtype) - lo.to(stat_dtype)
        scale = rng.pow(p) + eps
        w, b, m, var = _bn_params(x, weight, bias, mean, scale * scale)
        y = F.batch_norm(x, m, var, w, b, False, 0.0, 0.0)
        ctx.save_for_backward(x, w, m, var, scale, rng, lo, hi, lo1, hi1)
        ctx.p, ctx.batch_mean, ctx.weight_dtype = p, batch_mean, None if weight is None else weight.dtype
        out_mean = mean if batch_mean else mean.new_empty(0)
        ctx.mark_non_differentiable(out_mean, rng)
        return y, out_mean, rng

    @staticmethod
    def backward(ctx, g, _grad_mean, _grad_range):
        x, w, m, var, scale, rng, lo, hi, lo1, hi1 = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            g.contiguous(memory_format=_memory_format(x)), x, w, m, var, None, None, False, 0.0,
            [need_x, True, True])
        if need_x:
            c = x.shape[1]
            gw_s, gb_s = gw.to(scale.dtype), gb.to(scale.dtype)
            wt = torch.ones_like(scale) if w is None else w.to(scale.dtype)
            d_range = _range_grad(-gw_s * wt / scale, rng, ctx.p)
            if ctx.batch_mean:
                d_mean = -gb_s * wt / scale
                gx.add_((d_mean / (x.numel() // c)).to(gx.dtype).view(1, c, 1, 1))
            spread = _spread_by_mask if x.device.type == "cuda" else _spread_by_index
            for ext, stage1, sign in ((hi, hi1, 1.0), (lo, lo1, -1.0)):
                spread(gx, x, ext, stage1, sign * d_range)
        if ctx.weight_dtype is None:
            return gx, None, None, None, None, None
        return gx, gw.to(ctx.weight_dtype), gb.to(ctx.weight_dtype), None, None, None


def _range_grad(d_power: torch.Tensor, rng: torch.Tensor, p: float) -> torch.Tensor:
    """The gradient of the range from ``d_power``, that of ``range ** p``: ``d_power * p * range**(p-1)``
    where the range is > 0, and 0 on a constant channel (range 0, e.g. batch 1 on 1x1 maps).

    There ``range**(p-1)`` is inf for p < 1 and the product would be NaN (``0 * inf``). The range's
    gradient is 0 there by autograd's own convention for ``amax - amin``: every element is both a max
    and a min, so the two shares cancel. With batch statistics it is also the true derivative: the
    channel's ``x - mean`` is 0, so the output moves as ``w (x - mean) / eps`` to first order.
    """
    return torch.where(rng > 0, d_power * p * rng.pow(p - 1), torch.zeros_like(d_power))


def _memory_format(x: torch.Tensor):
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class RobustNorm2d(_StatsModeMixin, nn.Module):
    """RobustNorm (Awais et al., arXiv 2006.11007), following the reference ``models/norm.py``.

    Per channel, over the N*H*W values of a batch::

        y = weight * (x - mean) / (range ** p + eps) + bias,   range = max(x) - min(x)

    Where it differs from BatchNorm: the scale is the *range* raised to a power ``p`` (0.2 by
    default; the reference ``run.sh`` also uses 1.0) instead of the standard deviation, and
    ``eps`` is added *after* the power, outside any square root. In training the batch mean and
    range are used and the running mean and running *range* follow an EMA with ``momentum``
    (``running = (1 - momentum) * running + momentum * batch``); the running range starts at 1.
    At inference the power is applied to the running range (not a running average of powers).

    Statistics modes: ``population`` = reference ``RNT`` (running mean and range), ``batch`` =
    ``RN`` (batch mean and range), ``population_mean`` = ``RNM`` (running mean, batch range).

    Implementation (speed only; the values and gradients are those of the formula above, with
    the gradient of max/min shared evenly among tied elements as ``torch.amax`` does): min and
    max are a two-stage reduction (over H, W then N; for channels-last inputs over N, H then W),
    much faster on CPU than ``torch.aminmax`` on a transposed copy; the affine map
    runs as ``F.batch_norm`` in inference form (mean, variance = scale**2, eps=0); the backward
    pass is hand-written (:class:`_RobustNormFn`): BatchNorm's backward kernel for the direct
    path, then the per-channel terms of the mean and of the range, the latter scattered only to
    the min/max elements. ``benchmarks/`` measures it against the earlier autograd version.
    """

    def __init__(self, num_features: int, p: float = 0.2, eps: float = 1e-5, momentum: float = 0.1,
                 stats: str = "population", affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = _check_norm_args(
            "RobustNorm2d", num_features, eps, momentum, momentum_none=False, affine=affine)
        self.p = check_float("p", p, min_value=0.0, min_inclusive=False)
        self.affine = affine
        self.stats = stats
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_range", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @staticmethod
    def batch_mean_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and max - min of ``x`` ([N, C, H, W]) over N, H and W, differentiable.

        A helper for callers; :meth:`forward` computes the same statistics inside
        :class:`_RobustNormFn`.
        """
        lo, hi, _, _ = _channel_extremes(x)
        return x.mean(dim=(0, 2, 3)), hi - lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"RobustNorm2d expects a 4-D input [N, C, H, W]; got shape {tuple(x.shape)}.")
        if not self.training and self._stats == "population":
            scale = self.running_range.pow(self.p) + self.eps
            w, b, mean, var = _bn_params(x, self.weight, self.bias, self.running_mean, scale * scale)
            return F.batch_norm(x, mean, var, w, b, False, 0.0, 0.0)
        running_mean = self.running_mean if not self.training and self._stats == "population_mean" else None
        y, mean, rng = _RobustNormFn.apply(x, self.weight, self.bias, running_mean, self.p, self.eps)
        if self.training:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_range.mul_(1 - m).add_(rng.to(self.running_range.dtype), alpha=m)
                self.num_batches_tracked.add_(1)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p}, eps={self.eps}, momentum={self.momentum}, stats={self._stats!r}"
