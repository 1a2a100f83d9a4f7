"""PreciseBN: population statistics recomputed exactly over training data.

Wu & Johnson, *Rethinking "Batch" in BatchNorm* (2021), show that the exponential moving
averages BatchNorm keeps in training can be inaccurate estimates of the population statistics;
PreciseBN replaces them by exact averages over many training batches. This module follows
fvcore's ``precise_bn.py`` (``update_bn_stats``): reset the buffers, forward batches with the
normalization layers in train mode and momentum ``1 / (k + 1)`` on batch ``k``, so each buffer
ends as the plain average of the per-batch statistics. It extends fvcore to RobustNorm (the
running *range*) and to the branches of ``MultiBatchNorm2d``. The claim C1 experiment uses it to
tell an inaccurate EMA apart from a real shift of adversarial inputs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import norms as _norms
from ._tensors import check_labels, float_images, stable_seed
from ._validate import ConfigError, check_bool, check_choice, check_int
from .hardware import resolve_device


def _has_running(m: nn.Module) -> bool:
    if isinstance(m, _norms.RobustNorm2d):
        return True
    return (isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
            and m.running_mean is not None)


def _running_buffers(m: nn.Module) -> dict[str, torch.Tensor]:
    names = ("running_mean", "running_range" if isinstance(m, _norms.RobustNorm2d) else "running_var",
             "num_batches_tracked")
    return {k: getattr(m, k) for k in names if getattr(m, k, None) is not None}


def _reset_running(m: nn.Module) -> None:
    if isinstance(m, _norms.RobustNorm2d):
        m.running_mean.zero_()
        m.running_range.fill_(1.0)
        m.num_batches_tracked.zero_()
    else:
        m.reset_running_stats()


def _precise_batches(images, labels, batch_size, num_batches, shuffle, seed, augment):
    n = images.shape[0]
    full = n // batch_size
    if full == 0:
        raise ConfigError(f"batch_size={batch_size} is larger than the {n} images given for PreciseBN.")
    if num_batches is None:
        num_batches = full
    elif num_batches > full:
        raise ConfigError(f"num_batches={num_batches} is more than the {full} full batches of "
                          f"{batch_size} that {n} images make.")
    if augment:
        if images.dtype != torch.uint8:
            raise ConfigError("augment=True needs uint8 images (as rnorm.data.load returns).")
        from . import data
        lab = labels if labels is not None else torch.zeros(n, dtype=torch.long)
        it = data.batches(images, lab, batch_size, shuffle=shuffle, seed=seed, augment=True, drop_last=True)
        for k, (x, _) in enumerate(it):
            if k >= num_batches:
                break
            yield x
        return
    if shuffle:
        g = torch.Generator().manual_seed(stable_seed("rnorm.evaluate", "precise_bn", seed, modulus=2**31))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    for k in range(num_batches):
        x = images[order[k * batch_size:(k + 1) * batch_size]]
        yield x.float().div_(255.0) if x.dtype == torch.uint8 else x


def precise_bn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
               batch_size: int = 128, num_batches: int | None = None, branch="main", device="auto",
               shuffle: bool = True, seed: int = 0, augment: bool = False) -> nn.Module:
    """A deep copy of ``model`` whose population statistics are recomputed exactly (PreciseBN).

    PreciseBN (Wu & Johnson, *Rethinking "Batch" in BatchNorm*, 2021; fvcore's
    ``update_bn_stats``): for every normalization layer with running buffers -- rnorm
    ``BatchNorm2d`` (including the branches of ``MultiBatchNorm2d``), ``RobustNorm2d`` and
    plain ``nn.BatchNorm*`` -- the buffers are reset and then ``num_batches`` batches of
    ``images`` (training data, uint8 or float in [0, 1]) are forwarded with the norm layers in
    train mode (every other layer in eval mode) and without gradients, the momentum set to
    ``1 / (k + 1)`` on batch ``k``. Then ``running = (1 - m) running + m stat_k`` makes each
    buffer the exact *average of the per-batch statistics*, instead of the EMA of training.
    The original momentum is restored; ``num_batches_tracked`` ends at the number of batches.

    What the buffers hold afterwards, with equal batches (the remainder that does not fill a
    batch is left out, so all batches are equal):

    * BatchNorm: ``running_mean`` = the mean of batch means (= the mean over all the images
      used); ``running_var`` = the mean of per-batch *unbiased* variances, since PyTorch's BN
      stores the unbiased (n / (n - 1)) batch variance in its buffer. This is the variance each
      training batch was normalized with, not the pooled variance of the data (which would add
      the variance of the batch means); fvcore does the same.
    * RobustNorm: ``running_mean`` as above, ``running_range`` = the mean of per-batch ranges
      (the power p is still applied at inference, as the layer does).

    ``branch`` routes the batches through one branch of every ``MultiBatchNorm2d``; only the
    statistics that branch updates are recomputed (``main``: the main buffers; ``adv``: the
    ``aux.adv`` buffers; with ``share="stats"`` the shared main buffers). Every other buffer is
    left as it was. ``shuffle`` (seeded by ``seed``) draws random batches, as training did;
    ``augment=True`` (uint8 images only) uses :func:`rnorm.data.batches`' random crop and flip,
    matching training with augmentation. The original model is not modified; the copy is on
    ``device`` (``auto``: CUDA when available) with the original's training flags.
    """
    images_t = images
    if not isinstance(images_t, torch.Tensor) or images_t.dim() != 4:
        raise ConfigError("images must be a tensor [N, C, H, W] (uint8, or float in [0, 1]).")
    if images_t.dtype != torch.uint8:
        float_images("images", images_t)
    if labels is not None:
        labels = check_labels(labels, images_t.shape[0])
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if num_batches is not None:
        num_batches = check_int("num_batches", num_batches, min_value=1)
    if isinstance(branch, str):
        check_choice("branch", branch, _norms.branches_of(model))
    seed = check_int("seed", seed, min_value=0)
    dev = resolve_device(device)

    out = copy.deepcopy(model).to(dev)
    batches = _precise_batches(images_t, labels, batch_size, num_batches, check_bool("shuffle", shuffle), seed,
                               check_bool("augment", augment))
    _average_over_batches(out, batches, branch, dev)
    return out


def _average_over_batches(out: nn.Module, batches, branch, dev) -> None:
    """Replace, in place, the running buffers of ``out``'s normalization layers by their averages over
    ``batches`` (an iterable of image batches) routed to ``branch`` (the momentum ``1 / (k + 1)`` on batch ``k``,
    fvcore's ``update_bn_stats``). Momenta and training flags are restored afterwards, also when a
    forward raises; a layer that no batch reached (another branch's buffers) keeps what it had."""
    flags = [(m, m.training) for m in out.modules()]
    layers = [m for m in out.modules() if _has_running(m)]
    saved = {id(m): (m.momentum, {k: v.clone() for k, v in _running_buffers(m).items()}) for m in layers}
    try:
        with torch.no_grad():
            for m in layers:
                _reset_running(m)
            out.eval()
            for m in layers:
                m.train()
            with _norms.route(out, branch):
                for k, x in enumerate(batches):
                    for m in layers:
                        m.momentum = 1.0 / (k + 1)
                    out(x.to(dev))
    finally:
        for m in layers:
            momentum, bufs = saved[id(m)]
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:  # not reached by this branch: keep what it had
                with torch.no_grad():
                    for k, v in bufs.items():
                        getattr(m, k).copy_(v)
        for m, flag in flags:
            m.training = flag
