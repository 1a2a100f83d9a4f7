""":class:`MultiBatchNorm2d`: a main BatchNorm plus named auxiliary BatchNorms, for AdvProp
(Xie et al. 2020) and EBN, with whole-batch routing to one branch or a split of one batch into
per-branch slices (:func:`_normalize_route` validates a route; :func:`rnorm.norms.route` sets it on a
model).

The main branch is the module itself, so it keeps the state-dict keys of a plain BatchNorm. An
equal split follows timm's ``SplitBatchNorm2d``; unlike timm, the split applies in eval mode too
(so an attack can be run on a split batch) and every branch honours the statistics mode.
``share`` is the ablation of Zhang et al. (2024).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import ConfigError, as_sequence, check_choice
from .base import _check_stats
from .batchnorm import BatchNorm2d, _bn_eval


SHARE_MODES = ("none", "affine", "stats")
MAIN = "main"


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
