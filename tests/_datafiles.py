"""Write tiny datasets in the official on-disk formats, for tests of ``rnorm.data``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file (uint8 data) holding ``array``; ``magic`` overrides the header's magic."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx_fashion(root, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write the four FashionMNIST IDX files into ``<root>/FashionMNIST/raw/``.

    Returns ``{"train": (images uint8 [N,28,28], labels uint8 [N]), "test": (...)}``.
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        img_name, lab_name = IDX_NAMES[split]
        (raw / img_name).write_bytes(idx_bytes(images))
        (raw / lab_name).write_bytes(idx_bytes(labels))
        out[split] = (images, labels)
    return out


def _smooth_image(rng: np.random.Generator) -> np.ndarray:
    """A 32x32 RGB image with smooth, channel-distinct content (survives JPEG well)."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    a, b, c = rng.uniform(0.5, 3.0, size=3)
    r = 128 + 100 * np.sin(xx / (4 * a) + rng.uniform(0, 6))
    g = 128 + 100 * np.cos(yy / (4 * b) + rng.uniform(0, 6))
    bl = 128 + 100 * np.sin((xx + yy) / (6 * c) + rng.uniform(0, 6))
    return np.clip(np.stack([r, g, bl], axis=-1), 0, 255).astype(np.uint8)


def write_manifest(root) -> Path:
    """(Re)write ``<root>/CIFAR-10-JPEG/MANIFEST.sha256`` from the files now on disk."""
    base = Path(root) / "CIFAR-10-JPEG"
    lines = []
    for path in sorted(p for p in base.rglob("*.jpg") if p.is_file()):
        rel = path.relative_to(base).as_posix()
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}")
    lines.sort(key=lambda s: s.split("  ", 1)[1])
    manifest = base / "MANIFEST.sha256"
    manifest.write_text("".join(line + "\n" for line in lines))
    return manifest


def write_jpeg_cifar(root, n_per_class_train: int, n_per_class_test: int,
                     seed: int = 0) -> dict:
    """Write ``<root>/CIFAR-10-JPEG/{train,test}/<class>/NNNN.jpg`` and a correct manifest.

    JPEGs are written with Pillow's default settings (quality 75, 4:2:0), like the real copy.
    Returns ``{split: [(relative path, class index, original uint8 [32,32,3] array), ...]}``
    in the order ``rnorm.data.load`` must produce (by class, then file name).
    """
    from PIL import Image

    base = Path(root) / "CIFAR-10-JPEG"
    rng = np.random.default_rng(seed)
    written: dict[str, list] = {}
    for split, n in (("train", n_per_class_train), ("test", n_per_class_test)):
        written[split] = []
        for k, cls in enumerate(CIFAR_CLASSES):
            folder = base / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = _smooth_image(rng)
                rel = f"{split}/{cls}/{i:04d}.jpg"
                Image.fromarray(arr, "RGB").save(base / rel, format="JPEG")
                written[split].append((rel, k, arr))
    write_manifest(root)
    return written
