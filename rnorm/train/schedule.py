"""The optimizer and the learning-rate schedule of a training run.

SGD with momentum and weight decay on every parameter (as the reference code), and a
per-iteration learning-rate factor: linear warmup, then cosine, step or constant.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._validate import check_choice

SCHEDULES = ("cosine", "step", "constant")


class LRShape:
    """Learning-rate factor per *iteration*, for ``torch.optim.lr_scheduler.LambdaLR``.

    Linear warmup over ``warmup_iters`` (factor (i+1)/warmup), then ``cosine`` (from 1 to 0 over
    the remaining iterations), ``step`` (x0.1 at 50 % and 75 % of all iterations) or
    ``constant``. A plain object with int/str attributes so the scheduler's state dict stays
    loadable with ``weights_only=True``.
    """

    def __init__(self, schedule: str, total_iters: int, warmup_iters: int = 0):
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            return (it + 1) / self.warmup_iters
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            return 0.1 ** ((it >= self.total_iters // 2) + (it >= (3 * self.total_iters) // 4))
        span = max(1, self.total_iters - self.warmup_iters)
        t = min(1.0, (it - self.warmup_iters) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD (no Nesterov) over all parameters, weight decay on all of them (as the reference code)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)


def make_scheduler(optimizer, schedule: str, total_iters: int, warmup_iters: int = 0):
    """A per-iteration ``LambdaLR`` with :class:`LRShape`; call ``.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRShape(schedule, total_iters, warmup_iters))
