"""Notebook 01, claim C1: do adversarial images shift the inputs of BatchNorm layers?

For a BatchNorm model trained normally, record per layer and channel the mean and variance of the
input of every BN layer for a clean test batch and for FGSM and PGD versions of the same batch
(crafted against the model as deployed: population statistics), and compare them with the
layer's population statistics -- both the running (EMA) estimates and exact PreciseBN estimates,
so an inaccurate EMA can be told apart from a real shift.
"""
from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from ..attacks import format_eps, make_attack
from ..data import load, subset
from ..evaluate import precise_bn, test_subset
from ..norms import use_stats
from ..probes import record_norm_inputs, shift_distance
from ..runs import RunConfig
from .common import setup, run_record, train_runs
from .params import (ATTACKS, ConfigError, TrainingParams, check_int, choice_list,
                     eps_list)


@dataclasses.dataclass(frozen=True)
class ShiftParams(TrainingParams):
    """Parameters of ``01_distribution_shift``."""

    NOTEBOOK = "01_distribution_shift"
    dataset: str = "fashion_mnist"
    arch: str = "resnet18"
    attacks: tuple = ("fgsm", "pgd")
    eps: tuple = ("2/255", "8/255")
    pgd_steps: int = 10
    probe_n: int = 256
    precise_n: int = 1000
    show_layers: tuple = (0, 3, -1)

    def _check(self):
        super()._check()
        self._set("attacks", choice_list("attacks", self.attacks, tuple(a for a in ATTACKS if a in ("fgsm", "pgd"))))
        self._set("eps", eps_list("eps", self.eps))
        check_int("pgd_steps", self.pgd_steps, min_value=1)
        check_int("probe_n", self.probe_n, min_value=2)
        check_int("precise_n", self.precise_n, min_value=2)
        if len(self.seeds) != 1:
            raise ConfigError(f"seeds={list(self.seeds)!r}: this notebook studies one model; give one seed.")


def runs(p: ShiftParams) -> list[RunConfig]:
    """The training runs the notebook needs: one BN model, trained normally."""
    return [p.run_config(dataset=p.dataset, arch=p.arch, norm="bn", recipe="standard", seed=p.seeds[0])]


def run(p: ShiftParams) -> dict:
    """Train (or reuse) the model and record its BN input statistics. Returns tidy frames."""
    device = setup(p)
    (cfg,) = runs(p)
    trained = train_runs([cfg], device=p.device, progress=p.progress)[cfg]
    model = trained.model(device=device).eval()
    use_stats(model, "population")
    x, y = test_subset(p.dataset, p.probe_n, seed=p.seeds[0])
    x, y = x.to(device), y.to(device)

    batches = {"clean": x}
    for attack in p.attacks:
        for eps in p.eps:
            params = {"steps": p.pgd_steps} if attack == "pgd" else {}
            torch.manual_seed(p.seeds[0])
            batches[f"{attack} {format_eps(eps)}"] = make_attack(attack, model, eps, **params)(x, y)

    with torch.no_grad():
        preds = {k: model(v).argmax(1) for k, v in batches.items()}
    accuracy = pd.DataFrame([{"tag": k, "accuracy": float((v == y).float().mean())} for k, v in preds.items()])

    train_x, train_y = load(p.dataset, "train")
    train_x, train_y = subset(train_x, train_y, min(p.precise_n, len(train_y)), seed=p.seeds[0])
    precise = precise_bn(model, train_x, train_y, batch_size=p.batch_size, device=device)

    records, distances = [], []
    for reference, m in (("EMA population stats", model), ("PreciseBN population stats", precise)):
        for tag, batch in batches.items():
            rec = record_norm_inputs(m, batch, tag=tag)
            rec["reference"] = reference
            records.append(rec)
            dist = shift_distance(rec)
            dist["reference"] = reference
            distances.append(dist)
    record = pd.concat(records, ignore_index=True)
    distance = pd.concat(distances, ignore_index=True)
    return {"record": record, "distance": distance, "accuracy": accuracy, "runs": [run_record(trained)],
            "device": str(device), "history": trained.history}


def summary(p: ShiftParams, distance: pd.DataFrame) -> dict:
    """Headline numbers: how much further from the population statistics adversarial batches sit.

    ``ratio`` = mean over layers of the adversarial batch's distance divided by the clean batch's
    distance, per statistic (mean / var), reference (EMA / PreciseBN) and kind of batch.
    """
    out = {}
    for (reference, stat), sub in distance.groupby(["reference", "statistic"], sort=False):
        clean = sub[sub["tag"] == "clean"].set_index("layer_index")["distance"]
        for tag, tsub in sub[sub["tag"] != "clean"].groupby("tag", sort=False):
            adv = tsub.set_index("layer_index")["distance"]
            ratio = float((adv / clean.clip(lower=1e-12)).mean())
            key = f"{'ema' if reference.startswith('EMA') else 'precise'}_{stat}_{tag.replace(' ', '_').replace('/', '_')}"
            out[key] = {"reference": reference, "statistic": stat, "tag": tag, "ratio_adv_to_clean": ratio,
                        "adv_distance": float(adv.mean()), "clean_distance": float(clean.mean())}
    return out
