"""CIFAR-10, the official python-version batches, read through ``torchvision.datasets.CIFAR10``
(which checks their md5 sums) from ``<root>/cifar-10-batches-py``, and downloaded by it when they
are missing (not with ``RNORM_OFFLINE=1``). The split is returned as tensors (images
``uint8 [N, 3, 32, 32]``, labels ``int64 [N]``), not as torchvision's ``Dataset`` of PIL images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .registry import DataError, _how_to_get, _offline


def _load_cifar10(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    online = not _offline()
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=(split == "train"), download=online)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError/URLError/...
        tried = "download failed" if online else "download not tried (RNORM_OFFLINE=1)"
        raise DataError(
            f"CIFAR-10 {split} (official python batches) not found or corrupt in "
            f"{root / 'cifar-10-batches-py'} ({tried}: {exc}). "
            + _how_to_get(
                " Offline alternative: the dataset 'cifar10_jpeg' reads CIFAR-10-JPEG/ (a "
                "complete but LOSSY JPEG re-encoding; its numbers are not CIFAR-10 numbers)."
            )
        ) from exc
    data = np.asarray(ds.data)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        raise DataError(f"CIFAR-10 {split} in {root}: unexpected data {data.dtype} {data.shape}")
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    if labels.shape[0] != images.shape[0] or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"CIFAR-10 {split} in {root}: labels inconsistent with images")
    return images, labels
