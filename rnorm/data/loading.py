""":func:`load`: a whole split as tensors, from the reader of its dataset, memoized in the process.

In-process memo: :func:`load` returns the *same* tensor objects for repeated calls with the
same (dataset, split, root), as long as the files are unchanged (:func:`_proof`: their sizes and
modification times, checked on every call; ``cifar10``, read through torchvision, is read again
each time). **Do not modify them in place** (copy first, e.g. with :func:`rnorm.data.subset` or
``.clone()``).

Where this departs from torchvision: :func:`load` returns a whole split as tensors (images
``uint8 [N, C, H, W]``, labels ``int64 [N]``) instead of a ``Dataset`` of PIL images; nothing is
normalized here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ._common import _check_choice
from .checksums import _stat
from .cifar10 import _load_cifar10
from .cifar10_jpeg import _jpeg_proof, _load_cifar10_jpeg, _split_stats
from .fashion_mnist import _IDX_FILES, _find_idx, _load_fashion_mnist
from .registry import DATASETS, DataError, _SPLITS, data_root


# (dataset, split, resolved root) -> (images, labels, proof). See the module docstring.
_MEMO: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor, object]] = {}


def load(name: str, split: str, root: str | os.PathLike | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split: images ``uint8 [N, C, H, W]`` and labels ``int64 [N]``.

    ``name`` is one of :data:`DATASETS`, ``split`` is ``"train"`` or ``"test"``, ``root``
    defaults to :func:`data_root`. Repeated calls in one process return the same tensor
    objects (in-process memo) as long as the files are unchanged (their sizes and modification
    times are checked on every call; ``cifar10``, read through torchvision, is read again each
    time), so callers must not modify them in place.

    Raises :class:`DataError` for missing or corrupt files, ``ValueError`` for an unknown
    dataset or split.
    """
    name = _check_choice("dataset", name, tuple(DATASETS))
    split = _check_choice("split", split, _SPLITS)
    root_path = data_root(root)
    if root_path.exists() and not root_path.is_dir():
        raise DataError(f"data root {root_path} is a file, not a folder; set RNORM_DATA to the folder that holds "
                        f"FashionMNIST/ and CIFAR-10-JPEG/.")
    key = (name, split, str(root_path))
    if key in _MEMO:
        images, labels, proof = _MEMO[key]
        if proof is not None and proof == _proof(name, root_path, split):
            return images, labels
    if name == "fashion_mnist":
        images, labels = _load_fashion_mnist(root_path, split)
        proof = _proof(name, root_path, split)
    elif name == "cifar10":
        images, labels = _load_cifar10(root_path, split)
        proof = None
    else:
        images, labels, proof = _load_cifar10_jpeg(root_path, split)
    _MEMO[key] = (images, labels, proof)
    return images, labels


def _proof(name: str, root: Path, split: str):
    """What a memo hit must still match: the size and mtime of every file the split was read from
    (and of the checksum list), or None where there is nothing cheap to check (torchvision's CIFAR-10)."""
    if name == "fashion_mnist":
        raw = root / "FashionMNIST" / "raw"
        files = [p for base in _IDX_FILES[split] for p in (_find_idx(raw, base),) if p is not None]
        files.append(root / "SHA256SUMS")
        return tuple((str(f), *_stat(f)) for f in files)
    if name == "cifar10_jpeg":
        base = root / "CIFAR-10-JPEG"
        try:
            return _jpeg_proof(base, _split_stats(base, split))
        except DataError:
            return ("missing",)
    return None
