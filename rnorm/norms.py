"""Normalization layers with a statistics mode: BatchNorm, RobustNorm, multi-branch BatchNorm.

Three layers, one registry and three model-wide switches:

* :class:`BatchNorm2d` -- ``nn.BatchNorm2d`` plus a *statistics mode* used at inference.
* :class:`RobustNorm2d` -- the range-based normalization of RobustNorm (Awais et al. 2020).
* :class:`MultiBatchNorm2d` -- a main BatchNorm plus named auxiliary BatchNorms (AdvProp, EBN),
  with whole-batch routing to one branch or a split of one batch into per-branch slices.
* :func:`make_norm` / :func:`convert_norms` build layers by name or swap them into any model;
  :func:`use_stats` and :func:`route` set the statistics mode / branch of every layer of a model,
  as a plain call or as a context manager that restores the previous setting.

Statistics modes (what the layer normalizes with when it is in ``eval()`` mode):

``population``       the running estimates from training: what BatchNorm does at inference
                     (reference code ``BN`` / ``RNT``).
``batch``            the statistics of the current inference batch: the papers' "stats swap"
                     (reference ``BNwoT`` / ``RN``). Never updates the running buffers.
``population_mean``  running mean with the batch's scale (variance or range) (``BNM`` / ``RNM``).

In ``train()`` mode every layer uses batch statistics and updates its running buffers, exactly
as ``nn.BatchNorm2d`` does, whatever the statistics mode. To compute on a batch with batch
statistics *without* touching the buffers (what an attack inside training needs), put the model
in ``eval()`` and use ``stats="batch"``; torchattacks calls ``model.eval()`` itself.
"""
from __future__ import annotations

import inspect
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import ConfigError, as_sequence, check_bool, check_choice, check_float, check_int, suggest

STATS_MODES = ("population", "batch", "population_mean")
SHARE_MODES = ("none", "affine", "stats")
MAIN = "main"


def _check_stats(stats) -> str:
    return check_choice("stats", stats, STATS_MODES)


class _StatsModeMixin:
    """Holds the validated ``stats`` attribute shared by every layer of this module."""

    _stats: str

    @property
    def stats(self) -> str:
        return self._stats

    @stats.setter
    def stats(self, value: str) -> None:
        self._stats = _check_stats(value)


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


def _check_norm_args(layer: str, num_features, eps, momentum, *, momentum_none: bool, **flags):
    """The checks every normalization layer makes on its arguments (``nn.BatchNorm2d`` makes none):
    ``num_features`` an integer >= 1, ``eps`` a finite number > 0 (``eps=0`` divides by zero on a
    constant channel), ``momentum`` a number in [0, 1] (or ``None``, a cumulative average, where
    ``momentum_none``) and each flag a boolean. Returns ``(num_features, eps, momentum)``."""
    num_features = check_int("num_features", num_features, min_value=1)
    if momentum is None and not momentum_none:
        raise ConfigError(f"momentum=None (a cumulative average) is not supported by {layer}; allowed: a "
                          f"number in [0.0, 1.0].")
    if momentum is not None:
        momentum = check_float("momentum", momentum, min_value=0.0, max_value=1.0)
    eps = check_float("eps", eps, min_value=0.0, min_inclusive=False)
    for flag, value in flags.items():
        check_bool(flag, value)
    return num_features, eps, momentum


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


def _normalize_route(route, branches: Sequence[str]):
    """Validate a route: a branch name, a sequence of names (equal split), or (name, size) pairs."""
    if isinstance(route, str):
        return check_choice("branch", route, branches)
    if isinstance(route, dict):
        route = list(route.items())
    try:
        items = list(route)
    except TypeError:
        raise ConfigError(f"branch={route!r} must be a branch name, a list of names or a list of (name, size) pairs; "
                          f"branches: {', '.join(map(repr, branches))}.") from None
    if not items:
        raise ConfigError("branch=[] is empty; give at least one branch.")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((check_choice("branch", item, branches), None))
        else:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ConfigError(f"branch={route!r}: each entry is a branch name or a (name, size) pair; got "
                                  f"{item!r}.")
            name, size = item
            check_choice("branch", name, branches)
            if size is None:
                # (name, None) is the normalized form of a plain name (equal split): accept it so
                # that a route read back from a layer can be set again (route() restores it).
                out.append((name, None))
                continue
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ConfigError(f"branch size for {name!r} is {size!r}; allowed: an integer >= 0.")
            out.append((name, size))
    if len({s is None for _, s in out}) > 1:
        raise ConfigError(f"branch={route!r} mixes names with and without sizes; give all sizes or none.")
    return tuple(out)


