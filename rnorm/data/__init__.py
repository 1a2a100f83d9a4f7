"""Datasets as whole-split uint8 tensors, plus seeded batching and augmentation.

Every dataset is read from a data root: the ``root`` argument, else the environment
variable ``RNORM_DATA``, else ``./data`` (see :func:`data_root`), and returned by :func:`load` as
a whole split (images ``uint8 [N, C, H, W]``, labels ``int64 [N]``), checked on every load and
memoized in the process (do not modify the returned tensors in place). ``fashion_mnist`` and
``cifar10`` are the official files; ``cifar10_jpeg`` is a lossy JPEG copy of CIFAR-10 whose
numbers are not CIFAR-10 numbers. Nothing is normalized here: the model applies the ``mean``/``std``
of :class:`DatasetInfo`, so that attack budgets stay in [0, 1] pixel units.

One module per concept; every name is importable from ``rnorm.data`` (a test that patches a private
helper patches it in its own module, where the code looks it up):

``registry``       the datasets (:data:`DATASETS`, :class:`DatasetInfo`, :func:`info`), the data root
                   (:func:`data_root`), :class:`DataError`, downloads and how to get the data
``checksums``      ``SHA256SUMS`` lists, file hashes and stats, the cache folder
``fashion_mnist``  the strict IDX reader of FashionMNIST
``cifar10``        the official CIFAR-10 batches through torchvision
``cifar10_jpeg``   the JPEG copy: manifest checks, decoding, the decoded cache
``loading``        :func:`load`: dispatch to the readers, the in-process memo
``batching``       :func:`batches` (seeded order, batched crop and flip), :func:`num_batches`
``subsets``        :func:`subset`, :func:`split_off`
``_common``        argument checks and the seeded generator the last two share

Each module's docstring says where it departs from torchvision.
"""

from __future__ import annotations

from .batching import batches, num_batches
from .loading import load
from .registry import DATASETS, DataError, DatasetInfo, data_root, info
from .subsets import split_off, subset

# Private names, still importable from rnorm.data as before the split (read them here; patch them in
# their own module, where the code looks them up).
from ._common import _check_bool, _check_choice, _check_int, _check_pair, _generator  # noqa: F401
from .batching import _augment, _batch_iter  # noqa: F401
from .checksums import (  # noqa: F401
    _MANIFEST_LINE, _cache_dir, _read_checksums, _sha256_file, _stat, _verify_checksums,
)
from .cifar10 import _load_cifar10  # noqa: F401
from .cifar10_jpeg import (  # noqa: F401
    _CACHE_VERSION, _build_cifar10_jpeg, _check_file_set, _decode_jpeg, _jpeg_proof, _load_cifar10_jpeg,
    _read_cache, _read_manifest, _split_stats, _write_cache,
)
from .fashion_mnist import _IDX_FILES, _find_idx, _load_fashion_mnist, _read_idx  # noqa: F401
from .loading import _MEMO, _proof  # noqa: F401
from .registry import (  # noqa: F401
    _CIFAR_CLASSES, _CIFAR_MEAN, _CIFAR_STD, _FASHION_CLASSES, _SPLITS, _how_to_get, _offline,
)
from .subsets import _subset_indices  # noqa: F401

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "batches",
    "data_root",
    "info",
    "load",
    "num_batches",
    "split_off",
    "subset",
]
