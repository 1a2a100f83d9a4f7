"""The datasets rnorm knows (:data:`DATASETS`, :func:`info`), the data root they are read from
(:func:`data_root`), and :class:`DataError`.

Every dataset is read from a data root: the ``root`` argument, else the environment
variable ``RNORM_DATA``, else ``./data`` (see :func:`data_root`).

Downloads are attempted (through torchvision) only for ``fashion_mnist`` and ``cifar10``,
only when the files are missing and only when ``RNORM_OFFLINE`` is not ``"1"``; a failed
download is reported as :class:`DataError` with instructions.

Where this departs from torchvision: nothing is normalized when loading. The per-channel
``mean``/``std`` in :class:`DatasetInfo` are for the model to apply, so that attack budgets stay in
[0, 1] pixel units. ``cifar10_jpeg`` uses the standard CIFAR-10 mean/std, not its own statistics
(train mean agrees to 1e-4; its std is 0.001-0.002 lower, see ``CIFAR-10-JPEG/SOURCE.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._common import _check_choice


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
_CIFAR_SHAPES = dict(num_classes=10, in_channels=3, image_size=32, mean=_CIFAR_MEAN, std=_CIFAR_STD,
                     classes=_CIFAR_CLASSES, augment_default=True)  # the original and its JPEG copy share these


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
        lossy=False,
        description="CIFAR-10, official python-version batches via torchvision "
        "(50,000 train / 10,000 test, 32x32 RGB); standard mean/std.",
        **_CIFAR_SHAPES,
    ),
    "cifar10_jpeg": DatasetInfo(
        name="cifar10_jpeg",
        lossy=True,
        description="CIFAR-10 re-encoded as JPEG (quality 75, 4:2:0) by a third party; LOSSY, "
        "not the original CIFAR-10. Samples ordered by (class, file name). Uses the standard "
        "CIFAR-10 mean/std, not its own statistics.",
        **_CIFAR_SHAPES,
    ),
}


_SPLITS = ("train", "test")


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


def _offline() -> bool:
    return os.environ.get("RNORM_OFFLINE") == "1"


def _how_to_get(extra: str = "") -> str:
    return (
        "To get the data: set RNORM_DATA to a folder that holds it (for example ../shared/data "
        "beside the checkout: export RNORM_DATA=$(realpath ../shared/data)), or pass root=..., "
        "or run once on a machine with internet (without RNORM_OFFLINE=1) so torchvision can "
        "download it." + extra
    )
