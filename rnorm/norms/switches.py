"""Model-wide switches: :func:`use_stats` and :func:`route` set the statistics mode / branch of every
layer of a model, as a plain call or as a context manager that restores the previous setting;
:func:`norm_layers` and :func:`branches_of` say which layers and branches a model has.
"""
from __future__ import annotations

import torch.nn as nn

from .base import _check_stats
from .create import STATEFUL
from .multibn import MAIN, MultiBatchNorm2d, _normalize_route


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
