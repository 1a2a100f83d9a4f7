"""What the benchmarks train on: FashionMNIST subsets (random images if the files are absent),
and one epoch of a :class:`rnorm.runs.RunConfig` through rnorm's own training loop.

:func:`train_epoch` is the body of :func:`rnorm.runs.train` for one epoch -- same seeding,
model, optimizer, per-iteration scheduler and :func:`rnorm.train.run_epoch` -- without the run
folder, checkpoint and lock (file I/O that is not training and that runs *after* the timed
epoch anyway), so it also works on random data.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATASET = "fashion_mnist"


def default_data_root() -> None:
    """Use ``../shared/data`` beside the checkout when ``RNORM_DATA`` is unset (as the Makefile does);
    never download from inside a benchmark (``RNORM_OFFLINE=1`` unless set)."""
    shared = ROOT.parent / "shared" / "data"
    if "RNORM_DATA" not in os.environ and shared.is_dir():
        os.environ["RNORM_DATA"] = str(shared)
    os.environ.setdefault("RNORM_OFFLINE", "1")


def images(split: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` FashionMNIST images (uint8 [n, 1, 28, 28]) and labels, stratified, and their source
    (``"fashion_mnist"``); random images and labels (source ``"random"``) if the files are absent."""
    from rnorm import data

    default_data_root()
    try:
        x, y = data.load(DATASET, split)
        if n < y.shape[0]:
            x, y = data.subset(x, y, n, seed=seed, stratified=True)
        return x, y, DATASET
    except data.DataError:
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n,), generator=g), "random")


class Workload:
    """A :class:`rnorm.runs.RunConfig` plus the memory layout to time it in (a run-time choice that
    :func:`rnorm.runs.train` makes, not a field of the config); reads every other field from the config."""

    def __init__(self, cfg, channels_last: bool = False):
        self.cfg, self.channels_last = cfg, channels_last

    def __getattr__(self, name):
        return getattr(self.cfg, name)

    def __repr__(self) -> str:
        return f"Workload({self.cfg.name()}, channels_last={self.channels_last})"


def config(*, channels_last: bool = False, subset=None, **kw) -> Workload:
    """A :class:`Workload` on FashionMNIST (resnet18, width 16 unless given); ``precision`` fp32 unless given."""
    from rnorm.runs import RunConfig

    kw.setdefault("dataset", DATASET)
    kw.setdefault("arch", "resnet18")
    kw.setdefault("width", 16)
    kw.setdefault("precision", "fp32")
    if subset is not None:
        kw["train_subset"] = subset
    if kw.get("recipe", "standard") in ("advprop", "ebn", "advprop_ebn"):
        kw.setdefault("norm", "multibn")
    return Workload(RunConfig(**kw), channels_last)


def build(cfg) -> torch.nn.Module:
    """The config's model, seeded as :func:`rnorm.runs.train` seeds it, in its memory format."""
    from rnorm import runs
    from rnorm.train import derive_seed

    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = runs.build_model(getattr(cfg, "cfg", cfg))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train_epoch(cfg, x: torch.Tensor, y: torch.Tensor, epoch: int = 0):
    """Train one epoch of ``cfg`` on ``(x, y)`` with a fresh model; returns ``(history row, model)``."""
    from rnorm import data
    from rnorm import train as T

    model = build(cfg)
    opt = T.make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    n = y.shape[0]
    drop_last = n > 1 and n % cfg.batch_size == 1
    per_epoch = data.num_batches(n, cfg.batch_size, drop_last=drop_last)
    sched = T.make_scheduler(opt, cfg.schedule, per_epoch * cfg.epochs, per_epoch * cfg.warmup_epochs)
    row = T.run_epoch(model, opt, sched, x, y, recipe=cfg.recipe, cfg=cfg, batch_size=cfg.batch_size,
                      seed=cfg.seed, epoch=epoch, augment=cfg.resolved_augment(), device="cpu", progress=False)
    return row, model


def first_batch(cfg, x: torch.Tensor, y: torch.Tensor):
    """The first training batch of ``cfg`` on ``(x, y)`` as floats in [0, 1]."""
    xb = x[: cfg.batch_size].float().div_(255.0)
    return xb, y[: cfg.batch_size]


def warm(cfg, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step of ``cfg`` on a throwaway model: oneDNN builds its kernels for these
    shapes and dtypes once per process, so the timed epoch does not pay for it."""
    from rnorm import train as T

    model = build(cfg)
    opt = T.make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    xb, yb = first_batch(cfg, x, y)
    T.train_step(model, opt, xb, yb, cfg.recipe, cfg)


def cpu_profile_channels_last():
    """The memory layout the ``cpu`` profile asks for (``defaults.channels_last``, read from its YAML file:
    the benchmarks import the library only, not the book pipeline)."""
    import yaml
    prof = yaml.safe_load((ROOT / "profiles" / "cpu.yaml").read_text())
    return (prof.get("defaults") or {}).get("channels_last", "auto")
