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
from ..evaluate import precise_bn, summarize, test_subset
from ..norms import use_stats
from ..probes import record_norm_inputs, shift_distance
from ..results import StudyResult
from ..runs import RunConfig
from .common import setup, train_runs
from .params import ConfigError, TrainingParams, check_int, choice_list, eps_list

@dataclasses.dataclass(frozen=True)
class ShiftParams(TrainingParams):
    """Parameters of ``01_distribution_shift``."""

    NOTEBOOK = "01_distribution_shift"
    dataset: str = "fashion_mnist"
    arch: str = "resnet18"
    attacks: tuple = ("fgsm", "pgd")
    epsilons: tuple = ("2/255", "8/255")
    pgd_steps: int = 10
    probe_n: int = 256
    precise_n: int = 1000
    show_layers: tuple = (0, 3, -1)

    def _check(self):
        super()._check()
        self._set("attacks", choice_list("attacks", self.attacks, ("fgsm", "pgd")))
        self._set("epsilons", eps_list("epsilons", self.epsilons))
        self._set("pgd_steps", check_int("pgd_steps", self.pgd_steps, min_value=1))
        self._set("probe_n", check_int("probe_n", self.probe_n, min_value=2))
        self._set("precise_n", check_int("precise_n", self.precise_n, min_value=2))
        self._set("show_layers", tuple(check_int("show_layers", i, min_value=None) for i in
                                       (self.show_layers if isinstance(self.show_layers, (list, tuple))
                                        else (self.show_layers,))))
        if len(self.seeds) != 1:
            raise ConfigError(f"seeds={list(self.seeds)!r}: this notebook studies one model; give one seed.")


def runs(p: ShiftParams) -> list[RunConfig]:
    """The training runs the notebook needs: one BN model, trained normally."""
    return [p.run_config(dataset=p.dataset, arch=p.arch, norm="bn", recipe="standard", seed=p.seeds[0])]


def _tag(attack: str, eps: float) -> str:
    return "clean" if attack == "clean" else f"{attack} {format_eps(eps)}"


def run(p: ShiftParams) -> StudyResult:
    """Train (or reuse) the model and record its BN input statistics."""
    device = setup(p)
    (cfg,) = runs(p)
    trained = train_runs([cfg], p)[cfg]
    model = trained.model(device=device).eval()
    use_stats(model, "population")
    x, y = test_subset(p.dataset, p.probe_n, seed=p.seeds[0])
    x, y = x.to(device), y.to(device)

    batches = {("clean", 0.0): x}
    for attack in p.attacks:
        for eps in p.epsilons:
            params = {"steps": p.pgd_steps} if attack == "pgd" else {}
            torch.manual_seed(p.seeds[0])
            batches[(attack, eps)] = make_attack(attack, model, eps, **params)(x, y)

    with torch.no_grad():
        accuracy = pd.DataFrame([{"attack": a, "eps": e, "accuracy": float((model(v).argmax(1) == y).float().mean())}
                                 for (a, e), v in batches.items()])

    train_x, train_y = load(p.dataset, "train")
    train_x, train_y = subset(train_x, train_y, min(p.precise_n, len(train_y)), seed=p.seeds[0])
    precise = precise_bn(model, train_x, train_y, batch_size=p.train_batch_size, device=device)

    records, distances = [], []
    for reference, m in (("ema", model), ("precise", precise)):
        for (attack, eps), batch in batches.items():
            rec = record_norm_inputs(m, batch, tag=_tag(attack, eps)).assign(reference=reference, attack=attack, eps=eps)
            records.append(rec)
            distances.append(shift_distance(rec).assign(reference=reference, attack=attack, eps=eps))
    record = pd.concat(records, ignore_index=True)
    distance = pd.concat(distances, ignore_index=True)
    ratios = shift_ratios(distance).assign(seed=p.seeds[0])
    summary = summarize(ratios, ["reference", "statistic", "attack", "eps"], value="ratio")
    history = trained.history.assign(seed=cfg.seed)
    return StudyResult(p.NOTEBOOK, p, {"bn_input_stats": record, "shift_distance": distance, "accuracy": accuracy,
                                       "shift_ratios": ratios, "history": history},
                       summary, headline(ratios), [trained], str(device))


def shift_ratios(distance: pd.DataFrame) -> pd.DataFrame:
    """Per reference, statistic and adversarial batch: mean over layers of adversarial / clean distance.

    Columns: reference, statistic, attack, eps, ratio, adv_distance, clean_distance.
    """
    rows = []
    for (reference, stat), sub in distance.groupby(["reference", "statistic"], sort=False):
        clean = sub[sub["attack"] == "clean"].set_index("layer_index")["distance"]
        for (attack, eps), tsub in sub[sub["attack"] != "clean"].groupby(["attack", "eps"], sort=False):
            adv = tsub.set_index("layer_index")["distance"]
            rows.append({"reference": reference, "statistic": stat, "attack": attack, "eps": eps,
                         "ratio": float((adv / clean.clip(lower=1e-12)).mean()),
                         "adv_distance": float(adv.mean()), "clean_distance": float(clean.mean())})
    return pd.DataFrame(rows)


def headline(ratios: pd.DataFrame) -> dict:
    """The numbers the ledger reads: every ratio row, by name (attack, numeric eps, reference)."""
    return {"ratios": ratios.drop(columns=["seed"], errors="ignore").to_dict(orient="records")}


def shown_layers(record: pd.DataFrame, show_layers) -> list[int]:
    """The layer indices to draw: ``show_layers`` with negative indices counted from the end,
    out-of-range ones dropped, sorted and without repeats."""
    n = record["layer_index"].nunique()
    return sorted({(i if i >= 0 else n + i) for i in show_layers if -n <= i < n})


def strongest(ratios: pd.DataFrame, attack: str = "pgd") -> pd.DataFrame:
    """The ratio rows of ``attack`` at its largest ε (numeric, never parsed from a label)."""
    sub = ratios[ratios["attack"] == attack]
    return sub[sub["eps"] == sub["eps"].max()] if len(sub) else sub
