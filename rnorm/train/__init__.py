"""One training loop for five recipes: the examples of a step, the step, the epoch.

What each batch is made of and which branch sees it is the recipe's (:mod:`rnorm.train.recipes`:
:class:`Recipe`, :data:`RECIPES`, :class:`StepSettings`); the optimizer and the learning-rate schedule
are in :mod:`rnorm.train.schedule`. Both are re-exported here, so ``rnorm.train.RECIPES`` and
``rnorm.train.make_scheduler`` keep working.

How a step runs (:func:`train_step`):

1. **Example generation** (:func:`make_examples`) for every non-clean slice, against the branch
   that will see the examples: the whole batch is routed to that branch, the model is put in
   ``eval()`` with ``use_stats(model, attack_stats)`` -- by default ``"batch"``, i.e. the
   branch's statistics of the batch being attacked -- so the attack's forward passes never touch
   a running buffer (torchattacks calls ``eval()`` itself as well); then ``train()`` is
   restored. ``attack_stats="population"`` attacks through the running estimates instead. The
   papers leave this open; AdvProp's reference implementation attacks the auxiliary branch
   without updating its statistics, which is our default. For ``pgd_at`` the (single) norm's
   batch statistics are used likewise. Generation always runs in fp32 (autocast disabled).
2. **One forward pass** over ``cat([x, x_adv, x_easy])`` (the slices the recipe has), routed
   with ``[("main", n), ("adv", n), ("easy", n)]``: each slice is normalized by its own branch,
   in train mode, so each branch's running statistics move only with its own slice.
3. **Loss** (``loss_weighting``): by default (``"mean"``) the *mean over slices of the per-slice
   mean cross-entropy*, ``(CE(main(x)) + CE(adv(x_adv)) [+ CE(easy(x_easy))]) / k`` for ``k``
   slices. For equal slices this is the AdvProp reference implementation's mean over the
   concatenated batch, and it gives every recipe gradient steps of the same scale at one
   learning rate, so recipes trained with one learning rate are comparable. ``"sum"`` is the
   sum of the per-slice means, as the AdvProp and EBN equations are written: at one learning
   rate it takes k times the step of ``standard`` on the shared weights (an effective learning
   rate 2x for AdvProp and EBN, 3x for AdvProp+EBN). The forward and loss may run under bf16
   autocast (``precision="bf16"``); weights and optimizer stay fp32.

Randomness: PGD's random start draws from the global torch RNG; :func:`run_epoch` reseeds it
from ``(seed, epoch)`` at the start of every epoch, and the data order/augmentation come from
:func:`rnorm.data.batches` with the same ``(seed, epoch)``, so an epoch can be replayed on its
own (what resuming from a checkpoint relies on).
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import attacks as _attacks
from .._tensors import stable_seed
from .._validate import ConfigError, check_choice  # noqa: F401 - ConfigError: re-exported
from ..norms import MAIN, route, use_stats  # noqa: F401 - MAIN: importable from here before the split
from .recipes import (ATTACK_STATS, KINDS, LOSS_WEIGHTINGS, RECIPES, Recipe, StepSettings,  # noqa: F401
                      branches_for, get_recipe, metric_columns)
from .schedule import SCHEDULES, LRShape, make_optimizer, make_scheduler  # noqa: F401 - re-exported


# ---------------------------------------------------------------------------------- examples
def make_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, branch: str, cfg=None) -> torch.Tensor:
    """The images of one slice: ``x`` itself (``clean``) or PGD / easy examples made against ``branch``.

    The attack sees the whole batch routed to ``branch``, the model in ``eval()`` with
    ``use_stats(model, cfg.attack_stats)`` (``"batch"`` by default: the branch's statistics of
    the batch being attacked), so no running buffer changes. Training mode, statistics mode and
    routing are restored afterwards. Runs in fp32 (autocast off). Returns a detached tensor.
    The attack runs without its input check (:meth:`rnorm.attacks.Attack.run`): the training data
    is checked where it is loaded, and the check would make the host wait for the device at every
    step; ``x`` must be float images in [0, 1] and ``y`` valid labels.
    """
    check_choice("kind", kind, KINDS)
    if kind == "clean":
        return x
    s = StepSettings.of(cfg)
    attack = _attacks.make_attack("pgd" if kind == "adv" else "easy", model, s.train_eps,
                                  steps=s.train_steps, alpha=s.alpha, random_start=True)
    was_training = model.training
    model.eval()
    try:
        with use_stats(model, s.attack_stats), route(model, branch), torch.autocast(x.device.type, enabled=False):
            out = attack.run(x, y)  # no per-step input check: it would read back to the host (see below)
    finally:
        model.train(was_training)
    return out.detach()


def _autocast(device_type: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------- one step
def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               recipe, cfg=None) -> dict[str, float]:
    """One optimizer step of ``recipe`` on the batch ``(x, y)``: :func:`step_metrics` with its
    metrics read back as floats (``n`` stays an int)."""
    out = step_metrics(model, optimizer, x, y, recipe, cfg)
    return {k: v if k == "n" else float(v) for k, v in out.items()}


def step_metrics(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 recipe, cfg=None) -> dict:
    """One optimizer step of ``recipe`` on the batch ``(x, y)`` (images in [0, 1]).

    Makes each slice's images (:func:`make_examples`), runs one forward pass in train mode over
    their concatenation routed slice by slice to the branches, and steps ``optimizer`` on the
    mean (``loss_weighting="mean"``) or the sum (``"sum"``) of the per-slice mean cross-entropies. ``cfg`` is anything :meth:`StepSettings.of`
    takes (a RunConfig, a dict, None for defaults).

    Returns detached 0-dim tensors on the batch's device: ``loss`` (the loss that was minimized),
    and per slice ``loss_<branch>`` and ``acc_<branch>`` (mean CE and accuracy of that slice; for
    ``pgd_at`` ``loss_main`` is the loss on the PGD examples), plus ``n`` (images in the batch, an
    int). Nothing is read back to the host, so on CUDA the step never waits for the device.
    """
    rec = get_recipe(recipe)
    s = StepSettings.of(cfg)
    n = x.shape[0]
    parts = [make_examples(model, x, y, kind, branch, s) for branch, kind in rec.slices]
    model.train()
    xs = parts[0] if len(parts) == 1 else torch.cat(parts)
    if s.channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
    plan = [(b, n) for b, _ in rec.slices]
    optimizer.zero_grad(set_to_none=True)
    with route(model, plan if len(plan) > 1 else plan[0][0]), _autocast(x.device.type, s.precision):
        logits = model(xs)
        losses = [F.cross_entropy(lg.float(), y) for lg in logits.split(n)]
        loss = sum(losses[1:], losses[0])
        if s.loss_weighting == "mean":
            loss = loss / len(losses)
    loss.backward()
    optimizer.step()
    out = {"loss": loss.detach()}
    with torch.no_grad():
        for (b, _), lg, l in zip(rec.slices, logits.detach().split(n), losses):
            out[f"loss_{b}"] = l.detach()
            out[f"acc_{b}"] = (lg.argmax(1) == y).float().mean()
    out["n"] = n
    return out



# ---------------------------------------------------------------------------------- one epoch
def epoch_plan(n: int, batch_size: int) -> tuple[int, bool]:
    """``(batches per epoch, drop_last)`` for ``n`` training images: the last batch is dropped only
    when it would hold a single image (BatchNorm cannot train on one image)."""
    from .. import data as _data

    drop_last = n > 1 and n % batch_size == 1
    return _data.num_batches(n, batch_size, drop_last=drop_last), drop_last


def derive_seed(*parts) -> int:
    """A 63-bit seed from a stable hash of ``parts`` (not Python's salted ``hash``)."""
    return stable_seed("rnorm.train", *parts)


_POSTFIX_EVERY = 25  # batches between progress-bar loss updates


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)


