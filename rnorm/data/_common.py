"""What the batching and subset modules of :mod:`rnorm.data` share: argument checks with this
package's messages (a wrong type is a :class:`~rnorm._validate.ConfigTypeError`, a wrong value a
:class:`~rnorm._validate.ConfigError` naming the allowed values) and the seeded CPU generator.

The generator is seeded from a stable hash of its parts (not Python's ``hash``, not the global RNG),
so an epoch's order and augmentation and a subset are reproducible on their own.
"""

from __future__ import annotations

import difflib
import hashlib

import numpy as np
import torch

from .._validate import ConfigError, ConfigTypeError


def _check_choice(param: str, value: object, allowed: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(
            f"{param} must be a str, one of {', '.join(map(repr, allowed))}; "
            f"got {value!r} of type {type(value).__name__}"
        )
    if value in allowed:
        return value
    msg = f"unknown {param} {value!r}; allowed: {', '.join(map(repr, allowed))}"
    norm = {a.lower().replace("-", "_"): a for a in allowed}
    close = difflib.get_close_matches(value.lower().replace("-", "_"), list(norm), n=1)
    if close:
        msg += f"; did you mean {norm[close[0]]!r}?"
    raise ConfigError(msg)


def _check_int(param: str, value: object, minimum: int | None = None) -> int:
    rng = "any int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigTypeError(f"{param} must be {rng}, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{param} must be {rng}, got {value}")
    return value


def _check_bool(param: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigTypeError(f"{param} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def _check_pair(images: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor):
        raise ConfigTypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise ConfigTypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ConfigTypeError(
            f"images must be a uint8 tensor of shape [N, C, H, W] (as returned by load), got "
            f"dtype {images.dtype} and shape {list(images.shape)}"
        )
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex \
            or labels.dtype == torch.bool:
        raise ConfigTypeError(
            f"labels must be an integer tensor of shape [N], got dtype {labels.dtype} and "
            f"shape {list(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ConfigError(
            f"images and labels must have the same length, got {images.shape[0]} images and "
            f"{labels.shape[0]} labels"
        )
    return images, labels.long()


def _generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from a stable hash of ``parts`` (not Python's ``hash``)."""
    text = "rnorm.data:" + ":".join(str(p) for p in parts)
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g
