"""Notebook 03, claim C3: is RobustNorm more robust than BatchNorm at BatchNorm's clean accuracy and speed?

No normalization, BatchNorm and RobustNorm (several powers p) are trained alike (same
architecture, recipe, data, schedule and seeds) and evaluated on the same fixed test images:
clean accuracy (also on the full test set), PGD accuracy over ε for each statistics mode
(``population`` = the reference ``BN``/``RNT``, ``batch`` = ``BNwoT``/``RN``,
``population_mean`` = ``BNM``/``RNM``), APGD-CE at the judged ε, and training curves.

BatchNorm and RobustNorm are tuned alike: for BatchNorm and for each power, a short learning-rate
sweep on one grid (``sweep_lrs``, ``sweep_epochs`` epochs, first seed) trains on the training set
minus a held-out part (``sweep_holdout`` images) and keeps the rate with the best held-out
accuracy; the study's BatchNorm and RobustNorm models then train at their chosen rates (no norm,
a reference, trains at ``lr``). The reference implementation trains every model at one rate; the
sweep departs from it so that neither normalization is judged below its best. The sweep's runs
must exist before the chosen runs can be named, so :func:`runs` names the chosen runs only once
the sweep is trained (``rnorm train`` and ``rnorm book`` train in rounds until the list stops
growing).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..evaluate import summarize, test_subset
from ..results import StudyResult
from ..runs import RunConfig, find_run
from .common import cached_evaluate, models_frame, setup, train_runs
from .params import ConfigError, TrainingParams, check_bool, check_float, check_int, choice_list
from .protocol import JUDGED_EPS
# The chapter's findings frames live in their own module; their names stay importable from here.
from .robustnorm_findings import (apgd_gaps, effect, epochs_to_target, matched_clean, matched_sides,  # noqa: F401
                                  matched_trend, power_effects, table)


@dataclasses.dataclass(frozen=True)
class RobustNormParams(TrainingParams):
    """Parameters of ``03_robustnorm``."""

    NOTEBOOK = "03_robustnorm"
    dataset: str = "fashion_mnist"
    arch: str = "resnet20"
    powers: tuple = (0.2, 1.0)
    include_nonorm: bool = True
    sweep_lrs: tuple = (0.1,)
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
        lrs = self.sweep_lrs if isinstance(self.sweep_lrs, (list, tuple)) else (self.sweep_lrs,)
        if not lrs:
            raise ConfigError("sweep_lrs=[] is empty; give at least one learning rate for BatchNorm and RobustNorm, "
                              "e.g. [0.1].")
        self._set("sweep_lrs", tuple(check_float("sweep_lrs", v, min_value=0.0, min_inclusive=False) for v in lrs))
        if len(set(self.sweep_lrs)) != len(self.sweep_lrs):
            raise ConfigError(f"sweep_lrs={list(self.sweep_lrs)!r} repeats a value; give each rate once.")
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


def swept_models(p: RobustNormParams) -> list[tuple[str, float]]:
    """The models whose learning rate the sweep chooses, as ``(norm, norm_p)``: BatchNorm (``norm_p``
    0, unused) and RobustNorm at each power."""
    return [("bn", 0.0)] + [("robustnorm", pw) for pw in p.powers]


def sweep_name(norm: str, norm_p: float) -> str:
    """The sweep's key for a model: ``"bn"`` or ``"robustnorm p=0.2"`` (also the JSON key of the headline)."""
    return "bn" if norm == "bn" else f"robustnorm p={norm_p:g}"


def sweep_runs(p: RobustNormParams) -> list[RunConfig]:
    """The learning-rate sweep: BatchNorm and each power at each rate, first seed, ``sweep_epochs``
    epochs, on the training set minus ``sweep_holdout`` held-out images. Empty when there is one rate
    (no choice)."""
    if len(p.sweep_lrs) < 2:
        return []
    return [dataclasses.replace(p.run_config(dataset=p.dataset, arch=p.arch, recipe="standard", norm=norm,
                                             seed=p.seeds[0], **({"norm_p": pw} if norm == "robustnorm" else {})),
                                epochs=p.sweep_epochs, warmup_epochs=min(p.warmup_epochs, p.sweep_epochs - 1),
                                lr=lr, holdout=p.sweep_holdout)
            for norm, pw in swept_models(p) for lr in p.sweep_lrs]


def chosen_lrs(p: RobustNormParams, runs_dir=None) -> dict[str, float] | None:
    """``{sweep_name: learning rate}`` with the best final held-out accuracy in the sweep, for BatchNorm
    and each power; None while a sweep run is not trained yet. With one rate, that rate for all.

    Ties (equal final held-out accuracy) go to the smaller rate; a run whose held-out accuracy is
    missing (NaN, e.g. it diverged) ranks below every other."""
    names = [sweep_name(n, q) for n, q in swept_models(p)]
    if len(p.sweep_lrs) < 2:
        return {name: p.sweep_lrs[0] for name in names}
    scores = sweep_scores(p, runs_dir)
    if scores is None:
        return None
    return {name: pick_lr({lr: v for (m, lr), v in scores.items() if m == name}) for name in names}


