"""Notebook 03, claim C3: is RobustNorm more robust than BatchNorm at BatchNorm's clean accuracy and speed?

No normalization, BatchNorm and RobustNorm (several powers p) are trained alike (same
architecture, recipe, data, schedule and seeds) and evaluated on the same fixed test images:
clean accuracy (also on the full test set), PGD accuracy over ε for each statistics mode
(``population`` = the reference ``BN``/``RNT``, ``batch`` = ``BNwoT``/``RN``,
``population_mean`` = ``BNM``/``RNM``), APGD-CE at the judged ε, and training curves.

RobustNorm is not judged at BatchNorm's learning rate: for each power a short learning-rate
sweep (``rn_lrs``, ``sweep_epochs`` epochs, first seed) trains on the training set minus a
held-out part (``sweep_holdout`` images) and keeps the rate with the best held-out accuracy; the
RobustNorm models of the study then train at that rate. The sweep's runs must exist before the
chosen runs can be named, so :func:`runs` names the chosen runs only once the sweep is trained
(``rnorm train`` and ``rnorm book`` train in rounds until the list stops growing).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..evaluate import summarize, test_subset
from ..results import StudyResult
from ..runs import RunConfig, find_run
from .common import accuracy_table, cached_evaluate, models_frame, setup, train_runs
from .params import ConfigError, TrainingParams, check_bool, check_float, check_int, choice_list
from .protocol import JUDGED_EPS


@dataclasses.dataclass(frozen=True)
class RobustNormParams(TrainingParams):
    """Parameters of ``03_robustnorm``."""

    NOTEBOOK = "03_robustnorm"
    dataset: str = "fashion_mnist"
    arch: str = "resnet20"
    powers: tuple = (0.2, 1.0)
    include_nonorm: bool = True
    rn_lrs: tuple = (0.1,)
    sweep_epochs: int = 1
    sweep_holdout: int = 200
    stats_modes: tuple = ("population", "batch", "population_mean")
    attacks: tuple = ("pgd",)
    epsilons: tuple = ("1/255", "8/255")
    pgd_steps: int = 20
    apgd_steps: int = 100
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
        lrs = self.rn_lrs if isinstance(self.rn_lrs, (list, tuple)) else (self.rn_lrs,)
        if not lrs:
            raise ConfigError("rn_lrs=[] is empty; give at least one learning rate for RobustNorm, e.g. [0.1].")
        self._set("rn_lrs", tuple(check_float("rn_lrs", v, min_value=0.0, min_inclusive=False) for v in lrs))
        self._set("sweep_epochs", check_int("sweep_epochs", self.sweep_epochs, min_value=1))
        self._set("sweep_holdout", check_int("sweep_holdout", self.sweep_holdout, min_value=10))
        check_bool("include_nonorm", self.include_nonorm)
        self._set("stats_modes", choice_list("stats_modes", self.stats_modes, ("population", "batch", "population_mean")))
        if "population" not in self.stats_modes:
            raise ConfigError(f"stats_modes={list(self.stats_modes)!r} must include 'population' (RobustNorm's RNT, "
                              f"what the claim is about).")
        self._set("apgd_steps", check_int("apgd_steps", self.apgd_steps, min_value=1))
        self._check_evaluation()


def _norm_p(cfg: RunConfig) -> float:
    """RobustNorm's power for a RobustNorm run, NaN otherwise (frames carry ``norm`` and ``norm_p``)."""
    return cfg.norm_p if cfg.norm == "robustnorm" else float("nan")


def sweep_runs(p: RobustNormParams) -> list[RunConfig]:
    """The learning-rate sweep: each power at each rate, first seed, ``sweep_epochs`` epochs, on the
    training set minus ``sweep_holdout`` held-out images. Empty when there is one rate (no choice)."""
    if len(p.rn_lrs) < 2:
        return []
    return [dataclasses.replace(p.run_config(dataset=p.dataset, arch=p.arch, recipe="standard", norm="robustnorm",
                                             norm_p=pw, seed=p.seeds[0]),
                                epochs=p.sweep_epochs, warmup_epochs=min(p.warmup_epochs, p.sweep_epochs - 1),
                                lr=lr, holdout=p.sweep_holdout)
            for pw in p.powers for lr in p.rn_lrs]


def chosen_lrs(p: RobustNormParams, runs_dir=None) -> dict[float, float] | None:
    """``{power: learning rate}`` with the best final held-out accuracy in the sweep; None while a
    sweep run is not trained yet. With one rate, that rate."""
    if len(p.rn_lrs) < 2:
        return {pw: p.rn_lrs[0] for pw in p.powers}
    out = {}
    for pw in p.powers:
        best = None
        for cfg in (c for c in sweep_runs(p) if c.norm_p == pw):
            r = find_run(cfg, runs_dir)
            if r is None:
                return None
            val = float(r.history["val_acc"].iloc[-1])
            if best is None or val > best[0]:
                best = (val, cfg.lr)
        out[pw] = best[1]
    return out


