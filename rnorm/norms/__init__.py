"""Normalization layers with a statistics mode: BatchNorm, RobustNorm, multi-branch BatchNorm.

Three layers, one registry and three model-wide switches:

* :class:`BatchNorm2d` -- ``nn.BatchNorm2d`` plus a *statistics mode* used at inference.
* :class:`RobustNorm2d` -- the range-based normalization of RobustNorm (Awais et al. 2020).
* :class:`MultiBatchNorm2d` -- a main BatchNorm plus named auxiliary BatchNorms (AdvProp, EBN),
  with whole-batch routing to one branch or a split of one batch into per-branch slices.
* :func:`make_norm` / :func:`convert_norms` build layers by name or swap them into any model;
  :func:`use_stats` and :func:`route` set the statistics mode / branch of every layer of a model,
  as a plain call or as a context manager that restores the previous setting.

The statistics modes (``population``, ``batch``, ``population_mean``) and what ``train()`` mode does
whatever the mode are described once, in :mod:`rnorm.norms.base`.

One module per concept; every name is importable from ``rnorm.norms`` (a test that patches a private
helper patches it in its own module, where the code looks it up):

``base``        the statistics modes and the argument checks every layer shares
``batchnorm``   :class:`BatchNorm2d` and BatchNorm at inference in each mode
``robustnorm``  :class:`RobustNorm2d` and its hand-written forward and backward
``multibn``     :class:`MultiBatchNorm2d`, its branches and routes
``create``      the registry :data:`NORMS`, :func:`make_norm`, :func:`convert_norms`, :class:`NoNorm2d`
``switches``    :func:`use_stats`, :func:`route`, :func:`norm_layers`, :func:`branches_of`
"""
from __future__ import annotations

from .base import STATS_MODES
from .batchnorm import BatchNorm2d
from .create import NORMS, STATEFUL, NoNorm2d, convert_norms, make_norm
from .multibn import MAIN, SHARE_MODES, MultiBatchNorm2d
from .robustnorm import RobustNorm2d
from .switches import branches_of, norm_layers, route, use_stats

# Private names, still importable from rnorm.norms as before the split (read them here; patch them in
# their own module, where the code looks them up).
from .base import _StatsModeMixin, _check_norm_args, _check_stats  # noqa: F401
from .batchnorm import _bn_eval, _check_bn_args  # noqa: F401
from .create import _allowed_kwargs, _check_convertible, _converted  # noqa: F401
from .multibn import _normalize_route  # noqa: F401
from .robustnorm import (  # noqa: F401
    _RobustNormFn, _bn_params, _channel_extremes, _memory_format, _range_grad, _spread_by_index, _spread_by_mask,
    _where_equal,
)
from .switches import _Setting, _is_aux, _refuse_plain_bn  # noqa: F401

__all__ = [
    "MAIN",
    "NORMS",
    "SHARE_MODES",
    "STATEFUL",
    "STATS_MODES",
    "BatchNorm2d",
    "MultiBatchNorm2d",
    "NoNorm2d",
    "RobustNorm2d",
    "branches_of",
    "convert_norms",
    "make_norm",
    "norm_layers",
    "route",
    "use_stats",
]
