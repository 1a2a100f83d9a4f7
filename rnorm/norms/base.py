"""What every normalization layer of :mod:`rnorm.norms` shares: the statistics mode and the argument checks.

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

from .._validate import ConfigError, check_bool, check_choice, check_float, check_int


STATS_MODES = ("population", "batch", "population_mean")


def _check_stats(stats) -> str:
    return check_choice("stats", stats, STATS_MODES)


class _StatsModeMixin:
    """Holds the validated ``stats`` attribute shared by every layer of this package."""

    _stats: str

    @property
    def stats(self) -> str:
        return self._stats

    @stats.setter
    def stats(self, value: str) -> None:
        self._stats = _check_stats(value)


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