def sweep_scores(p: RobustNormParams, runs_dir=None) -> dict[tuple[str, float], float] | None:
    """``{(sweep_name, lr): final held-out accuracy}`` of the sweep's runs; None while one is not trained."""
    out = {}
    for cfg in sweep_runs(p):
        r = find_run(cfg, runs_dir)
        if r is None:
            return None
        out[sweep_name(cfg.norm, cfg.norm_p), cfg.lr] = float(r.history["val_acc"].iloc[-1])
    return out


def pick_lr(scores: dict[float, float]) -> float:
    """The rate with the highest score; ties to the smaller rate; NaN scores rank last."""
    return min(scores, key=lambda lr: (-(scores[lr] if scores[lr] == scores[lr] else -np.inf), lr))


def sweep_table(p: RobustNormParams, lr_sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per swept model and rate: final held-out accuracy (fraction), whether it was chosen, and
    whether the chosen rate sits at an end of the grid (the sweep then did not bracket the best rate).
    ``lr_sweep`` holds the sweep's training histories with ``norm``, ``norm_p`` and ``lr`` columns."""
    cols = ["norm", "norm_p", "lr", "val_acc", "chosen", "at_grid_edge"]
    if lr_sweep.empty:
        return pd.DataFrame(columns=cols)
    last = lr_sweep.sort_values("epoch").groupby(["norm", "norm_p", "lr"], as_index=False).tail(1)  # NaN stays NaN
    rows = []
    for norm, pw in swept_models(p):
        sub = last[(last["norm"] == norm) & np.isclose(last["norm_p"].astype(float), pw)]
        if sub.empty:
            continue
        best = pick_lr(dict(zip(sub["lr"], sub["val_acc"])))
        edge = best in (min(p.sweep_lrs), max(p.sweep_lrs))
        rows += [dict(norm=norm, norm_p=pw, lr=lr, val_acc=v, chosen=lr == best, at_grid_edge=edge and lr == best)
                 for lr, v in sorted(zip(sub["lr"], sub["val_acc"]))]
    return pd.DataFrame(rows, columns=cols)


def sweep_grid(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep for display: one row per model, one column per rate, final held-out accuracy (%) to
    one decimal, "–" where a run has none (diverged), the chosen rate marked "(chosen)"."""
    from ..plots import model_label
    if sweep.empty:
        return pd.DataFrame(columns=["model"])
    rows = []
    for (norm, pw), sub in sweep.groupby(["norm", "norm_p"], sort=False):
        row = {"model": model_label(norm, pw)}
        for _, r in sub.iterrows():
            cell = "–" if np.isnan(r["val_acc"]) else f"{100 * r['val_acc']:.1f}"
            row[f"lr {r['lr']:g}"] = cell + (" (chosen)" if r["chosen"] else "")
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def runs(p: RobustNormParams) -> list[RunConfig]:
    """The sweep's runs, then per seed: no norm (at ``lr``), BatchNorm and RobustNorm at each power at
    their chosen rates (named only once the sweep is trained)."""
    base = dict(dataset=p.dataset, arch=p.arch, recipe="standard")
    lrs = chosen_lrs(p)
    out = list(sweep_runs(p))
    for s in p.seeds:
        if p.include_nonorm:
            out.append(p.run_config(norm="none", seed=s, **base))
        if lrs is not None:
            out.append(dataclasses.replace(p.run_config(norm="bn", seed=s, **base), lr=lrs[sweep_name("bn", 0.0)]))
            out += [dataclasses.replace(p.run_config(norm="robustnorm", norm_p=pw, seed=s, **base),
                                        lr=lrs[sweep_name("robustnorm", pw)]) for pw in p.powers]
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
    lr_sweep = pd.concat([r.history.assign(norm=c.norm, norm_p=c.norm_p if c.norm == "robustnorm" else 0.0, lr=c.lr)
                          for c, r in sweep.items()], ignore_index=True) \
        if sweep else pd.DataFrame(columns=["epoch", "val_acc", "norm", "norm_p", "lr"])
    models = models_frame(trained, device)
    summary_table = summarize(acc, ["norm", "norm_p", "attack", "eps", "stats"])
    return StudyResult(p.NOTEBOOK, p, {"accuracy": acc, "history": history, "lr_sweep": lr_sweep, "models": models},
                       summary_table, {"models": models.to_dict(orient="records"), "chosen_lrs": chosen_lrs(p)},
                       list(trained.values()) + list(sweep.values()), str(device))


def headline(cfg: RunConfig, p: RobustNormParams) -> bool:
    """Whether a model enters the ledger's C3 comparison: BatchNorm, and RobustNorm at the ledger's power."""
    from .verdicts import HEADLINE_P
    return cfg.norm == "bn" or (cfg.norm == "robustnorm" and abs(cfg.norm_p - HEADLINE_P) < 1e-9)
