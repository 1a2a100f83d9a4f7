"""FashionMNIST, read from the official IDX files by a strict reader of this package.

The four official IDX files in ``<root>/FashionMNIST/raw/``
(``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, uncompressed; the ``.gz`` files are
accepted when only those are present). This is the layout torchvision uses. The files are
parsed here with numpy and checked strictly: magic number (2051 images, 2049 labels),
28x28 images, file size equal to the size the header announces (a truncated file *and* a
file with trailing bytes are errors), as many labels as images, labels in 0..9. Where the data
root holds a ``SHA256SUMS`` list, the files are verified against it (:mod:`.checksums`).

Where this departs from torchvision: FashionMNIST is parsed by this module (stricter checks than
torchvision's reader; the ``.gz`` files are accepted). torchvision is used only to download the
files when they are missing (not with ``RNORM_OFFLINE=1``).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from .checksums import _verify_checksums
from .registry import DATASETS, DataError, _how_to_get, _offline


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(raw: Path, base: str) -> Path | None:
    for cand in (raw / base, raw / (base + ".gz")):
        if cand.is_file():
            return cand
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one uint8 IDX file strictly (see the module docstring)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                buf = bytearray(f.read())
        else:
            buf = bytearray(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"IDX file {path} is truncated: {len(buf)} bytes, shorter than its "
            f"{header}-byte header"
        )
    found = int.from_bytes(buf[0:4], "big")
    if found != magic:
        raise DataError(
            f"IDX file {path} has magic number {found}, expected {magic} "
            f"({'images' if magic == 2051 else 'labels'}, uint8, {ndim}-D)"
        )
    dims = [int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(buf) != expected:
        kind = "truncated" if len(buf) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {kind}: header says {'x'.join(map(str, dims))} "
            f"({expected} bytes), file has {len(buf)} bytes"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _load_fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / "FashionMNIST" / "raw"
    img_base, lab_base = _IDX_FILES[split]
    img_path, lab_path = _find_idx(raw, img_base), _find_idx(raw, lab_base)
    if (img_path is None or lab_path is None) and not _offline():
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(root), train=(split == "train"), download=True)
        except Exception:  # noqa: BLE001 - any download failure ends in the DataError below
            pass
        img_path, lab_path = _find_idx(raw, img_base), _find_idx(raw, lab_base)
    for path, base in ((img_path, img_base), (lab_path, lab_base)):
        if path is None:
            tried = "not tried (RNORM_OFFLINE=1)" if _offline() else "failed"
            raise DataError(
                f"FashionMNIST {split} file {base} (or {base}.gz) not found in {raw} "
                f"(download {tried}). " + _how_to_get()
            )
    _verify_checksums(root, [img_path, lab_path])
    images = _read_idx(img_path, 2051, 3)
    labels = _read_idx(lab_path, 2049, 1)
    size = DATASETS["fashion_mnist"].image_size
    if images.shape[1:] != (size, size):
        raise DataError(
            f"IDX file {img_path} holds {images.shape[1]}x{images.shape[2]} images, "
            f"expected {size}x{size}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"count mismatch: {img_path} holds {images.shape[0]} images but {lab_path} holds "
            f"{labels.shape[0]} labels"
        )
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(
            f"IDX file {lab_path} has {bad.size} label(s) outside 0..9, first at index "
            f"{bad[0]}: {labels[bad[0]]}"
        )
    return (torch.from_numpy(images).unsqueeze(1),
            torch.from_numpy(labels).to(torch.int64))
