"""Seeded batches of one epoch, with the standard CIFAR augmentation done on whole batches of tensors.

Where this departs from torchvision: :func:`batches` replaces ``DataLoader`` +
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``: the augmentation is done on whole
batches of tensors, and both the shuffling and the augmentation are driven by one
``torch.Generator`` seeded from (seed, epoch), not by the global RNG, so an epoch is reproducible
on its own.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .._validate import ConfigTypeError
from ._common import _check_bool, _check_int, _check_pair, _generator


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`batches` yields for ``n`` examples."""
    n = _check_int("n", n, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    drop_last = _check_bool("drop_last", drop_last)
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
            shuffle: bool = True, seed: int = 0, epoch: int = 0, augment: bool = False,
            pad: int = 4, flip: bool = True, drop_last: bool = False,
            device: str | torch.device = "cpu",
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over one epoch in batches of ``(float32 [B, C, H, W] in [0, 1], int64 [B])``.

    * Order: with ``shuffle`` a permutation from a ``torch.Generator`` seeded with a hash of
      ``(seed, epoch)``; otherwise the stored order. Every example appears exactly once per
      epoch (the last, smaller batch is dropped only with ``drop_last``). Deterministic on CPU.
    * ``augment``: per image, a random crop of the zero-padded image (``pad`` pixels on every
      side, offsets uniform in ``0..2*pad``) and, if ``flip``, a horizontal flip with
      probability 1/2. Done for the whole batch at once (pad once, then ``unfold`` + one
      advanced-indexing gather), driven by the same generator, drawn after the permutation.
    * Images are converted from uint8 to float (/255) one batch at a time, on ``device``.

    Arguments are validated when this is called, not at the first ``next()``.
    """
    images, labels = _check_pair(images, labels)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed)
    epoch = _check_int("epoch", epoch, 0)
    pad = _check_int("pad", pad, 0)
    shuffle = _check_bool("shuffle", shuffle)
    augment = _check_bool("augment", augment)
    flip = _check_bool("flip", flip)
    drop_last = _check_bool("drop_last", drop_last)
    if not isinstance(device, (str, torch.device)):
        raise ConfigTypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    device = torch.device(device)
    return _batch_iter(images, labels, batch_size, shuffle, seed, epoch, augment, pad, flip,
                       drop_last, device)


def _batch_iter(images, labels, batch_size, shuffle, seed, epoch, augment, pad, flip,
                drop_last, device):
    n = images.shape[0]
    g = _generator("batches", seed, epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    if order.device != images.device:
        order = order.to(images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x = images[idx].to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        if augment:
            x = _augment(x, pad, flip, g)
        yield x.float().div_(255.0), y


def _augment(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random zero-padded crop + optional horizontal flip, per image, vectorized.

    The batch is padded once; ``unfold`` gives a view of every crop position
    ``[B, C, 2*pad+1, 2*pad+1, H, W]`` and one advanced-indexing gather picks each image's crop.
    """
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g).to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    crops = xp.unfold(2, h, 1).unfold(3, w, 1)
    out = crops[torch.arange(b, device=x.device), :, offsets[:, 0], offsets[:, 1]]
    if flip:
        flips = (torch.rand(b, generator=g) < 0.5).to(x.device)
        out[flips] = out[flips].flip(-1)
    return out
