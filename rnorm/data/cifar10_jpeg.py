"""``cifar10_jpeg``: a lossy JPEG copy of CIFAR-10, checked against its manifest, decoded once and cached.

A lossy JPEG re-encoding of all 60,000 CIFAR-10 images (quality 75, 4:2:0 chroma) in
``<root>/CIFAR-10-JPEG/{train,test}/<class>/NNNN.jpg`` with ``MANIFEST.sha256``. It is
**not** CIFAR-10: numbers computed on it must be reported as numbers on the JPEG copy.
Class index = alphabetical order of the class names (equal to the official CIFAR-10 label
order); samples are ordered by (class, file name), so the original CIFAR-10 sample order is
*not* reproduced. The files of a split must be exactly the manifest's entries for that
split and every file's sha256 must match. Decoding uses Pillow. It cannot be downloaded.

Caching: the decoded split is stored in ``<cache_dir>/cifar10_jpeg-<split>-<16 hex>.pt``, where
the hex digits are the start of the sha256 of the manifest's lines for that split (``cache_dir``:
:func:`rnorm.data.checksums._cache_dir`). The cache records the size and modification time of
every file it was built from. **Every load** (the in-process memo of :func:`rnorm.data.load`
included) lists the split's folder again and proves the files are the ones the cache was made
from: the set of files must be the manifest's (a deleted class folder or a stray file is an
error), and any file whose size or modification time changed is re-hashed against the manifest (a
flipped JPEG is an error; a file only touched is accepted). Listing and stat-ing the 50,000
training files takes about a quarter of a second. A cache file that cannot be read or has the
wrong shapes/labels is deleted and rebuilt.

Where this departs from torchvision: ``cifar10_jpeg`` is not a torchvision dataset.
``ImageFolder`` would read the same layout and the same order, but without the manifest checks.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .checksums import _MANIFEST_LINE, _cache_dir, _sha256_file, _stat
from .registry import DataError, _CIFAR_CLASSES, _how_to_get


_CACHE_VERSION = 3  # 2: records the size and mtime of every source file; 3: as an int64 tensor


def _jpeg_proof(base: Path, stats: dict) -> tuple:
    return (_stat(base / "MANIFEST.sha256"), tuple(sorted(stats.items())))


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
    from .._io import atomic_torch_save
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