def runs(p: RobustNormParams) -> list[RunConfig]:
    """The sweep's runs, then per seed: no norm, BatchNorm and RobustNorm at each power at its chosen
    rate (named only once the sweep is trained)."""
    base = dict(dataset=p.dataset, arch=p.arch, recipe="standard")
    lrs = chosen_lrs(p)
    out = list(sweep_runs(p))
    for s in p.seeds:
        if p.include_nonorm:
            out.append(p.run_config(norm="none", seed=s, **base))
        out.append(p.run_config(norm="bn", seed=s, **base))
        if lrs is not None:
            out += [dataclasses.replace(p.run_config(norm="robustnorm", norm_p=pw, seed=s, **base), lr=lrs[pw])
                    for pw in p.powers]
    return out


def run(p: RobustNormParams) -> StudyResult:
    device = setup(p)
    sweep = train_runs(sweep_runs(p), p)
    trained = train_runs([c for c in runs(p) if c not in sweep], p)
    x, y = test_subset(p.dataset, p.test_n, seed=0)
    frames, histories = [], []
    for cfg, r in trained.items():
        model = r.model(device=device)
        stats = p.stats_modes if cfg.norm != "none" else ("population",)
        tag = dict(norm=cfg.norm, norm_p=_norm_p(cfg), seed=cfg.seed)
        df = cached_evaluate(r, model, x, y, attacks=("clean",) + tuple(p.attacks), eps=p.epsilons, stats=stats,
                             batch_sizes=(p.eval_batch_size,), attack_params={"pgd": {"steps": p.pgd_steps}},
                             per_image=True, device=p.device, seed=cfg.seed, progress=p.progress)
        if headline(cfg, p):  # APGD-CE on the rows the verdict compares (BatchNorm, RobustNorm's first power)
            df = pd.concat([df, cached_evaluate(
                r, model, x, y, attacks=("apgd",), eps=(JUDGED_EPS,), stats=("population",),
                batch_sizes=(p.eval_batch_size,), attack_params={"apgd": {"steps": p.apgd_steps}}, per_image=True,
                device=p.device, seed=cfg.seed, progress=p.progress)], ignore_index=True)
        frames.append(df.assign(**tag))
        histories.append(r.history.assign(**tag))
    acc = pd.concat(frames, ignore_index=True)
    history = pd.concat(histories, ignore_index=True)
    lr_sweep = pd.concat([r.history.assign(norm_p=c.norm_p, lr=c.lr) for c, r in sweep.items()], ignore_index=True) \
        if sweep else pd.DataFrame(columns=["epoch", "val_acc", "norm_p", "lr"])
    models = models_frame(trained, device)
    table = summarize(acc, ["norm", "norm_p", "attack", "eps", "stats"])
    return StudyResult(p.NOTEBOOK, p, {"accuracy": acc, "history": history, "lr_sweep": lr_sweep, "models": models},
                       table, {"models": models.to_dict(orient="records"), "chosen_lrs": {str(k): v for k, v in
                                                                                       chosen_lrs(p).items()}},
                       list(trained.values()) + list(sweep.values()), str(device))


def headline(cfg: RunConfig, p: RobustNormParams) -> bool:
    """Whether a model enters the ledger's C3 comparison: BatchNorm, and RobustNorm at the ledger's power."""
    from .verdicts import HEADLINE_P
    return cfg.norm == "bn" or (cfg.norm == "robustnorm" and abs(cfg.norm_p - HEADLINE_P) < 1e-9)


def table(acc: pd.DataFrame, stats: str = "population") -> pd.DataFrame:
    """Clean and robust accuracy (%) as "mean ± sd" per model, one column per attack and epsilon (for display)."""
    from ..plots import model_label
    sub = acc[acc["stats"] == stats]
    sub = sub.assign(model=[model_label(n, q) for n, q in zip(sub["norm"], sub["norm_p"])])
    return accuracy_table(sub, ["model"])


def matched_clean(models: pd.DataFrame, acc: pd.DataFrame, eps: float = JUDGED_EPS) -> pd.DataFrame:
    """One point per model and seed: clean accuracy (full test set) and PGD accuracy at ``eps``
    (population statistics), for the view at matched clean accuracy: a normalization that is
    more robust only because it is less accurate lies on the others' trend, not above it."""
    pgd = acc[(acc["attack"] == "pgd") & (acc["stats"] == "population") & np.isclose(acc["eps"], eps, rtol=0, atol=1e-9)]
    keys = ["norm", "norm_p", "seed"]
    m = models.assign(norm_p=models["norm_p"].astype(float))
    p = pgd.assign(norm_p=pgd["norm_p"].astype(float))[keys + ["accuracy"]].rename(columns={"accuracy": "pgd"})
    return m[keys + ["clean_full"]].merge(p, on=keys, how="inner")