def _show(bar, i: int, total: int, loss_sum, seen: int, t0: float) -> None:
    """Advance the bar by batch ``i``; every :data:`_POSTFIX_EVERY` batches (and at the last) show the
    epoch's mean loss so far and the images per second: reading the loss back costs a host sync."""
    bar.update(1)
    if i % _POSTFIX_EVERY == 0 or i + 1 == total:
        el = time.perf_counter() - t0
        bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", img_s=f"{seen / max(el, 1e-9):.0f}")


class _FiniteWatch:
    """Finds the first step of an epoch whose loss is not finite (:class:`NonFiniteLoss`)."""

    def __init__(self, epoch: int, device):
        self.epoch = epoch
        self.on_cpu = device is None or torch.device(device).type == "cpu"
        self.first_bad = None  # on CUDA: a device tensor holding the first bad step (or -1)

    def check(self, step: int, loss: torch.Tensor) -> None:
        loss = torch.as_tensor(loss).detach()
        bad = ~torch.isfinite(loss)
        if self.on_cpu:
            if bad:
                raise NonFiniteLoss(self.epoch, step, float(loss))
            return
        here = torch.where(bad, torch.tensor(step, device=loss.device), torch.tensor(-1, device=loss.device))
        self.first_bad = here if self.first_bad is None else torch.where(self.first_bad >= 0, self.first_bad, here)

    def raise_if_bad(self) -> None:
        if self.first_bad is not None and int(self.first_bad) >= 0:
            raise NonFiniteLoss(self.epoch, int(self.first_bad), float("nan"))