class MultiBatchNorm2d(BatchNorm2d):
    """A main BatchNorm plus named auxiliary BatchNorms, for AdvProp (Xie et al. 2020) and EBN.

    The main branch is this module itself, so its parameters and buffers keep the state-dict
    keys of a plain BatchNorm (``weight``, ``running_mean``, ...); auxiliary branch ``b`` lives
    at ``aux.<b>.*``. Routing (set with :func:`route`) decides which branch normalizes what:

    * a branch name (``"main"``, ``"adv"``, ``"easy"``): the whole batch goes through it;
    * a list of names, e.g. ``["main", "adv"]``: the batch is split into equal slices, slice i
      through branch i (timm's ``SplitBatchNorm2d``), in one forward pass of the network;
    * a list of ``(name, size)`` pairs: slices of the given sizes.

    Unlike timm, the split applies in eval mode too (so an attack can be run on a split batch)
    and every branch honours the statistics mode.

    ``branches`` names the auxiliary branches (identifiers other than ``main``, no repeats); a
    bare string is one branch (``branches="adv"`` is ``("adv",)``, as everywhere in rnorm:
    :func:`rnorm._validate.as_sequence`).

    ``share`` is the ablation of Zhang et al. (2024): ``"none"`` (separate statistics and affine
    parameters), ``"affine"`` (separate statistics, the main branch's weight and bias for all
    branches), ``"stats"`` (one set of statistics -- computed over the whole input in training
    and kept in the main running buffers -- with separate affine parameters per branch).
    """

    def __init__(self, num_features: int, branches: Iterable[str] = ("adv", "easy"), stats: str = "population",
                 share: str = "none", **bn_kwargs):
        branches = as_sequence("branches", branches, nonempty=False)  # "adv" is one branch, not 'a', 'd', 'v'
        for b in branches:
            if not isinstance(b, str) or not b.isidentifier() or b == MAIN:
                raise ConfigError(f"branches={branches!r}: each auxiliary branch needs a name that is a Python "
                                  f"identifier other than 'main'; got {b!r}.")
        if len(set(branches)) != len(branches):
            raise ConfigError(f"branches={branches!r} repeats a name.")
        super().__init__(num_features, stats=stats, **bn_kwargs)
        self.share = check_choice("share", share, SHARE_MODES)
        aux_kwargs = dict(bn_kwargs)
        if share == "affine":
            aux_kwargs["affine"] = False
        self.aux = nn.ModuleDict({b: BatchNorm2d(num_features, stats=stats, **aux_kwargs) for b in branches})
        if share == "stats":
            for m in self.aux.values():  # only their affine parameters are used
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
        self._route = MAIN

    @property
    def branches(self) -> tuple[str, ...]:
        return (MAIN,) + tuple(self.aux.keys())

    @BatchNorm2d.stats.setter
    def stats(self, value: str) -> None:
        self._stats = _check_stats(value)
        if "aux" in self._modules:
            for m in self._modules["aux"].values():
                m.stats = value

    @property
    def route(self):
        return self._route

    @route.setter
    def route(self, value) -> None:
        self._route = _normalize_route(value, self.branches)

    def _affine(self, branch: str):
        if branch == MAIN or self.share == "affine":
            return self.weight, self.bias
        m = self.aux[branch]
        return m.weight, m.bias

    def _forward_branch(self, branch: str, x: torch.Tensor) -> torch.Tensor:
        if branch == MAIN:
            return BatchNorm2d.forward(self, x)
        if self.share == "affine":
            y = self.aux[branch](x)
            return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y
        if self.share == "stats":
            w, b = self._affine(branch)
            return self._shared_stats_forward(x, [(w, b, x.shape[0])])
        return self.aux[branch](x)

    def _shared_stats_forward(self, x, affines):
        """Normalize all of x with the main statistics, then apply each slice's own affine."""
        if self.training or self._stats == "population":
            factor = 0.0 if self.momentum is None else self.momentum
            if self.training:
                # As nn.BatchNorm2d: count the batch first, and momentum=None means a cumulative
                # average with factor 1/num_batches_tracked (passing 0.0 froze the buffers).
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
            xn = F.batch_norm(x, self.running_mean, self.running_var, None, None,
                              self.training, factor, self.eps)
        else:
            xn = _bn_eval(x, self.running_mean, self.running_var, None, None, self.eps, self._stats)
        outs, start = [], 0
        for w, b, n in affines:
            sl = xn[start:start + n]
            outs.append(sl * w[None, :, None, None] + b[None, :, None, None] if w is not None else sl)
            start += n
        return torch.cat(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self._route
        if isinstance(r, str):
            return self._forward_branch(r, x)
        n = x.shape[0]
        if r[0][1] is None:
            if n % len(r):
                raise ValueError(f"cannot split a batch of {n} into {len(r)} equal slices for branches "
                                 f"{[b for b, _ in r]}; route with (name, size) pairs instead.")
            sizes = [n // len(r)] * len(r)
        else:
            sizes = [s for _, s in r]
            if sum(sizes) != n:
                raise ValueError(f"route sizes {sizes} sum to {sum(sizes)} but the batch has {n} images.")
        names = [b for b, _ in r]
        if self.share == "stats":
            return self._shared_stats_forward(x, [(*self._affine(b), s) for b, s in zip(names, sizes)])
        parts = [self._forward_branch(b, c) for b, c in zip(names, x.split(sizes)) if c.shape[0] > 0]
        return torch.cat(parts)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", branches={self.branches}, share={self.share!r}"


class NoNorm2d(nn.Identity):
    """No normalization (identity); takes ``num_features`` so it fits wherever a norm does."""

    def __init__(self, num_features: int | None = None):
        super().__init__()
        self.num_features = num_features


NORMS = {"bn": BatchNorm2d, "robustnorm": RobustNorm2d, "multibn": MultiBatchNorm2d, "none": NoNorm2d}
STATEFUL = (BatchNorm2d, RobustNorm2d)


def _allowed_kwargs(cls) -> set[str]:
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "num_features", "bn_kwargs", "_ignored"}
    if issubclass(cls, nn.BatchNorm2d):
        names |= {"eps", "momentum", "affine", "track_running_stats", "device", "dtype"}
    return names


def make_norm(name: str, num_features: int, **kw) -> nn.Module:
    """Build a normalization layer by name: ``bn``, ``robustnorm``, ``multibn`` or ``none``.

    Keyword arguments go to the layer (e.g. ``p`` for RobustNorm, ``branches`` for multibn,
    ``stats`` for all but ``none``); an argument the layer does not take is an error.
    """
    cls = NORMS[check_choice("norm", name, tuple(NORMS))]
    allowed = _allowed_kwargs(cls)
    for k in kw:
        if k not in allowed:
            raise ConfigError(f"norm {name!r} takes no argument {k}={kw[k]!r}; allowed: "
                              f"{', '.join(sorted(allowed)) or 'none'}." + suggest(k, allowed))
    return cls(num_features, **kw)


def convert_norms(model: nn.Module, name: str, **kw) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``model`` (any model, e.g. torchvision's ResNet) in place.

    The new layer takes the old one's ``num_features``, ``eps``, ``momentum`` and ``affine``
    (unless given), its affine parameters and its running mean and variance (for ``multibn`` the
    auxiliary branches start as copies of the main one). A layer without affine parameters stays
    without; a layer without running statistics (``track_running_stats=False``: batch statistics
    at inference too) stays so for ``bn``/``multibn`` and becomes ``stats="batch"`` for
    ``robustnorm`` (unless ``stats`` is given). RobustNorm has no variance buffer: its running mean
    is copied and its running range starts at 1, as in the reference code; it has no cumulative
    average, so a layer with ``momentum=None`` needs ``momentum`` given. Other BatchNorm layers
    (``BatchNorm1d``/``3d``, ``SyncBatchNorm``, an uninitialized lazy one) are refused before
    anything changes, as rnorm's layers are 2-D and per-process. Returns ``model``.
    """
    check_choice("norm", name, tuple(NORMS))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} must be a torch.nn.Module whose BatchNorm2d layers to replace.")
    todo = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                _check_convertible(f"{parent_name}.{child_name}".lstrip("."), child, name, kw)
                todo.append((parent, child_name, child))
    for parent, child_name, child in todo:
        setattr(parent, child_name, _converted(child, name, kw))
    return model


def _check_convertible(where: str, layer: nn.Module, name: str, kw: dict) -> None:
    """Refuse a BatchNorm layer :func:`convert_norms` cannot replace faithfully, naming it and why."""
    kind = type(layer).__name__
    if isinstance(layer, nn.SyncBatchNorm):
        raise ConfigError(f"convert_norms: layer {where!r} is an nn.SyncBatchNorm, whose statistics span "
                          f"processes; rnorm's layers are per-process. Replace it with nn.BatchNorm2d first.")
    if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
        raise ConfigError(f"convert_norms: layer {where!r} is an uninitialized {kind}; run the model on one "
                          f"batch first so that its number of features is known.")
    if not isinstance(layer, nn.BatchNorm2d):
        raise ConfigError(f"convert_norms: layer {where!r} is an nn.{kind}; rnorm's layers normalize 4-D "
                          f"inputs only (allowed: nn.BatchNorm2d).")
    if name == "robustnorm" and layer.momentum is None and "momentum" not in kw:
        raise ConfigError(f"convert_norms: layer {where!r} has momentum=None (a cumulative average), which "
                          f"RobustNorm2d has not; give momentum=<a number in [0, 1]>.")


def _converted(old: nn.BatchNorm2d, name: str, kw: dict) -> nn.Module:
    """The layer ``name`` that replaces ``old`` (see :func:`convert_norms`), with its state copied."""
    if name == "none":
        return NoNorm2d(old.num_features)
    opts = dict(kw)
    opts.setdefault("eps", old.eps)
    opts.setdefault("momentum", old.momentum)
    opts.setdefault("affine", old.affine)
    if name in ("bn", "multibn"):
        # Without running stats nn.BatchNorm2d uses batch statistics in eval too; keep that.
        opts.setdefault("track_running_stats", old.track_running_stats)
    elif not old.track_running_stats:
        opts.setdefault("stats", "batch")
    new = make_norm(name, old.num_features, **opts)
    # Keep the old layer's device *and* dtype (a float64 model stayed float32 before and failed).
    ref = next((t for t in (old.weight, old.running_mean) if t is not None), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        targets = [new] + (list(new.aux.values()) if isinstance(new, MultiBatchNorm2d) else [])
        for t in targets:
            if old.affine and getattr(t, "weight", None) is not None:
                t.weight.copy_(old.weight)
                t.bias.copy_(old.bias)
            if old.track_running_stats and getattr(t, "running_mean", None) is not None:
                t.running_mean.copy_(old.running_mean)
                if getattr(t, "running_var", None) is not None:
                    t.running_var.copy_(old.running_var)
                    t.num_batches_tracked.copy_(old.num_batches_tracked)
    new.train(old.training)
    return new


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of every rnorm normalization layer of ``model``, in order.

    Auxiliary branches inside a MultiBatchNorm2d are not listed separately.
    """
    out = []
    for name, m in model.named_modules():
        if isinstance(m, STATEFUL) and not _is_aux(name):
            out.append((name, m))
    return out


def _is_aux(name: str) -> bool:
    return ".aux." in f".{name}"


class _Setting:
    """Applies a setting at once; used as a context manager, restores the previous values on exit."""

    def __init__(self, model: nn.Module, layers, attr: str, value):
        self.model = model
        self._saved = [(m, getattr(m, attr)) for m in layers]
        self._attr = attr
        for m in layers:
            setattr(m, attr, value)

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc) -> None:
        for m, old in self._saved:
            setattr(m, self._attr, old)


def _refuse_plain_bn(model: nn.Module, what: str) -> None:
    plain = [n for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, STATEFUL)]
    if plain:
        raise TypeError(f"{what} needs rnorm normalization layers, but {plain[0]!r} is a plain "
                        f"{type(dict(model.named_modules())[plain[0]]).__name__}; call "
                        f"rnorm.norms.convert_norms(model, 'bn') first.")


