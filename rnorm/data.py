"""Datasets as whole-split uint8 tensors, plus seeded batching and augmentation.

What is loaded, and from where
------------------------------
Every dataset is read from a data root: the ``root`` argument, else the environment
variable ``RNORM_DATA``, else ``./data`` (see :func:`data_root`).

``fashion_mnist``
    The four official IDX files in ``<root>/FashionMNIST/raw/``
    (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, uncompressed; the ``.gz`` files are
    accepted when only those are present). This is the layout torchvision uses. The files are
    parsed here with numpy and checked strictly: magic number (2051 images, 2049 labels),
    28x28 images, file size equal to the size the header announces (a truncated file *and* a
    file with trailing bytes are errors), as many labels as images, labels in 0..9.

``cifar10``
    The official python-version batches, read through ``torchvision.datasets.CIFAR10``
    (which checks their md5 sums) from ``<root>/cifar-10-batches-py``.

``cifar10_jpeg``
    A lossy JPEG re-encoding of all 60,000 CIFAR-10 images (quality 75, 4:2:0 chroma) in
    ``<root>/CIFAR-10-JPEG/{train,test}/<class>/NNNN.jpg`` with ``MANIFEST.sha256``. It is
    **not** CIFAR-10: numbers computed on it must be reported as numbers on the JPEG copy.
    Class index = alphabetical order of the class names (equal to the official CIFAR-10 label
    order); samples are ordered by (class, file name), so the original CIFAR-10 sample order is
    *not* reproduced. The files of a split must be exactly the manifest's entries for that
    split and every file's sha256 must match. Decoding uses Pillow.

Downloads are attempted (through torchvision) only for ``fashion_mnist`` and ``cifar10``,
only when the files are missing and only when ``RNORM_OFFLINE`` is not ``"1"``; a failed
download is reported as :class:`DataError` with instructions.

Caching
-------
* In-process memo: :func:`load` returns the *same* tensor objects for repeated calls with the
  same (dataset, split, root). **Do not modify them in place** (copy first, e.g. with
  :func:`subset` or ``.clone()``).
* ``cifar10_jpeg`` only: the decoded split is stored in
  ``<cache_dir>/cifar10_jpeg-<split>-<16 hex>.pt``, where the hex digits are the start of the
  sha256 of the manifest's lines for that split, and ``cache_dir`` is ``$RNORM_CACHE``, else
  ``<root>/.rnorm-cache`` when the root is writable, else ``~/.cache/rnorm``. A root whose
  permission bits grant no write access (for example a read-only shared data folder) counts as
  not writable even for root. The cache records the size and modification time of every file
  it was built from. **Every load** (the in-process memo included) lists the split's folder
  again and proves the files are the ones the cache was made from: the set of files must be the
  manifest's (a deleted class folder or a stray file is an error), and any file whose size or
  modification time changed is re-hashed against the manifest (a flipped JPEG is an error; a
  file only touched is accepted). Listing and stat-ing the 50,000 training files takes about a
  quarter of a second. A cache file that cannot be read or has the wrong shapes/labels is
  deleted and rebuilt.
* Checksum lists: where the data root holds a ``SHA256SUMS`` file (``<sha256>  <relative
  path>`` lines, as ``sha256sum -c`` reads), every listed file a loader reads is verified
  against it on every load -- hashed when its size or modification time differs from the last
  verified one (recorded in ``<cache_dir>/verified-<root hash>.json``), so a flipped label byte
  in FashionMNIST is an error, not a silently wrong dataset.

Where this departs from torchvision
-----------------------------------
* :func:`load` returns a whole split as tensors (images ``uint8 [N, C, H, W]``, labels
  ``int64 [N]``) instead of a ``Dataset`` of PIL images; nothing is normalized here. The
  per-channel ``mean``/``std`` in :class:`DatasetInfo` are for the model to apply, so that
  attack budgets stay in [0, 1] pixel units.
* FashionMNIST is parsed by this module (stricter checks than torchvision's reader; the
  ``.gz`` files are accepted).
* ``cifar10_jpeg`` is not a torchvision dataset. ``ImageFolder`` would read the same layout
  and the same order, but without the manifest checks.
* :func:`batches` replaces ``DataLoader`` + ``RandomCrop(32, padding=4)`` +
  ``RandomHorizontalFlip()``: the augmentation is done on whole batches of tensors, and both
  the shuffling and the augmentation are driven by one ``torch.Generator`` seeded from
  (seed, epoch), not by the global RNG, so an epoch is reproducible on its own.
* ``cifar10_jpeg`` uses the standard CIFAR-10 mean/std, not its own statistics (train mean
  agrees to 1e-4; its std is 0.001-0.002 lower, see ``CIFAR-10-JPEG/SOURCE.md``).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import io
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import ConfigError, ConfigTypeError

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "batches",
    "data_root",
    "info",
    "load",
    "num_batches",
    "subset",
]


class DataError(RuntimeError):
    """A dataset file is missing, unreadable, or fails a consistency check."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (shapes, classes, normalization constants)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    augment_default: bool
    lossy: bool
    description: str


_CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)

DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        classes=_FASHION_CLASSES,
        augment_default=False,
        lossy=False,
        description="FashionMNIST, official IDX files (60,000 train / 10,000 test, 28x28 gray); "
        "mean/std are the train pixel statistics.",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
        classes=_CIFAR_CLASSES,
        augment_default=True,
        lossy=False,
        description="CIFAR-10, official python-version batches via torchvision "
        "(50,000 train / 10,000 test, 32x32 RGB); standard mean/std.",
    ),
    "cifar10_jpeg": DatasetInfo(
        name="cifar10_jpeg",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
        classes=_CIFAR_CLASSES,
        augment_default=True,
        lossy=True,
        description="CIFAR-10 re-encoded as JPEG (quality 75, 4:2:0) by a third party; LOSSY, "
        "not the original CIFAR-10. Samples ordered by (class, file name). Uses the standard "
        "CIFAR-10 mean/std, not its own statistics.",
    ),
}

_SPLITS = ("train", "test")

# (dataset, split, resolved root) -> (images, labels). See the module docstring.
_MEMO: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor, object]] = {}  # + the proof

_CACHE_VERSION = 3  # 2: records the size and mtime of every source file; 3: as an int64 tensor


# ----------------------------------------------------------------------------- validation


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


# ----------------------------------------------------------------------------- public API


def info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of dataset ``name`` (a key of :data:`DATASETS`)."""
    return DATASETS[_check_choice("dataset", name, tuple(DATASETS))]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$RNORM_DATA`` if set, else ``./data``.

    Returned as an absolute path (``~`` expanded) so that error messages name it fully.
    """
    if root is None:
        env = os.environ.get("RNORM_DATA")
        root = env if env else "data"
    return Path(os.path.expanduser(os.fspath(root))).absolute()


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


def _jpeg_proof(base: Path, stats: dict) -> tuple:
    return (_stat(base / "MANIFEST.sha256"), tuple(sorted(stats.items())))


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`batches` yields for ``n`` examples."""
    n = _check_int("n", n, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    drop_last = _check_bool("drop_last", drop_last)
    return n // batch_size if drop_last else -(-n // batch_size)


def _generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from a stable hash of ``parts`` (not Python's ``hash``)."""
    text = "rnorm.data:" + ":".join(str(p) for p in parts)
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


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


def subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0,
           stratified: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, deterministic subset of ``n`` examples (new tensors, in the stored order).

    With ``stratified`` the classes present are balanced: each gets ``n // K`` examples and
    ``n % K`` randomly chosen classes get one more; a class with too few examples gives all it
    has and the rest is spread over the other classes. Without ``stratified`` the subset is a
    uniform random sample. ``n`` larger than the split raises ``ValueError``.
    """
    images, labels = _check_pair(images, labels)
    sel = _subset_indices(labels, n, seed, stratified)
    return images[sel.to(images.device)], labels[sel.to(labels.device)]


def split_off(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(held_images, held_labels, rest_images, rest_labels)``: the stratified :func:`subset` of
    ``n`` examples and everything else, disjoint, both in the stored order."""
    images, labels = _check_pair(images, labels)
    sel = _subset_indices(labels, n, seed, True)
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[sel] = False
    rest = torch.nonzero(keep, as_tuple=True)[0]
    return (images[sel.to(images.device)], labels[sel.to(labels.device)],
            images[rest.to(images.device)], labels[rest.to(labels.device)])