class NonFiniteLoss(FloatingPointError):
    """A training step's loss was NaN or infinite: ``epoch`` (from 0) and ``step`` (from 0) name the first."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"the training loss became {loss} at epoch {epoch + 1}, step {step + 1}")


def run_epoch(model: nn.Module, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor, *,
              recipe, cfg, batch_size: int, seed: int, epoch: int, augment: bool, device,
              progress: bool = False, desc: str = "", step_fn: Callable | None = None,
              channels_last: bool | None = None) -> dict[str, float]:
    """Train one epoch (``epoch`` counts from 0) and return its metrics.

    Reseeds the global torch RNG from ``(seed, epoch)`` first (PGD random starts), takes batches
    from :func:`rnorm.data.batches` with ``seed``/``epoch`` (order and augmentation), steps the
    scheduler after every batch. A last batch of a single image is dropped (BatchNorm cannot
    train on one image). Metrics are image-weighted means of the per-step values
    (:func:`metric_columns`), plus ``lr`` (at the epoch's first step), ``images`` (clean training
    images seen), ``epoch_seconds`` and ``images_per_s`` (clean images per second, attacks
    included). A step whose loss is not finite raises :class:`NonFiniteLoss` naming it: on CPU at once;
    on CUDA, where a per-step read-back would stall the GPU, the first bad step is tracked on the device
    and raised at the end of the epoch.
    """
    from .. import data as _data

    rec = get_recipe(recipe)
    if channels_last is not None:  # a run-time choice of rnorm.runs.train, not a field of the config
        cfg = dataclasses.replace(StepSettings.of(cfg), channels_last=channels_last)
    step = step_fn if step_fn is not None else step_metrics
    torch.manual_seed(derive_seed(seed, "epoch", epoch))
    total_batches, drop_last = epoch_plan(labels.shape[0], batch_size)
    it = _data.batches(images, labels, batch_size, shuffle=True, seed=seed, epoch=epoch, augment=augment,
                       drop_last=drop_last, device=device)
    bar = _progress_bar(total_batches, desc or f"epoch {epoch + 1}") if progress else None
    cols = metric_columns(rec)
    sums = {c: 0.0 for c in cols}
    seen = 0
    lr0 = float(optimizer.param_groups[0]["lr"])
    model.train()
    watch = _FiniteWatch(epoch, device)
    t0 = time.perf_counter()
    try:
        for i, (x, y) in enumerate(it):
            m = step(model, optimizer, x, y, rec, cfg)
            watch.check(i, m["loss"])
            scheduler.step()
            b = int(m.get("n", y.shape[0]))
            for c in cols:  # summed on the device: read back once per epoch, not per step
                sums[c] = sums[c] + m[c] * b
            seen += b
            if bar is not None:
                _show(bar, i, total_batches, sums["loss"], seen, t0)
    finally:
        if bar is not None:
            bar.close()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    watch.raise_if_bad()
    secs = time.perf_counter() - t0
    row = {c: float(sums[c]) / max(seen, 1) for c in cols}
    row.update(lr=lr0, images=seen, epoch_seconds=secs, images_per_s=seen / max(secs, 1e-9))
    return row
