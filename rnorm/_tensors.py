"""The small checks and helpers every module that takes images, labels or models shares (one home each).

* :func:`float_images` -- uint8 images become float / 255; float images must be finite and lie
  in [0, 1] (NaN passes a ``min() < 0`` test, so it is checked on its own).
* :func:`check_labels` -- an integer vector of one label per image, each in ``[0, num_classes)``
  when the number of classes is known (a negative label would silently score 0 %).
* :func:`model_device` -- the device of a model's first parameter or buffer.
* :func:`stable_seed` -- a seed from a stable hash of its parts (not Python's salted ``hash``).
* :func:`pack_bits` / :func:`unpack_bits` -- per-image booleans as text in a CSV cell, written by
  :mod:`rnorm.evaluate` (which re-exports both) and read by :mod:`rnorm.stats` and the study.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from ._validate import ConfigError


def float_images(param: str, images) -> torch.Tensor:
    """uint8 images -> float / 255; float images are checked to be finite and in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{param} must be a torch.Tensor [N, C, H, W]; got {type(images).__name__}.")
    if images.dim() != 4:
        raise ConfigError(f"{param} must have shape [N, C, H, W]; got {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ConfigError(f"{param} must be uint8 or float in [0, 1]; got dtype {images.dtype}.")
    if images.numel():
        if not torch.isfinite(images).all():
            bad = int((~torch.isfinite(images)).sum())
            raise ConfigError(f"{param} holds {bad} NaN or infinite value(s); images must be finite, in [0, 1].")
        if images.min() < 0 or images.max() > 1:
            raise ConfigError(f"{param} must lie in [0, 1] (pixel scale); got values in "
                              f"[{images.min().item():.3g}, {images.max().item():.3g}].")
    return images


def check_labels(labels, n: int, num_classes: int | None = None) -> torch.Tensor:
    """An int64 vector of ``n`` labels, each in ``[0, num_classes)`` (or >= 0 when unknown)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or \
            labels.dtype == torch.bool:
        raise ConfigError("labels must be an integer torch.Tensor of shape [N].")
    if labels.shape[0] != n:
        raise ConfigError(f"labels has {labels.shape[0]} entries but there are {n} images.")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            allowed = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            raise ConfigError(f"labels range over {lo}..{hi}; allowed: {allowed}"
                              + (f" (the model has {num_classes} outputs)." if num_classes is not None else "."))
    return labels.long()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def stable_seed(namespace: str, *parts, modulus: int = 2**63) -> int:
    """``sha256("<namespace>:" + ":".join(parts))`` read as a little-endian 64-bit integer, mod ``modulus``."""
    text = f"{namespace}:" + ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % modulus


_BITS = "bits:"


def pack_bits(mask: torch.Tensor) -> str:
    """A boolean vector as ``bits:`` + hex of its packed bits (first image = highest bit of the first
    byte); the prefix keeps CSV readers from taking it for a number."""
    import numpy as np
    return _BITS + np.packbits(mask.numpy().astype(np.uint8)).tobytes().hex()


def unpack_bits(text: str, n: int):
    """The boolean numpy vector of length ``n`` that :func:`pack_bits` wrote as ``text``."""
    import numpy as np
    if not isinstance(text, str) or not text.startswith(_BITS):
        raise ConfigError(f"per-image bits {str(text)[:20]!r} are not what pack_bits writes: a damaged results file?")
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text[len(_BITS):]), dtype=np.uint8))
    if bits.size < n or bits[n:].any():
        raise ConfigError(f"per-image bits hold {bits.size} entries, not {n}: a damaged results file?")
    return bits[:n].astype(bool)
