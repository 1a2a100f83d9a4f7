"""How one row of an evaluation is computed: the batches, the adversarial examples, the score.

The images are put in a seeded order (:func:`_ordered`); a row's batches follow it, the last one
completed by wrapping around to the first images (:func:`_layout`, see :mod:`rnorm.evaluate`).
:func:`_craft_all` makes a row's adversarial batches in a statistics mode: in a ``mixed`` batch only
the first ``k`` images are attacked, and in a batch-dependent mode through :class:`_MixedBatch`, so
the gradient goes through the statistics of the whole mixed batch. :class:`_Scorer` scores the rows
of one grid, sharing across rows what they share: the ordered image sets, the PreciseBN copies, and
the examples crafted with population statistics (one set per (attack, eps, batch size, branch,
makeup), used by the population white-box row and by the transfer rows).
"""
from __future__ import annotations

import json
import math
import time

import torch
import torch.nn as nn

from .. import norms as _norms
from .._tensors import pack_bits
from .._validate import ConfigError
from ..attacks import format_eps, make_attack
from .grid import _BATCH_DEPENDENT, EvalGrid, _stable_seed, _stats_context


class _MixedBatch(nn.Module):
    """``x -> model(cat([x, rest]))[:len(x)]``: the adversarial part of a mixed batch.

    Attacking this module makes the attack's gradient flow through the statistics of the whole
    mixed batch (clean images included) when the model normalizes with batch statistics.
    An ``nn.Module`` holding the model as a submodule, because torchattacks calls
    ``.eval()`` / ``.train()`` on what it attacks and looks for parameters to find the device.
    """

    def __init__(self, model: nn.Module, rest: torch.Tensor):
        super().__init__()
        self.model = model
        self.rest = rest.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, self.rest]))[: x.shape[0]]


def _layout(n: int, batch_size: int) -> list[tuple[torch.Tensor, int]]:
    """Batches as (positions, number of new images); the last one wraps around to the start."""
    return [(torch.arange(s, s + batch_size) % n, min(batch_size, n - s)) for s in range(0, n, batch_size)]


def _adv_count(batch_size: int, adv_fraction: float) -> int:
    return max(1, min(batch_size, int(round(adv_fraction * batch_size))))


def _craft(model, name, eps, params, x, y, k, batch_dependent):
    """Adversarial batch: the first ``k`` images attacked (all when k == len(x)), the rest clean."""
    # .run: evaluate() checked every image and label once, as each attack's own call would
    if k >= x.shape[0]:
        return make_attack(name, model, eps, **params).run(x, y)
    rest = x[k:]
    target = _MixedBatch(model, rest).eval() if batch_dependent else model
    adv = make_attack(name, target, eps, **params).run(x[:k], y[:k])
    return torch.cat([adv.detach(), rest])


def _craft_all(net, mode, branch, layout, x_all, y_all, attack, eps, params, k, seed):
    """Adversarial batches for a row's layout, crafted on ``net`` in statistics mode ``mode``."""
    torch.manual_seed(seed)
    outs = []
    with _stats_context(net, mode), _norms.route(net, branch):
        for pos, _ in layout:
            outs.append(_craft(net, attack, eps, params, x_all[pos], y_all[pos], k, mode in _BATCH_DEPENDENT))
    return outs



def _attack_params(grid: EvalGrid, model: nn.Module, n_classes: int) -> dict:
    """Each attack's parameters (AutoAttack's class count from the model), validated by building it once.
    Each also holds ``num_classes`` (make_attack's keyword, not an attack parameter: it is not in
    the row's ``params``), so that the attacks check the labels without reading the model again."""
    out = {}
    for a in grid.attacks:
        if a == "clean":
            continue
        p = dict(grid.attack_params.get(a, {}))
        if a == "autoattack":
            p.setdefault("n_classes", n_classes)
            need = 3 if p.get("version", "standard") == "rand" else 4
            if n_classes < need:
                raise ConfigError(f"attacks: 'autoattack' needs a model with at least {need} classes "
                                  f"(its DLR losses); this model has {n_classes}.")
        make_attack(a, model, grid.eps[0], **p)
        out[a] = dict(p, num_classes=n_classes)
    return out


