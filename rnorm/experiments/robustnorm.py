"""Notebook 03, claim C3: is RobustNorm more robust than BatchNorm at BatchNorm's clean accuracy?

No normalization, BatchNorm and RobustNorm (several powers p) are trained alike (same
architecture, recipe, data, schedule and seeds) and evaluated on the same fixed test subset:
clean accuracy, FGSM and PGD accuracy over epsilon, for each statistics mode
(``population`` = the reference ``BN``/``RNT``, ``batch`` = ``BNwoT``/``RN``,
``population_mean`` = ``BNM``/``RNM``), plus training curves and training speed.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from ..evaluate import test_subset
from ..runs import RunConfig
from .common import cached_evaluate, setup, run_record, train_runs
from .params import (TrainingParams, check_float, check_int, choice_list, eps_list)


@dataclasses.dataclass(frozen=True)
class RobustNormParams(TrainingParams):
    """Parameters of ``03_robustnorm``."""

    NOTEBOOK = "03_robustnorm"
    dataset: str = "fashion_mnist"
    arch: str = "resnet20"
    powers: tuple = (0.2, 1.0)
    include_nonorm: bool = True
    stats_modes: tuple = ("population", "batch", "population_mean")
    attacks: tuple = ("fgsm", "pgd")
    epsilons: tuple = ("2/255", "8/255")
    pgd_steps: int = 10
    test_n: int = 128
    eval_batch: int = 64

    def _check(self):
        super()._check()
        powers = self.powers if isinstance(self.powers, (list, tuple)) else (self.powers,)
        self._set("powers", tuple(check_float("powers", v, min_value=0.0, min_inclusive=False) for v in powers))
        self._set("stats_modes", choice_list("stats_modes", self.stats_modes, ("population", "batch", "population_mean")))
        self._set("attacks", choice_list("attacks", self.attacks, ("fgsm", "pgd")))
        self._set("epsilons", eps_list("epsilons", self.epsilons))
        check_int("pgd_steps", self.pgd_steps, min_value=1)
        check_int("test_n", self.test_n, min_value=1)
        check_int("eval_batch", self.eval_batch, min_value=1)


def model_label(cfg: RunConfig) -> str:
    if cfg.norm == "robustnorm":
        return f"RobustNorm p={cfg.norm_p:g}"
    return {"bn": "BatchNorm", "none": "no norm"}[cfg.norm]


def runs(p: RobustNormParams) -> list[RunConfig]:
    base = dict(dataset=p.dataset, arch=p.arch, recipe="standard")
    out = []
    for s in p.seeds:
        if p.include_nonorm:
            out.append(p.run_config(norm="none", seed=s, **base))
        out.append(p.run_config(norm="bn", seed=s, **base))
        out += [p.run_config(norm="robustnorm", norm_p=pw, seed=s, **base) for pw in p.powers]
    return out


def run(p: RobustNormParams) -> dict:
    device = setup(p)
    trained = train_runs(runs(p), device=p.device, progress=p.progress)
    x, y = test_subset(p.dataset, p.test_n, seed=0)
    frames, histories = [], []
    for cfg, r in trained.items():
        model = r.model(device=device)
        stats = p.stats_modes if cfg.norm != "none" else ("population",)
        df = cached_evaluate(r, model, x, y, attacks=("clean",) + tuple(p.attacks), eps=p.epsilons, stats=stats,
                      batch_sizes=(p.eval_batch,), attack_params={"pgd": {"steps": p.pgd_steps}},
                      device=p.device, seed=cfg.seed, progress=p.progress)
        df["model"], df["seed"] = model_label(cfg), cfg.seed
        frames.append(df)
        h = r.history.copy()
        h["model"], h["seed"] = model_label(cfg), cfg.seed
        histories.append(h)
    return {"accuracy": pd.concat(frames, ignore_index=True), "history": pd.concat(histories, ignore_index=True),
            "device": str(device), "runs": [run_record(r) for r in trained.values()]}


def table(acc: pd.DataFrame, stats: str = "population") -> pd.DataFrame:
    """Clean and robust accuracy (%) as "mean ± std" per model, one column per attack and epsilon."""
    from ..attacks import format_eps
    sub = acc[acc["stats"] == stats].copy()
    sub["column"] = sub.apply(lambda r: "clean" if r["attack"] == "clean" else f"{r['attack'].upper()} {format_eps(r['eps'])}",
                              axis=1)
    g = sub.groupby(["model", "column"], sort=False)["accuracy"]
    stat = g.agg(["mean", "std"]).reset_index()
    stat["std"] = stat["std"].fillna(0.0)
    stat["value"] = stat.apply(lambda r: f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}", axis=1)
    return stat.pivot(index="model", columns="column", values="value").reset_index()


def summary(p: RobustNormParams, acc: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Mean/std over seeds of clean and PGD accuracy (largest epsilon) and training speed per model."""
    eps = max(p.epsilons)
    out = {"eps": eps, "models": {}}
    pop = acc[acc["stats"] == "population"]
    for model, sub in pop.groupby("model", sort=False):
        clean = sub[sub["attack"] == "clean"]["accuracy"]
        pgd = sub[(sub["attack"] == "pgd") & ((sub["eps"] - eps).abs() < 1e-9)]["accuracy"]
        speed = history[history["model"] == model]
        ips = speed["images_per_s"].mean() if "images_per_s" in speed else float("nan")
        out["models"][model] = {
            "clean_mean": float(clean.mean()), "clean_std": float(clean.std(ddof=1)) if len(clean) > 1 else 0.0,
            "pgd_mean": float(pgd.mean()) if len(pgd) else None,
            "pgd_std": (float(pgd.std(ddof=1)) if len(pgd) > 1 else 0.0) if len(pgd) else None,
            "n_seeds": int(len(clean)), "images_per_s": float(ips),
        }
    return out
