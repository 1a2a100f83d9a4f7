"""What proves a data file is the one it should be: ``sha256`` lines (the data root's
``SHA256SUMS`` and ``CIFAR-10-JPEG/MANIFEST.sha256`` share one line format), file hashes, the
(size, modification time) of a file, and the cache folder where derived files and records live.

Checksum lists: where the data root holds a ``SHA256SUMS`` file (``<sha256>  <relative
path>`` lines, as ``sha256sum -c`` reads), every listed file a loader reads is verified
against it on every load -- hashed when its size or modification time differs from the last
verified one (recorded in ``<cache_dir>/verified-<root hash>.json``), so a flipped label byte
in FashionMNIST is an error, not a silently wrong dataset.

``cache_dir`` is ``$RNORM_CACHE``, else ``<root>/.rnorm-cache`` when the root is writable, else
``~/.cache/rnorm``. A root whose permission bits grant no write access (for example a read-only
shared data folder) counts as not writable even for root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from .registry import DataError


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


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
        from .._io import atomic_write_text
        try:
            record_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record_path, json.dumps(record))
        except OSError:
            pass  # the record is a shortcut; without it the files are hashed again next time


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
