"""What the benchmarks share: the entry each returns (:func:`entry`), the timed closures (an SGD step,
a forward and backward), random batches, the ratio and timing fields of an entry, and the model trained
once for the attack and precision benchmarks (:func:`trained_model`, cached in the shared context)."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import timing, workload
from .settings import Settings


def entry(value, unit, target, met, **details) -> dict:
    """A benchmark's JSON-ready entry: the headline ``value``, its ``unit``, ``target`` and ``met``, and details."""
    return {"value": float(value), "unit": unit, "target": target, "met": met, **details}


def loss(model: nn.Module, x, y, branch=None):
    """Cross-entropy of ``model`` on ``(x, y)``, routed to ``branch`` if given."""
    if branch is None:
        return F.cross_entropy(model(x), y)
    from rnorm.norms import route
    with route(model, branch):
        return F.cross_entropy(model(x), y)


def sgd_step(model: nn.Module, x, y, branch=None):
    """A closure: one SGD step of ``model`` on ``(x, y)`` (routed to ``branch`` if given)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss(model, x, y, branch).backward()
        opt.step()
    return step


def fwd_bwd(model: nn.Module, x, y, branch=None):
    """A closure: forward, loss and backward (no optimizer step), routed to ``branch`` if given."""
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        loss(model, x, y, branch).backward()
    return run


def random_batch(n, s: Settings, seed=0):
    """``n`` random images (3 x ``image_size``², in [0, 1]) and labels of 10 classes, seeded."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, s.image_size, s.image_size, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def median_util(timed) -> float:
    """The median CPU utilization over every contender and round of an interleaved timing."""
    return timing.median(u for us in timed["cpu_util"].values() for u in us)


def time_ratios(timed, num, den) -> dict:
    """Entry fields for the time ratio ``num / den``: headline (lead clock) and both clocks."""
    c = timing.compare(timed, num, den)
    return {"ratio": c["headline"], "ratio_wall": c["wall"], "ratio_cpu": c["cpu"]}


def throughput_ratio(timed, fast, slow) -> dict:
    """Entry fields for the throughput ratio ``fast / slow``, i.e. the time ratio ``slow / fast``."""
    return time_ratios(timed, slow, fast)


def median_times(timed) -> dict:
    """Entry fields: each contender's median wall and CPU seconds, and the median CPU utilization."""
    return {"wall_seconds": {k: timing.median(v) for k, v in timed["seconds"].items()},
            "cpu_seconds": {k: timing.median(v) for k, v in timed["cpu_seconds"].items()},
            "cpu_util": median_util(timed)}


def grads(model, x, y):
    """The gradients of every parameter after one forward and backward of the cross-entropy (train mode)."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------------------------- shared model
def trained_model(s: Settings, ctx: dict):
    """resnet18 w16 (bn) trained one epoch on ``eval_train_images`` FashionMNIST images (cached in ctx)."""
    if "model" not in ctx:
        x, y, source = workload.images("train", s.eval_train_images)
        cfg = workload.config(width=s.width, norm="bn", recipe="standard", epochs=1, subset=s.eval_train_images)
        t0 = time.perf_counter()
        row, model = workload.train_epoch(cfg, x, y)
        ctx["model"] = model.eval()
        ctx["model_info"] = {"config": cfg.to_dict(), "train_seconds": time.perf_counter() - t0,
                             "train_acc": row["acc_main"], "data": source}
        tx, ty, _ = workload.images("test", s.eval_test_images)
        ctx["test"] = (tx.float().div_(255.0), ty)
    return ctx["model"]


def accuracy(predict, x, y, batch: int) -> float:
    """Accuracy (%) of ``predict`` on ``(x, y)``, in batches of ``batch``, without gradients."""
    correct = 0
    with torch.no_grad():
        for i in range(0, y.shape[0], batch):
            correct += int((predict(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / y.shape[0]
