"""Shared test setup."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' tensors are tiny: one intra-op thread is faster and avoids OpenMP spin-waits when
    other processes share the 2 cores (the benchmarks measure how much)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """No test reads or writes the user's ``~/.cache/rnorm``: ``RNORM_CACHE`` points at a fresh folder
    (child processes inherit it)."""
    import os
    old = os.environ.get("RNORM_CACHE")
    os.environ["RNORM_CACHE"] = str(tmp_path_factory.mktemp("rnorm-cache"))
    yield
    if old is None:
        os.environ.pop("RNORM_CACHE", None)
    else:
        os.environ["RNORM_CACHE"] = old


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """RNORM_DATA with FashionMNIST: the real files if present, else tiny fake IDX files."""
    import os
    import sys
    from pathlib import Path
    root = Path(os.environ.get("RNORM_DATA", "data")).absolute()
    raw = root / "FashionMNIST" / "raw"
    if not any((raw / f).exists() for f in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _datafiles import write_idx_fashion
        root = tmp_path_factory.mktemp("data")
        write_idx_fashion(root, 600, 100)
    return root