def use_stats(model: nn.Module, stats: str) -> _Setting:
    """Set the statistics mode of every normalization layer of ``model``.

    ``use_stats(model, "batch")`` sets it for good; ``with use_stats(model, "batch"):`` restores
    the previous modes on exit. A model without normalization layers is left as it is; a model
    with plain ``nn.BatchNorm2d`` layers is refused (they would silently ignore the mode).
    """
    _check_stats(stats)
    _refuse_plain_bn(model, "use_stats")
    layers = [m for n, m in model.named_modules() if isinstance(m, STATEFUL) and not _is_aux(n)]
    return _Setting(model, layers, "stats", stats)


def route(model: nn.Module, branch) -> _Setting:
    """Route batches through branches of every MultiBatchNorm2d of ``model``.

    ``branch`` is a name (``"main"``, ``"adv"``, ``"easy"``), a list of names (equal split of
    the batch, slice i through branch i) or a list of ``(name, size)`` pairs. Plain call or
    context manager, as :func:`use_stats`. Routing a model without multi-branch layers to any
    branch other than ``"main"`` is an error (it would silently use the main statistics).
    """
    layers = [m for m in model.modules() if isinstance(m, MultiBatchNorm2d)]
    if not layers:
        _normalize_route(branch, (MAIN,))  # only "main" makes sense without branches
        return _Setting(model, [], "route", None)
    for m in layers:
        _normalize_route(branch, m.branches)
    return _Setting(model, layers, "route", branch)


def branches_of(model: nn.Module) -> tuple[str, ...]:
    """The branch names shared by every MultiBatchNorm2d of ``model`` (``("main",)`` if none)."""
    layers = [m for m in model.modules() if isinstance(m, MultiBatchNorm2d)]
    return layers[0].branches if layers else (MAIN,)
