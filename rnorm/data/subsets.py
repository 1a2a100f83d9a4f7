"""Seeded, deterministic subsets of a split: :func:`subset` (stratified by class or uniform) and
:func:`split_off` (a stratified held-out part and the rest, disjoint), both in the stored order.
"""

from __future__ import annotations

import torch

from .._validate import ConfigError
from ._common import _check_bool, _check_int, _check_pair, _generator


def subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0,
           stratified: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, deterministic subset of ``n`` examples (new tensors, in the stored order).

    With ``stratified`` the classes present are balanced: each gets ``n // K`` examples and
    ``n % K`` randomly chosen classes get one more; a class with too few examples gives all it
    has and the rest is spread over the other classes. Without ``stratified`` the subset is a
    uniform random sample. ``n`` larger than the split raises ``ValueError``.
    """
    images, labels = _check_pair(images, labels)
    sel = _subset_indices(labels, n, seed, stratified)
    return images[sel.to(images.device)], labels[sel.to(labels.device)]


def split_off(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(held_images, held_labels, rest_images, rest_labels)``: the stratified :func:`subset` of
    ``n`` examples and everything else, disjoint, both in the stored order."""
    images, labels = _check_pair(images, labels)
    sel = _subset_indices(labels, n, seed, True)
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[sel] = False
    rest = torch.nonzero(keep, as_tuple=True)[0]
    return (images[sel.to(images.device)], labels[sel.to(labels.device)],
            images[rest.to(images.device)], labels[rest.to(labels.device)])


def _subset_indices(labels: torch.Tensor, n, seed, stratified) -> torch.Tensor:
    """Sorted indices of the seeded subset (see :func:`subset`)."""
    n = _check_int("n", n, 0)
    seed = _check_int("seed", seed)
    stratified = _check_bool("stratified", stratified)
    total = labels.shape[0]
    if n > total:
        raise ConfigError(f"n={n} is larger than the split size ({total} examples); allowed: at most {total}.")
    g = _generator("subset", seed)
    labels_cpu = labels.cpu()
    if not stratified or n == 0:
        sel = torch.randperm(total, generator=g)[:n]
    else:
        classes, counts = torch.unique(labels_cpu, return_counts=True)
        counts = counts.tolist()
        alloc = [0] * len(classes)
        remaining = n
        active = [k for k in range(len(classes)) if counts[k] > 0]
        while remaining > 0:
            share = remaining // len(active)
            if share == 0:
                chosen = torch.randperm(len(active), generator=g)[:remaining].tolist()
                for j in chosen:
                    alloc[active[j]] += 1
                remaining = 0
                break
            for k in active:
                take = min(share, counts[k] - alloc[k])
                alloc[k] += take
                remaining -= take
            active = [k for k in active if alloc[k] < counts[k]]
        parts = []
        for k, cls in enumerate(classes.tolist()):
            if alloc[k]:
                members = torch.nonzero(labels_cpu == cls, as_tuple=True)[0]
                perm = torch.randperm(members.numel(), generator=g)[:alloc[k]]
                parts.append(members[perm])
        sel = torch.cat(parts)
    return torch.sort(sel).values
