"""Notebook 03, claim C3: is RobustNorm more robust than BatchNorm at BatchNorm's clean accuracy?

No normalization, BatchNorm and RobustNorm (several powers p) are trained alike (same
architecture, recipe, data, schedule and seeds) and evaluated on the same fixed test subset:
clean accuracy, FGSM and PGD accuracy over epsilon, for each statistics mode
(``population`` = the reference ``BN``/``RNT``, ``batch`` = ``BNwoT``/``RN``,
``population_mean`` = ``BNM``/``RNM``), plus training curves and training speed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..evaluate import summarize, test_subset
from ..results import StudyResult
from ..runs import RunConfig
from .common import accuracy_table, cached_evaluate, setup, train_runs
from .params import ConfigError, TrainingParams, check_bool, check_float, choice_list


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
    eval_batch_size: int = 64

    def _check(self):
        super()._check()
        powers = self.powers if isinstance(self.powers, (list, tuple)) else (self.powers,)
        if not powers:
            raise ConfigError("powers=[] is empty; RobustNorm needs at least one power p > 0, e.g. [0.2].")
        self._set("powers", tuple(check_float("powers", v, min_value=0.0, min_inclusive=False) for v in powers))
        if len(set(self.powers)) != len(self.powers):
            raise ConfigError(f"powers={list(self.powers)!r} repeats a value; give each power once.")
        check_bool("include_nonorm", self.include_nonorm)
        self._set("stats_modes", choice_list("stats_modes", self.stats_modes, ("population", "batch", "population_mean")))
        self._check_evaluation()


def _norm_p(cfg: RunConfig) -> float:
    """RobustNorm's power for a RobustNorm run, NaN otherwise (frames carry ``norm`` and ``norm_p``)."""
    return cfg.norm_p if cfg.norm == "robustnorm" else float("nan")


def runs(p: RobustNormParams) -> list[RunConfig]:
    base = dict(dataset=p.dataset, arch=p.arch, recipe="standard")
    out = []
    for s in p.seeds:
        if p.include_nonorm:
            out.append(p.run_config(norm="none", seed=s, **base))
        out.append(p.run_config(norm="bn", seed=s, **base))
        out += [p.run_config(norm="robustnorm", norm_p=pw, seed=s, **base) for pw in p.powers]
    return out


def run(p: RobustNormParams) -> StudyResult:
    device = setup(p)
    trained = train_runs(runs(p), p)
    x, y = test_subset(p.dataset, p.test_n, seed=0)
    frames, histories = [], []
    for cfg, r in trained.items():
        model = r.model(device=device)
        stats = p.stats_modes if cfg.norm != "none" else ("population",)
        df = cached_evaluate(r, model, x, y, attacks=("clean",) + tuple(p.attacks), eps=p.epsilons, stats=stats,
                             batch_sizes=(p.eval_batch_size,), attack_params={"pgd": {"steps": p.pgd_steps}},
                             device=p.device, seed=cfg.seed, progress=p.progress)
        frames.append(df.assign(norm=cfg.norm, norm_p=_norm_p(cfg), seed=cfg.seed))
        histories.append(r.history.assign(norm=cfg.norm, norm_p=_norm_p(cfg), seed=cfg.seed))
    acc = pd.concat(frames, ignore_index=True)
    history = pd.concat(histories, ignore_index=True)
    table = summarize(acc, ["norm", "norm_p", "attack", "eps", "stats"])
    return StudyResult(p.NOTEBOOK, p, {"accuracy": acc, "history": history}, table,
                       summary(p, acc, history), list(trained.values()), str(device))


def table(acc: pd.DataFrame, stats: str = "population") -> pd.DataFrame:
    """Clean and robust accuracy (%) as "mean ± sd" per model, one column per attack and epsilon (for display)."""
    from ..plots import model_label
    sub = acc[acc["stats"] == stats]
    sub = sub.assign(model=[model_label(n, q) for n, q in zip(sub["norm"], sub["norm_p"])])
    return accuracy_table(sub, ["model"])


def summary(p: RobustNormParams, acc: pd.DataFrame, history: pd.DataFrame) -> dict:
    """Per model (``norm``, ``norm_p``): mean/std over seeds of clean and PGD accuracy at the largest
    epsilon, and training speed (images/s)."""
    eps = max(p.epsilons)
    out = {"eps": eps, "models": []}
    pop = acc[acc["stats"] == "population"]
    for (norm, norm_p), sub in pop.groupby(["norm", "norm_p"], sort=False, dropna=False):
        clean = sub[sub["attack"] == "clean"]["accuracy"]
        pgd = sub[(sub["attack"] == "pgd") & np.isclose(sub["eps"], eps, rtol=0, atol=1e-9)]["accuracy"]
        same = history["norm_p"].isna() if pd.isna(norm_p) else np.isclose(history["norm_p"], norm_p)
        speed = history[(history["norm"] == norm) & same]
        out["models"].append({
            "norm": norm, "norm_p": None if pd.isna(norm_p) else float(norm_p),
            "clean_mean": float(clean.mean()), "clean_std": float(clean.std(ddof=1)) if len(clean) > 1 else 0.0,
            "pgd_mean": float(pgd.mean()) if len(pgd) else None,
            "pgd_std": (float(pgd.std(ddof=1)) if len(pgd) > 1 else 0.0) if len(pgd) else None,
            "n_seeds": int(len(clean)),
            "images_per_s": float(speed["images_per_s"].mean()) if "images_per_s" in speed else float("nan"),
        })
    return out


def findings(summary: dict) -> str:
    """The notebook's findings as markdown, every number from ``summary`` (any powers, with or without no-norm)."""
    from ..attacks import format_eps
    from ..plots import model_label
    models = summary["models"]
    bn = next((m for m in models if m["norm"] == "bn"), None)
    lines = []
    for m in models:
        name = model_label(m["norm"], m["norm_p"])
        pgd = "n/a" if m["pgd_mean"] is None else f"{100 * m['pgd_mean']:.1f}%"
        text = f"- **{name}**: clean {100 * m['clean_mean']:.1f}%, PGD {format_eps(summary['eps'])} {pgd}"
        if bn and m is not bn and bn["images_per_s"]:
            text += f", training at {m['images_per_s'] / bn['images_per_s']:.2f}× BatchNorm's images/s"
        lines.append(text + f" ({m['n_seeds']} seed{'s' if m['n_seeds'] != 1 else ''}).")
    return "\n".join(lines)