def _subset_indices(labels: torch.Tensor, n, seed, stratified) -> torch.Tensor:
    """Sorted indices of the seeded subset (see :func:`subset`)."""
    n = _check_int("n", n, 0)
    seed = _check_int("seed", seed)
    stratified = _check_bool("stratified", stratified)
    total = labels.shape[0]
    if n > total:
        raise ConfigError(f"n={n} is larger than the split size ({total} examples); allowed: at most {total}.")
    g = _generator("subset", seed)
    labels_cpu = labels.cpu()
    if not stratified or n == 0:
        sel = torch.randperm(total, generator=g)[:n]
    else:
        classes, counts = torch.unique(labels_cpu, return_counts=True)
        counts = counts.tolist()
        alloc = [0] * len(classes)
        remaining = n
        active = [k for k in range(len(classes)) if counts[k] > 0]
        while remaining > 0:
            share = remaining // len(active)
            if share == 0:
                chosen = torch.randperm(len(active), generator=g)[:remaining].tolist()
                for j in chosen:
                    alloc[active[j]] += 1
                remaining = 0
                break
            for k in active:
                take = min(share, counts[k] - alloc[k])
                alloc[k] += take
                remaining -= take
            active = [k for k in active if alloc[k] < counts[k]]
        parts = []
        for k, cls in enumerate(classes.tolist()):
            if alloc[k]:
                members = torch.nonzero(labels_cpu == cls, as_tuple=True)[0]
                perm = torch.randperm(members.numel(), generator=g)[:alloc[k]]
                parts.append(members[perm])
        sel = torch.cat(parts)
    return torch.sort(sel).values


# ----------------------------------------------------------------------------- helpers


def _offline() -> bool:
    return os.environ.get("RNORM_OFFLINE") == "1"


def _how_to_get(extra: str = "") -> str:
    return (
        "To get the data: set RNORM_DATA to a folder that holds it (for example ../shared/data "
        "beside the checkout: export RNORM_DATA=$(realpath ../shared/data)), or pass root=..., "
        "or run once on a machine with internet (without RNORM_OFFLINE=1) so torchvision can "
        "download it." + extra
    )


# ----------------------------------------------------------------------------- FashionMNIST

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