class _Scorer:
    """Scores the rows of one grid on one model and one ordered image set (state shared across rows:
    the ordered sets, the PreciseBN copies, the population-crafted examples of the last group)."""

    def __init__(self, grid, model, sets, n_aa, params, precise_models, n_images):
        self.grid, self.model, self.sets, self.n_aa, self.n_images = grid, model, sets, n_aa, n_images
        self.params, self.precise, self.crafted = params, precise_models, {}

    def score(self, row: dict) -> dict:
        t0 = time.perf_counter()
        g_, model = self.grid, self.model
        a, e, st, b, br, mk, g = (row[k] for k in ("attack", "eps", "stats", "batch_size", "branch", "makeup", "gradient"))
        x_all, y_all, order = self.sets[self.n_aa if a == "autoattack" else next(iter(self.sets))]
        layout = _layout(x_all.shape[0], b)
        k = b if mk == "all" else _adv_count(b, g_.adv_fraction)
        scored_model = self.precise[br] if st == "precise" else model
        scored_stats = "population" if st == "precise" else st
        tag = "population" if (g == "transfer" or st == "population") else st
        row_seed = _stable_seed(g_.seed, a, repr(e), b, br, mk, tag)
        params = dict(self.params.get(a, {}))
        if a in ("autoattack", "apgd"):  # they seed themselves: derive their seed from the grid's
            params.setdefault("seed", row_seed)
        if a == "clean":
            adv = [x_all[pos] for pos, _ in layout]
        elif tag == "population":  # crafted with population statistics: shared by the rows of a group
            if self.crafted.get("key") != (a, e, b, br, mk):
                self.crafted = {"key": (a, e, b, br, mk), "batches": _craft_all(
                    model, "population", br, layout, x_all, y_all, a, e, params, k, row_seed)}
            adv = self.crafted["batches"]
        else:
            adv = _craft_all(scored_model, scored_stats, br, layout, x_all, y_all, a, e, params, k, row_seed)
        correct = scored = 0
        per_correct = torch.zeros(self.n_images, dtype=torch.bool)  # every row: all the images given
        per_scored = torch.zeros(self.n_images, dtype=torch.bool)
        with torch.no_grad(), _stats_context(scored_model, scored_stats), _norms.route(scored_model, br):
            for (pos, new), x in zip(layout, adv):
                m = min(new, k) if a != "clean" else new
                ok = (scored_model(x).argmax(1)[:m] == y_all[pos][:m]).cpu()
                correct += int(ok.sum())
                scored += m
                if g_.per_image:  # by the image's index in the images given to evaluate()
                    per_correct[order[pos[:m]]] = ok
                    per_scored[order[pos[:m]]] = True
        if model.training or scored_model.training:
            raise RuntimeError("the model left eval mode during an attack; this is a bug in rnorm.evaluate.")
        used = make_attack(a, model, e, **params).params if a != "clean" else {}
        out = dict(row, eps_label="0" if a == "clean" else format_eps(e), n=scored, correct=correct,
                   accuracy=correct / scored if scored else math.nan, seconds=time.perf_counter() - t0,
                   params=json.dumps(used, sort_keys=True))
        if g_.per_image:
            out.update(correct_bits=pack_bits(per_correct), scored_bits=pack_bits(per_scored))
        return out


def _ordered(images, labels, n: int, grid: EvalGrid, dev):
    """The first n images in the seeded batch order (the same order for the same n and seed), the labels,
    and the order (position -> index of the image in ``images``)."""
    g = torch.Generator().manual_seed(_stable_seed("order", grid.seed, n))
    order = torch.randperm(n, generator=g) if grid.shuffle else torch.arange(n)
    return images[:n][order].to(dev), labels[:n][order].to(dev), order
