"""Tests of rnorm.data: readers, validation, caching, batching/augmentation, subsets.

Everything except the ``@pytest.mark.data`` tests runs on tiny files written into tmp_path
(see ``tests/_datafiles.py``). The real-data tests need ``RNORM_DATA`` pointing at a folder with
``FashionMNIST/raw/`` and ``CIFAR-10-JPEG/``; they are skipped otherwise.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnorm import data
from rnorm.data import DataError

sys.path.insert(0, str(Path(__file__).parent))
from _datafiles import (  # noqa: E402
    CIFAR_CLASSES,
    IDX_NAMES,
    idx_bytes,
    write_idx_fashion,
    write_jpeg_cifar,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(request, monkeypatch, tmp_path):
    """No downloads, an empty memo, and (for synthetic tests) a private cache folder."""
    data._MEMO.clear()
    monkeypatch.setenv("RNORM_OFFLINE", "1")
    if request.node.get_closest_marker("data") is None:
        monkeypatch.setenv("RNORM_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("RNORM_DATA", raising=False)
    yield
    data._MEMO.clear()


def _pil_decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


# ============================================================================ registry / names


def test_registry_facts():
    assert set(data.DATASETS) == {"fashion_mnist", "cifar10", "cifar10_jpeg"}
    fm, c10, jp = (data.info(n) for n in ("fashion_mnist", "cifar10", "cifar10_jpeg"))
    assert (fm.in_channels, fm.image_size, fm.mean, fm.std) == (1, 28, (0.2860,), (0.3530,))
    assert (c10.in_channels, c10.image_size) == (3, 32)
    assert c10.mean == jp.mean == (0.4914, 0.4822, 0.4465)
    assert c10.std == jp.std == (0.2470, 0.2435, 0.2616)
    assert c10.classes == jp.classes == CIFAR_CLASSES
    assert [i.num_classes for i in (fm, c10, jp)] == [10, 10, 10]
    assert [len(i.classes) for i in (fm, c10, jp)] == [10, 10, 10]
    assert (fm.augment_default, c10.augment_default, jp.augment_default) == (False, True, True)
    assert (fm.lossy, c10.lossy, jp.lossy) == (False, False, True)
    with pytest.raises(Exception):
        fm.num_classes = 3  # frozen


@pytest.mark.parametrize(
    "bad, suggestion",
    [("fashon_mnist", "fashion_mnist"), ("FashionMNIST", "fashion_mnist"),
     ("cifar-10", "cifar10"), ("cifar10-jpeg", "cifar10_jpeg")],
)
def test_unknown_dataset_suggests(bad, suggestion, tmp_path):
    for call in (lambda: data.load(bad, "train", tmp_path), lambda: data.info(bad)):
        with pytest.raises(ValueError) as exc:
            call()
        msg = str(exc.value)
        assert "dataset" in msg and repr(bad) in msg
        assert f"did you mean {suggestion!r}?" in msg
        for name in data.DATASETS:
            assert repr(name) in msg


def test_unknown_split_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match=r"split.*'tset'.*did you mean 'test'\?"):
        data.load("fashion_mnist", "tset", tmp_path)
    with pytest.raises(ValueError, match=r"split.*'valid'.*'train', 'test'"):
        data.load("fashion_mnist", "valid", tmp_path)
    with pytest.raises(TypeError, match="dataset"):
        data.load(3, "train", tmp_path)
    with pytest.raises(TypeError, match="split"):
        data.load("fashion_mnist", None, tmp_path)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert data.data_root() == tmp_path / "data"
    monkeypatch.setenv("RNORM_DATA", str(tmp_path / "env"))
    assert data.data_root() == tmp_path / "env"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root("rel") == tmp_path / "rel"


# ============================================================================ FashionMNIST


def test_fashion_round_trip(tmp_path):
    written = write_idx_fashion(tmp_path, 37, 11, seed=1)
    for split, n in (("train", 37), ("test", 11)):
        x, y = data.load("fashion_mnist", split, tmp_path)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert tuple(x.shape) == (n, 1, 28, 28) and tuple(y.shape) == (n,)
        assert torch.equal(x[:, 0], torch.from_numpy(written[split][0]))
        assert torch.equal(y, torch.from_numpy(written[split][1]).long())


def test_fashion_root_from_env_and_memo(tmp_path, monkeypatch):
    write_idx_fashion(tmp_path, 5, 3, seed=2)
    monkeypatch.setenv("RNORM_DATA", str(tmp_path))
    a = data.load("fashion_mnist", "train")
    b = data.load("fashion_mnist", "train", tmp_path)
    assert a[0] is b[0] and a[1] is b[1]  # same objects: in-process memo


def test_fashion_gz_only(tmp_path):
    written = write_idx_fashion(tmp_path, 9, 4, seed=3)
    raw = tmp_path / "FashionMNIST" / "raw"
    for name in [n for pair in IDX_NAMES.values() for n in pair]:
        (raw / (name + ".gz")).write_bytes(gzip.compress((raw / name).read_bytes()))
        (raw / name).unlink()
    x, y = data.load("fashion_mnist", "test", tmp_path)
    assert torch.equal(x[:, 0], torch.from_numpy(written["test"][0]))
    assert torch.equal(y, torch.from_numpy(written["test"][1]).long())


def _corrupt_truncated(raw):
    p = raw / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    return "train-images-idx3-ubyte", "truncated"


def _corrupt_trailing(raw):
    p = raw / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes() + b"\x00")
    return "train-labels-idx1-ubyte", "longer than its header"


def _corrupt_header_only(raw):
    p = raw / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:10])
    return "train-images-idx3-ubyte", "truncated"


def _corrupt_magic(raw):
    p = raw / "train-images-idx3-ubyte"
    b = bytearray(p.read_bytes())
    b[0:4] = (2049).to_bytes(4, "big")
    p.write_bytes(bytes(b))
    return "train-images-idx3-ubyte", "magic number 2049, expected 2051"


def _corrupt_label_10(raw):
    labels = np.zeros(20, dtype=np.uint8)
    labels[7] = 10
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return "train-labels-idx1-ubyte", "outside 0..9, first at index 7: 10"


def _corrupt_count(raw):
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, dtype=np.uint8)))
    return "train-labels-idx1-ubyte", "count mismatch.*20 images.*19 labels"


def _corrupt_image_size(raw):
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((20, 27, 28), np.uint8)))
    return "train-images-idx3-ubyte", "27x28 images, expected 28x28"


def _corrupt_bad_gz(raw):
    p = raw / "train-images-idx3-ubyte"
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(p.read_bytes())[:-50])
    p.unlink()
    return "train-images-idx3-ubyte.gz", "cannot read"


@pytest.mark.parametrize("corrupt", [
    _corrupt_truncated, _corrupt_trailing, _corrupt_header_only, _corrupt_magic,
    _corrupt_label_10, _corrupt_count, _corrupt_image_size, _corrupt_bad_gz,
])
def test_fashion_corrupt_files(tmp_path, corrupt):
    write_idx_fashion(tmp_path, 20, 5, seed=4)
    raw = tmp_path / "FashionMNIST" / "raw"
    fname, what = corrupt(raw)
    with pytest.raises(DataError) as exc:
        data.load("fashion_mnist", "train", tmp_path)
    msg = str(exc.value)
    assert str(raw / fname) in msg
    assert re.search(what, msg), msg
    # the other split is untouched and still loads
    assert data.load("fashion_mnist", "test", tmp_path)[0].shape[0] == 5


def test_fashion_missing_offline_message(tmp_path, monkeypatch):
    empty = tmp_path / "nothing-here"
    monkeypatch.setenv("RNORM_DATA", str(empty))
    with pytest.raises(DataError) as exc:
        data.load("fashion_mnist", "train")
    msg = str(exc.value)
    assert "RNORM_DATA" in msg
    assert str(empty / "FashionMNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg
    assert "internet" in msg


def test_fashion_download_attempted_only_when_online(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FailingDownload:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FailingDownload)
    with pytest.raises(DataError, match="RNORM_DATA"):
        data.load("fashion_mnist", "test", tmp_path)
    assert calls == []  # RNORM_OFFLINE=1 (autouse fixture)

    monkeypatch.setenv("RNORM_OFFLINE", "0")
    with pytest.raises(DataError, match="download failed"):
        data.load("fashion_mnist", "test", tmp_path)
    assert calls == [(str(tmp_path), False, True)]

    class WritingDownload:  # simulates a successful download into <root>/FashionMNIST/raw
        def __init__(self, root, train, download):
            write_idx_fashion(root, 3, 2, seed=5)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", WritingDownload)
    x, _ = data.load("fashion_mnist", "test", tmp_path)
    assert tuple(x.shape) == (2, 1, 28, 28)


# ============================================================================ CIFAR-10 (official)


def test_cifar10_missing_points_to_jpeg(tmp_path, monkeypatch):
    monkeypatch.setenv("RNORM_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError) as exc:
        data.load("cifar10", "train")
    msg = str(exc.value)
    assert "RNORM_DATA" in msg and "cifar10_jpeg" in msg and "LOSSY" in msg
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in msg


def test_cifar10_converts_torchvision_layout(tmp_path, monkeypatch):
    import torchvision

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR:
        def __init__(self, root, train, download):
            assert download is False  # RNORM_OFFLINE=1
            self.data, self.targets = raw, [3, 1, 4, 1, 5, 9]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    x, y = data.load("cifar10", "test", tmp_path)
    assert tuple(x.shape) == (6, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[2, 1], torch.from_numpy(raw[2, :, :, 1]))  # channel-first
    assert y.dtype == torch.int64 and y.tolist() == [3, 1, 4, 1, 5, 9]


# ============================================================================ CIFAR-10-JPEG


@pytest.fixture
def jpeg_root(tmp_path):
    root = tmp_path / "root"
    written = write_jpeg_cifar(root, 3, 2, seed=7)
    return root, written


def test_jpeg_round_trip(jpeg_root):
    root, written = jpeg_root
    base = root / "CIFAR-10-JPEG"
    for split, per_class in (("train", 3), ("test", 2)):
        x, y = data.load("cifar10_jpeg", split, root)
        n = 10 * per_class
        assert tuple(x.shape) == (n, 3, 32, 32) and x.dtype == torch.uint8
        assert y.dtype == torch.int64
        assert y.tolist() == [k for k in range(10) for _ in range(per_class)]
        for i, (rel, k, original) in enumerate(written[split]):
            assert y[i] == k
            decoded = torch.from_numpy(_pil_decode(base / rel)).permute(2, 0, 1)
            assert torch.equal(x[i], decoded), rel
            # channel order and layout: close to the lossless original
            err = (x[i].permute(1, 2, 0).float() - torch.from_numpy(original).float()).abs()
            assert err.mean() < 6, (rel, err.mean())


def test_jpeg_order_ignores_manifest_order(jpeg_root):
    root, _ = jpeg_root
    manifest = root / "CIFAR-10-JPEG" / "MANIFEST.sha256"
    x_ref, y_ref = data.load("cifar10_jpeg", "train", root)
    x_ref, y_ref = x_ref.clone(), y_ref.clone()
    lines = manifest.read_text().splitlines()
    rng = np.random.default_rng(0)
    manifest.write_text("".join(lines[i] + "\n" for i in rng.permutation(len(lines))))
    data._MEMO.clear()
    x, y = data.load("cifar10_jpeg", "train", root)  # different manifest text -> new cache key
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def _jpeg_error(root, fragment_regex):
    with pytest.raises(DataError) as exc:
        data.load("cifar10_jpeg", "train", root)
    msg = str(exc.value)
    assert re.search(fragment_regex, msg), msg
    return msg


def test_jpeg_sha_mismatch(jpeg_root):
    root, _ = jpeg_root
    p = root / "CIFAR-10-JPEG" / "train" / "cat" / "0001.jpg"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    msg = _jpeg_error(root, "sha256 mismatch")
    assert str(p) in msg
    assert "0000.jpg" not in msg and "0002.jpg" not in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_size"])
def test_jpeg_undecodable_with_correct_hash(jpeg_root, damage):
    from PIL import Image

    root, _ = jpeg_root
    p = root / "CIFAR-10-JPEG" / "train" / "dog" / "0000.jpg"
    if damage == "garbage":
        p.write_bytes(os.urandom(700))
        expected = "cannot decode"
    elif damage == "truncated":
        p.write_bytes(p.read_bytes()[:300])
        expected = "cannot decode"
    else:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p, format="JPEG")
        expected = "16x16, expected 32x32"
    write_manifest(root)
    msg = _jpeg_error(root, expected)
    assert str(p) in msg


def test_jpeg_missing_class_folder(jpeg_root):
    root, _ = jpeg_root
    shutil.rmtree(root / "CIFAR-10-JPEG" / "train" / "horse")
    msg = _jpeg_error(root, "class folder")
    assert str(root / "CIFAR-10-JPEG" / "train" / "horse") in msg


def test_jpeg_missing_file(jpeg_root):
    root, _ = jpeg_root
    p = root / "CIFAR-10-JPEG" / "train" / "ship" / "0001.jpg"
    p.unlink()
    msg = _jpeg_error(root, "1 file.* missing")
    assert str(p) in msg


@pytest.mark.parametrize("rel", ["train/cat/extra.jpg", "train/notes.txt", "train/unicorn/0.jpg"])
def test_jpeg_extra_file(jpeg_root, rel):
    root, _ = jpeg_root
    p = root / "CIFAR-10-JPEG" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "CIFAR-10-JPEG" / "train" / "cat" / "0000.jpg", p)
    msg = _jpeg_error(root, "not in .*MANIFEST.sha256")
    assert str(p) in msg


def test_jpeg_missing_and_malformed_manifest(jpeg_root):
    root, _ = jpeg_root
    manifest = root / "CIFAR-10-JPEG" / "MANIFEST.sha256"
    text = manifest.read_text()
    manifest.write_text(text + "not a manifest line\n")
    _jpeg_error(root, "line 51 is malformed")
    manifest.write_text(text.replace("train/bird/", "train/birds/", 1))
    _jpeg_error(root, "train/birds/.*not train/<class>/<file>")
    manifest.unlink()
    msg = _jpeg_error(root, "not found")
    assert str(manifest) in msg


def test_jpeg_missing_folder_message(tmp_path, monkeypatch):
    monkeypatch.setenv("RNORM_DATA", str(tmp_path / "void"))
    with pytest.raises(DataError) as exc:
        data.load("cifar10_jpeg", "test")
    msg = str(exc.value)
    assert "RNORM_DATA" in msg and str(tmp_path / "void" / "CIFAR-10-JPEG") in msg


def _split_manifest_hash(root, split):
    lines = [ln for ln in (root / "CIFAR-10-JPEG" / "MANIFEST.sha256").read_text().splitlines()
             if ln.split("  ", 1)[1].startswith(split + "/")]
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()[:16]


def _count_decodes(monkeypatch):
    calls = []
    original = data.cifar10_jpeg._decode_jpeg

    def counting(b, path):
        calls.append(path)
        return original(b, path)

    monkeypatch.setattr(data.cifar10_jpeg, "_decode_jpeg", counting)
    return calls


def _forbid_decodes(monkeypatch):
    def forbidden(b, path):
        raise AssertionError(f"decoder called for {path}; the cache should have been used")

    monkeypatch.setattr(data.cifar10_jpeg, "_decode_jpeg", forbidden)


def test_jpeg_cache_used_on_second_load(jpeg_root, tmp_path, monkeypatch):
    root, _ = jpeg_root
    calls = _count_decodes(monkeypatch)
    x1, y1 = data.load("cifar10_jpeg", "train", root)
    assert len(calls) == 30
    cache = tmp_path / "cache" / f"cifar10_jpeg-train-{_split_manifest_hash(root, 'train')}.pt"
    assert cache.is_file()
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temp files left
    data._MEMO.clear()
    _forbid_decodes(monkeypatch)
    x2, y2 = data.load("cifar10_jpeg", "train", root)
    assert x2 is not x1 and torch.equal(x2, x1) and torch.equal(y2, y1)
    # a file only touched (same bytes, new mtime) is re-hashed, found unchanged and accepted
    f = root / "CIFAR-10-JPEG" / "train" / "cat" / "0000.jpg"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert torch.equal(data.load("cifar10_jpeg", "train", root)[0], x1)


def _damage_flip(root):
    f = root / "CIFAR-10-JPEG" / "train" / "cat" / "0000.jpg"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def _damage_stray(root):
    (root / "CIFAR-10-JPEG" / "train" / "cat" / "stray.jpg").write_bytes(b"x")


def _damage_class_gone(root):
    shutil.rmtree(root / "CIFAR-10-JPEG" / "train" / "dog")


@pytest.mark.parametrize("damage,message", [(_damage_flip, "sha256 mismatch"), (_damage_stray, "not in"),
                                            (_damage_class_gone, "class folder|missing")])
@pytest.mark.parametrize("memo", [True, False])
def test_jpeg_damage_after_the_cache_exists_is_caught(jpeg_root, tmp_path, damage, message, memo):
    """The decoded cache (and the in-process memo) never stand in for files that changed since."""
    root, _ = jpeg_root
    data.load("cifar10_jpeg", "train", root)
    assert list((tmp_path / "cache").glob("cifar10_jpeg-train-*.pt"))
    if not memo:
        data._MEMO.clear()
    damage(root)
    with pytest.raises(data.DataError, match=message):
        data.load("cifar10_jpeg", "train", root)


def test_fashion_is_checked_against_the_checksum_list(tmp_path):
    """A flipped label byte (still a valid label) is caught through SHA256SUMS, also after a first load."""
    import hashlib
    root = tmp_path / "root"
    write_idx_fashion(root, 40, 20)
    raw = root / "FashionMNIST" / "raw"
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  FashionMNIST/raw/{p.name}" for p in sorted(raw.iterdir())]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    x, y = data.load("fashion_mnist", "train", root)
    labels = raw / "train-labels-idx1-ubyte"
    b = bytearray(labels.read_bytes())
    b[8] = (b[8] + 1) % 10  # the first label, changed to another valid label
    labels.write_bytes(bytes(b))
    with pytest.raises(data.DataError, match="sha256 mismatch.*SHA256SUMS"):
        data.load("fashion_mnist", "train", root)  # the memo is not trusted either
    data._MEMO.clear()
    with pytest.raises(data.DataError, match="sha256 mismatch"):
        data.load("fashion_mnist", "train", root)


def test_data_root_that_is_a_file_is_named(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("x")
    with pytest.raises(data.DataError, match="is a file, not a folder.*RNORM_DATA"):
        data.load("fashion_mnist", "train", f)


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "wrong_labels", "empty"])
def test_jpeg_corrupt_cache_is_rebuilt(jpeg_root, tmp_path, monkeypatch, damage):
    root, _ = jpeg_root
    x1, y1 = data.load("cifar10_jpeg", "test", root)
    cache = tmp_path / "cache" / f"cifar10_jpeg-test-{_split_manifest_hash(root, 'test')}.pt"
    payload = torch.load(cache, weights_only=True)
    if damage == "garbage":
        cache.write_bytes(b"\x00not a torch file" * 10)
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "wrong_shape":
        payload["images"] = payload["images"][:, :, :16]
        torch.save(payload, cache)
    else:
        payload["labels"] = torch.zeros_like(payload["labels"])
        torch.save(payload, cache)
    data._MEMO.clear()
    calls = _count_decodes(monkeypatch)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        x2, y2 = data.load("cifar10_jpeg", "test", root)
    assert len(calls) == 20
    assert torch.equal(x2, x1) and torch.equal(y2, y1)
    rebuilt = torch.load(cache, weights_only=True)
    assert torch.equal(rebuilt["images"], x1) and torch.equal(rebuilt["labels"], y1)


def test_jpeg_default_cache_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("RNORM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    writable = tmp_path / "writable"
    write_jpeg_cifar(writable, 1, 1)
    data.load("cifar10_jpeg", "test", writable)
    assert len(list((writable / ".rnorm-cache").glob("cifar10_jpeg-test-*.pt"))) == 1

    readonly = tmp_path / "readonly"
    write_jpeg_cifar(readonly, 1, 1, seed=1)
    readonly.chmod(0o555)
    try:
        data.load("cifar10_jpeg", "test", readonly)
        assert not (readonly / ".rnorm-cache").exists()
        home_cache = tmp_path / "home" / ".cache" / "rnorm"
        assert len(list(home_cache.glob("cifar10_jpeg-test-*.pt"))) == 1
    finally:
        readonly.chmod(0o755)


# ============================================================================ batches


def _toy(n=23, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.arange(n, dtype=torch.int64)  # label = index, to check pairing
    return images, labels


def _order(images, labels, **kw):
    return torch.cat([y for _, y in data.batches(images, labels, 5, **kw)])


def test_batches_cover_each_example_once_and_pair_labels():
    images, labels = _toy()
    seen = []
    for x, y in data.batches(images, labels, 5, seed=1):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1
        assert torch.equal((x * 255).round().to(torch.uint8), images[y])
        seen.append(y)
    order = torch.cat(seen)
    assert [len(s) for s in seen] == [5, 5, 5, 5, 3]
    assert sorted(order.tolist()) == list(range(23))
    assert order.tolist() != list(range(23))  # actually shuffled


def test_batches_determinism_and_epochs():
    images, labels = _toy()
    a = _order(images, labels, seed=3, epoch=2)
    assert torch.equal(a, _order(images, labels, seed=3, epoch=2))
    assert not torch.equal(a, _order(images, labels, seed=3, epoch=3))
    assert not torch.equal(a, _order(images, labels, seed=4, epoch=2))
    assert _order(images, labels, shuffle=False).tolist() == list(range(23))


def test_batches_drop_last_and_num_batches():
    images, labels = _toy(n=23)
    for bs in (1, 5, 7, 23, 40):
        for drop in (False, True):
            got = [len(y) for _, y in data.batches(images, labels, bs, drop_last=drop)]
            assert len(got) == data.num_batches(23, bs, drop_last=drop)
            assert sum(got) == (23 - 23 % bs if drop else 23)
            assert all(g == bs for g in got[: len(got) - (0 if drop else 1)])
    assert data.num_batches(10, 3) == 4 and data.num_batches(10, 3, drop_last=True) == 3
    assert data.num_batches(0, 5) == 0
    assert list(data.batches(images[:0], labels[:0], 4)) == []


@pytest.mark.parametrize("kwargs, exc, pattern", [
    ({"batch_size": 0}, ValueError, r"batch_size must be an int >= 1, got 0"),
    ({"batch_size": -2}, ValueError, r"batch_size.*>= 1"),
    ({"batch_size": 2.5}, TypeError, r"batch_size.*>= 1"),
    ({"batch_size": True}, TypeError, r"batch_size"),
    ({"batch_size": "8"}, TypeError, r"batch_size"),
    ({"epoch": -1}, ValueError, r"epoch.*>= 0"),
    ({"pad": -1}, ValueError, r"pad.*>= 0"),
    ({"seed": 1.0}, TypeError, r"seed"),
    ({"augment": "yes"}, TypeError, r"augment must be a bool"),
    ({"device": 0}, TypeError, r"device"),
])
def test_batches_bad_arguments_fail_eagerly(kwargs, exc, pattern):
    images, labels = _toy()
    kw = {"batch_size": 4, **kwargs}
    with pytest.raises(exc, match=pattern):
        data.batches(images, labels, **kw)  # no next(): validation is eager


def test_batches_bad_tensors():
    images, labels = _toy()
    with pytest.raises(TypeError, match="images must be a uint8"):
        data.batches(images.float() / 255, labels, 4)
    with pytest.raises(TypeError, match="labels must be an integer"):
        data.batches(images, labels.float(), 4)
    with pytest.raises(ValueError, match="23 images and 22 labels"):
        data.batches(images, labels[:-1], 4)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        data.num_batches(-1, 4)


def test_augment_is_a_crop_of_the_padded_image_brute_force():
    images, labels = _toy(n=12, c=3, h=32, w=32, seed=5)
    pad = 4
    found = []
    for x, y in data.batches(images, labels, 12, shuffle=False, augment=True, seed=9, pad=pad):
        assert tuple(x.shape) == (12, 3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        for out, i in zip(x, y.tolist()):
            out_u8 = (out * 255).round().to(torch.uint8)
            padded = F.pad(images[i], (pad, pad, pad, pad))
            matches = [
                (dy, dx, fl)
                for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for fl in (False, True)
                if torch.equal(
                    out_u8,
                    (lambda c: c.flip(-1) if fl else c)(padded[:, dy:dy + 32, dx:dx + 32]),
                )
            ]
            assert len(matches) == 1, (i, matches)
            found.append(matches[0])
    assert len(set(found)) > 6  # offsets/flips vary between images
    again = next(data.batches(images, labels, 12, shuffle=False, augment=True, seed=9))[0]
    assert torch.equal(again, x)  # same seed/epoch -> same augmentation
    other = next(data.batches(images, labels, 12, shuffle=False, augment=True, seed=9, epoch=1))
    assert not torch.equal(other[0], x)


def test_augment_offsets_uniform_and_flips_about_half():
    # image pixel value encodes its position: v = 1 + 15*row + col
    h = w = 15
    code = (1 + torch.arange(h * w)).reshape(1, 1, h, w).to(torch.uint8)
    images = code.expand(1000, 1, h, w).contiguous()
    labels = torch.zeros(1000, dtype=torch.int64)
    x = torch.cat([b for b, _ in data.batches(images, labels, 128, augment=True, seed=1)])
    v = (x * 255).round().long()[:, 0]
    centre = v[:, 7, 7] - 1
    oy, ox = centre // w - 3, centre % w - 3  # crop offsets in the padded image (pad=4)
    for off in (oy, ox):
        counts = torch.bincount(off, minlength=9)
        assert len(counts) == 9 and counts.min() > 1000 / 9 - 60 and counts.max() < 1000 / 9 + 60
    assert int((oy == ox).sum()) < 200  # independent offsets: P(oy == ox) = 1/9
    step = v[:, 7, 8] - v[:, 7, 7]
    assert set(step.tolist()) == {1, -1}
    n_flipped = int((step == -1).sum())
    assert 350 < n_flipped < 650
    # flip=False: never flipped; pad=0: identity crops
    x = torch.cat([b for b, _ in data.batches(images, labels, 500, augment=True, flip=False)])
    v = (x * 255).round().long()[:, 0]
    assert bool((v[:, 7, 8] - v[:, 7, 7] == 1).all())
    x = torch.cat([b for b, _ in data.batches(images, labels, 500, augment=True, pad=0)])
    v = (x * 255).round().long()[:, 0]
    direct = v[:, 0] == code[0, 0, 0].long()
    mirrored = v[:, 0] == code[0, 0, 0].long().flip(-1)
    assert bool((direct.all(1) | mirrored.all(1)).all())
    assert 350 < int(mirrored.all(1).sum()) < 650


# ============================================================================ subset


def _labelled(counts, seed=0):
    labels = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    images = torch.arange(len(labels)).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    images = (images % 256).to(torch.uint8).contiguous()
    return images, labels


def test_subset_balanced_and_deterministic():
    images, labels = _labelled([20] * 10)
    xs, ys = data.subset(images, labels, 50, seed=1)
    assert len(xs) == len(ys) == 50
    assert torch.bincount(ys, minlength=10).tolist() == [5] * 10
    xs2, ys2 = data.subset(images, labels, 50, seed=1)
    assert torch.equal(xs, xs2) and torch.equal(ys, ys2)
    xs3, _ = data.subset(images, labels, 50, seed=2)
    assert not torch.equal(xs, xs3)
    # pairs preserved, no duplicates (image value = original index)
    idx = xs[:, 0, 0, 0].long()
    assert torch.equal(labels[idx], ys) and len(set(idx.tolist())) == 50


def test_subset_uneven_and_imbalanced():
    images, labels = _labelled([20] * 10)
    _, ys = data.subset(images, labels, 53)
    counts = torch.bincount(ys, minlength=10)
    assert counts.sum() == 53 and set(counts.tolist()) == {5, 6}
    images, labels = _labelled([2] + [20] * 9)
    _, ys = data.subset(images, labels, 50)
    counts = torch.bincount(ys, minlength=10).tolist()
    assert counts[0] == 2 and sum(counts) == 50 and set(counts[1:]) <= {5, 6}
    _, ys = data.subset(images, labels, len(labels))
    assert torch.equal(torch.sort(ys).values, torch.sort(labels).values)


def test_subset_unstratified_and_errors():
    images, labels = _labelled([20] * 10)
    xs, ys = data.subset(images, labels, 37, seed=3, stratified=False)
    idx = xs[:, 0, 0, 0].long()
    assert len(ys) == 37 and len(set(idx.tolist())) == 37 and torch.equal(labels[idx], ys)
    assert len(data.subset(images, labels, 0)[1]) == 0
    with pytest.raises(ValueError) as exc:
        data.subset(images, labels, 201)
    assert "n=201" in str(exc.value) and "200" in str(exc.value)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        data.subset(images, labels, -1)
    with pytest.raises(TypeError, match="n must be"):
        data.subset(images, labels, 2.0)


# ============================================================================ real data


@pytest.fixture(scope="module")
def real_root():
    root = os.environ.get("RNORM_DATA")
    if not root:
        pytest.skip("RNORM_DATA is not set")
    root = Path(root)
    needed = [root / "FashionMNIST" / "raw" / n for pair in IDX_NAMES.values() for n in pair]
    needed.append(root / "CIFAR-10-JPEG" / "MANIFEST.sha256")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"real data missing under RNORM_DATA: {missing[0]}")
    return root


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rnorm-real-cache")


@pytest.mark.data
def test_real_fashion_mnist(real_root):
    x, y = data.load("fashion_mnist", "train", real_root)
    assert tuple(x.shape) == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [6000] * 10
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert abs(x.float().mean().item() / 255 - 0.2860) < 5e-4
    x, y = data.load("fashion_mnist", "test", real_root)
    assert tuple(x.shape) == (10000, 1, 28, 28)
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


@pytest.mark.data
def test_real_cifar10_jpeg(real_root, real_cache, monkeypatch):
    monkeypatch.setenv("RNORM_CACHE", str(real_cache))
    x, y = data.load("cifar10_jpeg", "train", real_root)
    assert tuple(x.shape) == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [5000] * 10
    mean = x.float().mean(dim=(0, 2, 3)) / 255  # SOURCE.md: (0.4913, 0.4821, 0.4465)
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=1e-3)
    x, y = data.load("cifar10_jpeg", "test", real_root)
    assert tuple(x.shape) == (10000, 3, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10


@pytest.mark.data
def test_real_cifar10_jpeg_second_load_fast(real_root, real_cache, monkeypatch):
    monkeypatch.setenv("RNORM_CACHE", str(real_cache))
    for split in ("train", "test"):
        data.load("cifar10_jpeg", split, real_root)  # builds the cache if not done yet
    child = (
        "import json, time\n"
        "from rnorm import data\n"
        "def forbidden(b, path): raise AssertionError('decoded ' + str(path))\n"
        "data.cifar10_jpeg._decode_jpeg = forbidden\n"
        "out = {}\n"
        "for split in ('train', 'test'):\n"
        "    t = time.perf_counter()\n"
        "    x, y = data.load('cifar10_jpeg', split)\n"
        "    out[split] = [time.perf_counter() - t, x.shape[0]]\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "RNORM_CACHE": str(real_cache), "RNORM_DATA": str(real_root),
           "RNORM_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", child], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["train"][1] == 50000 and out["test"][1] == 10000
    assert out["train"][0] < 2.0 and out["test"][0] < 2.0, out