def _read_checksums(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from ``<root>/SHA256SUMS`` ({} when there is none)."""
    listing = root / "SHA256SUMS"
    if not listing.is_file():
        return {}
    out = {}
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line.rstrip("\r"))
        if not m:
            raise DataError(f"checksum list {listing} line {lineno} is malformed: {line[:120]!r}")
        out[m.group(2).lstrip("*")] = m.group(1).lower()
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify_checksums(root: Path, paths) -> None:
    """Check every file of ``paths`` listed in ``<root>/SHA256SUMS`` against it (module docstring).

    A file whose size and mtime equal those of its last successful check is not hashed again;
    the record lives in the cache folder and is only a shortcut (deleting it costs one hash).
    """
    listed = _read_checksums(root)
    if not listed:
        return
    record_path = _cache_dir(root) / f"verified-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    changed = False
    for path in paths:
        rel = Path(path).relative_to(root).as_posix()
        if rel not in listed:
            continue
        size, mtime = _stat(Path(path))
        if record.get(rel) == [size, mtime, listed[rel]]:
            continue
        if _sha256_file(Path(path)) != listed[rel]:
            raise DataError(f"sha256 mismatch for {path}: the file does not match {root / 'SHA256SUMS'} "
                            f"(corrupt or modified copy); nothing was trained on it. Re-copy the file.")
        record[rel] = [size, mtime, listed[rel]]
        changed = True
    if changed:
        from ._io import atomic_write_text
        try:
            record_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record_path, json.dumps(record))
        except OSError:
            pass  # the record is a shortcut; without it the files are hashed again next time


# ----------------------------------------------------------------------------- CIFAR-10


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


# ----------------------------------------------------------------------------- CIFAR-10-JPEG

_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def _read_manifest(base: Path, split: str) -> tuple[list[tuple[str, str, int, str]], str]:
    """Entries ``(sha256, relpath, class index, file name)`` of ``split``, sorted by
    (class, file name), and the hex sha256 of the manifest's lines for the split."""
    manifest = base / "MANIFEST.sha256"
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(
            f"manifest {manifest} not found; cifar10_jpeg needs CIFAR-10-JPEG/MANIFEST.sha256 "
            f"(one 'sha256  relative/path' line per image). " + _how_to_get()
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest {manifest}: {exc}") from exc
    cls_index = {c: i for i, c in enumerate(_CIFAR_CLASSES)}
    entries, lines = [], []
    prefix = split + "/"
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line)
        if not m:
            raise DataError(f"manifest {manifest} line {lineno} is malformed: {line[:120]!r}")
        digest, rel = m.group(1).lower(), m.group(2)
        if not rel.startswith(prefix):
            continue
        parts = rel.split("/")
        if len(parts) != 3 or parts[1] not in cls_index or parts[2] in ("", ".", ".."):
            raise DataError(
                f"manifest {manifest} line {lineno}: path {rel!r} is not "
                f"{split}/<class>/<file> with a CIFAR-10 class name"
            )
        lines.append(line)
        entries.append((digest, rel, cls_index[parts[1]], parts[2]))
    if not entries:
        raise DataError(f"manifest {manifest} has no entries for split {split!r}")
    entries.sort(key=lambda e: (e[2], e[3]))
    manifest_hash = hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
    return entries, manifest_hash


def _cache_dir(root: Path) -> Path:
    env = os.environ.get("RNORM_CACHE")
    if env:
        return Path(os.path.expanduser(env)).absolute()
    candidate = root / ".rnorm-cache"
    target = candidate if candidate.is_dir() else root
    try:
        mode = target.stat().st_mode
        if (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) \
                and os.access(target, os.W_OK | os.X_OK):
            return candidate
    except OSError:
        pass
    return Path.home() / ".cache" / "rnorm"


def _decode_jpeg(data: bytes, path: Path) -> np.ndarray:
    """Decode one JPEG with Pillow to an RGB ``uint8 [32, 32, 3]`` array."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            arr = np.asarray(rgb)
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise DataError(f"cannot decode JPEG file {path}: {exc}") from exc
    if arr.shape != (32, 32, 3):
        raise DataError(f"JPEG file {path} is {arr.shape[1]}x{arr.shape[0]}, expected 32x32")
    return arr


def _split_stats(base: Path, split: str) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``<base>/<split>`` (any depth)."""
    split_dir = base / split
    if not split_dir.is_dir():
        raise DataError(f"cifar10_jpeg split folder {split_dir} not found. " + _how_to_get())
    out: dict[str, tuple[int, int]] = {}
    todo = [split_dir]
    while todo:
        folder = todo.pop()
        rel_dir = folder.relative_to(base).as_posix()
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    todo.append(Path(e.path))
                else:
                    st = e.stat()
                    out[f"{rel_dir}/{e.name}"] = (st.st_size, st.st_mtime_ns)
    return out


def _check_file_set(base: Path, split: str, entries, stats: dict) -> None:
    """The split's files must be exactly the manifest's entries (every class folder present)."""
    for cls in _CIFAR_CLASSES:
        if not (base / split / cls).is_dir():
            raise DataError(f"cifar10_jpeg class folder {base / split / cls} is missing")
    on_disk = set(stats)
    expected = {e[1] for e in entries}
    missing = sorted(expected - on_disk)
    if missing:
        raise DataError(
            f"cifar10_jpeg: {len(missing)} file(s) listed in {base / 'MANIFEST.sha256'} are "
            f"missing, first: {base / missing[0]}"
        )
    extra = sorted(on_disk - expected)
    if extra:
        raise DataError(
            f"cifar10_jpeg: {len(extra)} file(s) are not in {base / 'MANIFEST.sha256'}, "
            f"first: {base / extra[0]}"
        )


def _build_cifar10_jpeg(base: Path, split: str, entries) -> tuple[torch.Tensor, torch.Tensor]:
    out = np.empty((len(entries), 32, 32, 3), dtype=np.uint8)
    for i, (digest, rel, _cls, _fname) in enumerate(entries):
        path = base / rel
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise DataError(
                f"sha256 mismatch for {path}: the file does not match "
                f"{base / 'MANIFEST.sha256'} (corrupt or modified copy)"
            )
        out[i] = _decode_jpeg(data, path)
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([e[2] for e in entries], dtype=torch.int64)
    return images, labels


def _read_cache(path: Path, labels_expected: torch.Tensor, manifest_hash: str):
    """The cached (images, labels, file stats), or None after deleting an unusable cache file."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        images, labels = payload["images"], payload["labels"]
        n = labels_expected.shape[0]
        ok = (
            payload.get("version") == _CACHE_VERSION
            and payload.get("manifest_sha256") == manifest_hash
            and isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8 and tuple(images.shape) == (n, 3, 32, 32)
            and labels.dtype == torch.int64 and torch.equal(labels, labels_expected)
            and isinstance(payload.get("file_stats"), torch.Tensor)
            and tuple(payload["file_stats"].shape) == (n, 2)
        )
        problem = "wrong contents or shapes"
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt
        ok, problem = False, f"unreadable ({type(exc).__name__}: {exc})"
    if ok:
        return images.contiguous(), labels, payload["file_stats"]
    warnings.warn(f"rnorm cache file {path} is {problem}; deleting and rebuilding it",
                  RuntimeWarning, stacklevel=4)
    try:
        path.unlink()
    except OSError:
        pass
    return None


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor,
                 manifest_hash: str, file_stats: torch.Tensor) -> None:
    """Write the cache atomically (:func:`rnorm._io.atomic_torch_save`); a failure only warns, since
    the cache is a shortcut (the JPEG files are decoded again next time)."""
    from ._io import atomic_torch_save
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"version": _CACHE_VERSION, "manifest_sha256": manifest_hash,
                           "images": images, "labels": labels, "file_stats": file_stats}, path)
        os.chmod(path, 0o644)  # the temp file was created 0600; the cache is not secret
    except OSError as exc:
        warnings.warn(f"could not write rnorm cache file {path}: {exc}", RuntimeWarning, stacklevel=4)


def _load_cifar10_jpeg(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = root / "CIFAR-10-JPEG"
    if not base.is_dir():
        raise DataError(
            f"cifar10_jpeg folder {base} not found (expected {base}/{{train,test}}/<class>/*.jpg "
            f"and {base}/MANIFEST.sha256; it cannot be downloaded). " + _how_to_get()
        )
    entries, manifest_hash = _read_manifest(base, split)
    stats = _split_stats(base, split)
    _check_file_set(base, split, entries, stats)  # on every load, cache or not
    labels_expected = torch.tensor([e[2] for e in entries], dtype=torch.int64)
    cache_path = _cache_dir(root) / f"cifar10_jpeg-{split}-{manifest_hash[:16]}.pt"
    # (size, mtime_ns) of every file, in the manifest entries' order (the order of the cached images)
    now = torch.tensor([stats[e[1]] for e in entries], dtype=torch.int64)
    proof = _jpeg_proof(base, stats)
    cached = _read_cache(cache_path, labels_expected, manifest_hash)
    if cached is not None:
        images, labels, recorded = cached
        for i in torch.nonzero((now != recorded).any(dim=1), as_tuple=True)[0].tolist():
            digest, rel = entries[i][0], entries[i][1]  # changed since the cache was built: the same file?
            if _sha256_file(base / rel) != digest:
                raise DataError(f"sha256 mismatch for {base / rel}: the file does not match "
                                f"{base / 'MANIFEST.sha256'} (corrupt or modified since the decoded cache "
                                f"{cache_path} was built); nothing was trained on it. Re-copy the file.")
        return images, labels, proof
    images, labels = _build_cifar10_jpeg(base, split, entries)
    _write_cache(cache_path, images, labels, manifest_hash, now)
    return images, labels, proof
