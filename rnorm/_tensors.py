"""The small checks and helpers every module that takes images, labels or models shares (one home each).

* :func:`float_images` -- uint8 images become float / 255; float images must be finite and lie
  in [0, 1] (NaN passes a ``min() < 0`` test, so it is checked on its own).
* :func:`check_labels` -- an integer vector of one label per image, each in ``[0, num_classes)``
  when the number of classes is known (a negative label would silently score 0 %).
* :func:`check_images_labels` -- both at once: the one input check of every attack and of
  :func:`rnorm.evaluate.evaluate`; :func:`num_outputs` -- a model's number of classes.
* :func:`model_device` -- the device of a model's first parameter or buffer.
* :func:`stable_seed` -- a seed from a stable hash of its parts (not Python's salted ``hash``).
* :func:`pack_bits` / :func:`unpack_bits` -- per-image booleans as text in a CSV cell, written by
  :mod:`rnorm.evaluate` (which re-exports both) and read by :mod:`rnorm.stats` and the study.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from ._validate import ConfigError, ConfigTypeError


def float_images(param: str, images, *, dtypes=None) -> torch.Tensor:
    """uint8 images -> float / 255; float images are checked to be finite and in [0, 1].

    ``dtypes``: the float dtypes allowed (any float dtype when ``None``); uint8 is accepted only
    when ``dtypes`` is ``None``. A float tensor with values above 1 but none above 255 is refused
    with a message that says it looks like 0..255 pixels (divide by 255 or pass uint8). A wrong
    type or dtype raises :class:`ConfigTypeError` (a TypeError), a wrong shape or value a
    :class:`ConfigError` (a ValueError); each message names the bad value and what is allowed.
    """
    allowed = "uint8, or float in [0, 1]" if dtypes is None else " or ".join(map(str, dtypes)) + " in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise ConfigTypeError(f"{param} must be a torch.Tensor [N, C, H, W] ({allowed}); got {type(images).__name__}.")
    if images.dim() != 4:
        raise ConfigError(f"{param} must have shape [N, C, H, W]; got shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8 and dtypes is None:
        return images.float().div_(255.0)
    if not images.is_floating_point() or (dtypes is not None and images.dtype not in dtypes):
        hint = " (0..255 pixels: divide by 255)" if images.dtype == torch.uint8 else ""
        raise ConfigTypeError(f"{param} has dtype {images.dtype}; allowed: {allowed}{hint}.")
    if images.numel():
        finite = torch.isfinite(images)
        if not finite.all():
            bad = (~finite).nonzero()[0]
            value = images[tuple(bad)].item()
            raise ConfigError(f"{param} holds {int((~finite).sum())} NaN or infinite value(s) (first: {value} at "
                              f"index {tuple(bad.tolist())}); allowed: finite values in [0, 1].")
        lo, hi = images.min().item(), images.max().item()
        if lo < 0 or hi > 1:
            looks = (" (they look like 0..255 pixel values: divide by 255, or pass uint8 images)"
                     if lo >= 0 and 1 < hi <= 255 else "")
            raise ConfigError(f"{param} must lie in [0, 1] (pixel scale); got values in [{lo:.4g}, {hi:.4g}]{looks}.")
    return images


IGNORE_INDEX = -100  # cross-entropy's default ignore_index: a loss of 0, so an attack would do nothing


def check_labels(labels, n: int, num_classes: int | None = None) -> torch.Tensor:
    """An int64 vector of ``n`` labels, each in ``[0, num_classes)`` (or >= 0 when unknown).

    Refused, naming the bad value: a non-tensor, a float or boolean dtype (:class:`ConfigTypeError`),
    a shape other than ``[n]``, a negative label (cross-entropy's ignore index -100 included: its
    loss is 0, so an attack would return its random start as "adversarial"), and a label the model
    cannot output (:class:`ConfigError`).
    """
    if not isinstance(labels, torch.Tensor):
        raise ConfigTypeError(f"labels must be an integer torch.Tensor of shape [N]; got {type(labels).__name__}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ConfigTypeError(f"labels must be an integer torch.Tensor of shape [N]; got dtype {labels.dtype} "
                              f"(allowed: an integer dtype such as torch.int64).")
    if labels.dim() != 1:
        raise ConfigError(f"labels must be an integer torch.Tensor of shape [N]; got shape {tuple(labels.shape)}.")
    if labels.shape[0] != n:
        raise ConfigError(f"labels has {labels.shape[0]} entries but there are {n} images; allowed: one label per image.")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            allowed = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            bad = labels[(labels < 0) | (labels >= (num_classes if num_classes is not None else hi + 1))]
            first = int(bad[0])
            why = " (-100 is cross-entropy's ignore index: its loss is 0)" if first == IGNORE_INDEX else ""
            raise ConfigError(f"labels range over {lo}..{hi}: label {first}{why} is not allowed; allowed: {allowed}"
                              + (f" (the model has {num_classes} outputs)." if num_classes is not None else "."))
    return labels.long()


def check_images_labels(images, labels, num_classes: int | None = None, *, dtypes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one input check of every attack, :func:`rnorm.evaluate.evaluate` and ``accuracy``.

    ``images``: :func:`float_images` (a 4-D tensor, finite, in [0, 1]; ``dtypes`` as there);
    ``labels``: :func:`check_labels` (an integer vector, one label per image, each in
    ``[0, num_classes)``). Everything is checked before any work; returns ``(images, labels)``
    as float images and int64 labels.
    """
    images = float_images("images", images, dtypes=dtypes)
    return images, check_labels(labels, images.shape[0], num_classes)


def num_outputs(model: nn.Module, images: torch.Tensor) -> int:
    """The number of classes ``model`` outputs, from one no-grad eval forward of (at most) two of
    ``images`` in the model's current statistics mode and route; every training flag is restored,
    and no running buffer changes (eval mode)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(images[:2].to(model_device(model)))
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model must output logits of shape [N, classes]; got {shape}.")
    return int(out.shape[1])


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
