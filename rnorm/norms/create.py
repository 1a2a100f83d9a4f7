"""Layers by name: the registry :data:`NORMS` (timm's ``create_norm`` habit: lower-case names, layers
that take ``num_features`` first), :func:`make_norm`, and :func:`convert_norms`, which swaps rnorm's
layers into any model (e.g. torchvision's ResNet) with the old layers' state. :class:`NoNorm2d` is
the ``none`` entry.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from .._validate import ConfigError, check_choice, suggest
from .batchnorm import BatchNorm2d
from .multibn import MultiBatchNorm2d
from .robustnorm import RobustNorm2d


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
