"""Notebook 02, claim C2: does evaluating BN with batch statistics remove its vulnerability?

The same BN weights are evaluated with ``population``, ``batch`` and ``population_mean``
statistics, beside a model without normalization trained alike:

* an epsilon sweep (FGSM, PGD) at one inference batch size, the attack's gradient passing
  through the statistics used for inference (white-box) and, for the batch-statistics rows,
  also transferred from the population-statistics model;
* an inference batch-size sweep at one epsilon, for an all-adversarial batch and for a batch in
  which only a fraction of the images is adversarial (Wu & Johnson 2021).
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from ..attacks import parse_eps
from ..evaluate import summarize, test_subset
from ..runs import RunConfig
from .common import cached_evaluate, setup, run_record, train_runs
from .params import (ConfigError, TrainingParams, check_float, check_int, choice_list,
                     eps_list, int_list)


@dataclasses.dataclass(frozen=True)
class StatsSwapParams(TrainingParams):
    """Parameters of ``02_stats_swap``."""

    NOTEBOOK = "02_stats_swap"
    dataset: str = "fashion_mnist"
    arch: str = "resnet18"
    attacks: tuple = ("fgsm", "pgd")
    epsilons: tuple = ("1/255", "2/255", "4/255", "8/255")
    pgd_steps: int = 10
    test_n: int = 128
    eval_batch: int = 64
    batch_sizes: tuple = (8, 32, 128)
    sweep_eps: str = "4/255"
    adv_fraction: float = 0.125
    include_nonorm: bool = True

    def _check(self):
        super()._check()
        self._set("attacks", choice_list("attacks", self.attacks, ("fgsm", "pgd")))
        self._set("epsilons", eps_list("epsilons", self.epsilons))
        self._set("batch_sizes", int_list("batch_sizes", self.batch_sizes, min_value=1))
        self._set("sweep_eps", parse_eps(self.sweep_eps))
        check_int("pgd_steps", self.pgd_steps, min_value=1)
        check_int("test_n", self.test_n, min_value=1)
        check_int("eval_batch", self.eval_batch, min_value=1)
        check_float("adv_fraction", self.adv_fraction, min_value=0.0, max_value=1.0, min_inclusive=False)
        for name, bs in [("eval_batch", self.eval_batch)] + [("batch_sizes", b) for b in self.batch_sizes]:
            if bs > self.test_n:
                raise ConfigError(f"{name} contains {bs}, larger than test_n={self.test_n}; "
                                  f"allowed: batch sizes up to test_n.")


def runs(p: StatsSwapParams) -> list[RunConfig]:
    """BN and (optionally) no-normalization models, trained normally, one per seed."""
    norms = ("bn", "none") if p.include_nonorm else ("bn",)
    return [p.run_config(dataset=p.dataset, arch=p.arch, norm=n, recipe="standard", seed=s)
            for s in p.seeds for n in norms]


def run(p: StatsSwapParams) -> dict:
    device = setup(p)
    trained = train_runs(runs(p), device=p.device, progress=p.progress)
    x, y = test_subset(p.dataset, p.test_n, seed=0)
    attack_params = {"pgd": {"steps": p.pgd_steps}}
    sweeps, sizes = [], []
    for cfg, r in trained.items():
        model = r.model(device=device)
        label = "BN" if cfg.norm == "bn" else "no norm"
        stats = ("population", "batch", "population_mean") if cfg.norm == "bn" else ("population",)
        gradients = ("white-box", "transfer") if cfg.norm == "bn" else ("white-box",)
        df = cached_evaluate(r, model, x, y, attacks=("clean",) + tuple(p.attacks), eps=p.epsilons, stats=stats,
                      batch_sizes=(p.eval_batch,), gradients=gradients, attack_params=attack_params,
                      device=p.device, seed=cfg.seed, progress=p.progress)
        df["model"], df["seed"] = label, cfg.seed
        sweeps.append(df)
        if cfg.norm == "bn":
            df = cached_evaluate(r, model, x, y, attacks=("clean", "pgd"), eps=(p.sweep_eps,), stats=("population", "batch"),
                          batch_sizes=p.batch_sizes, makeups=("all", "mixed"), gradients=("white-box", "transfer"),
                          adv_fraction=p.adv_fraction, attack_params=attack_params, device=p.device,
                          seed=cfg.seed, progress=p.progress)
            df["model"], df["seed"] = label, cfg.seed
            sizes.append(df)
    eps_sweep = pd.concat(sweeps, ignore_index=True)
    eps_sweep["condition"] = condition_label(eps_sweep)
    batch_sweep = pd.concat(sizes, ignore_index=True)
    batch_sweep["condition"] = condition_label(batch_sweep)
    return {"eps_sweep": eps_sweep, "batch_sweep": batch_sweep, "device": str(device),
            "runs": [run_record(r) for r in trained.values()]}


def condition_label(df: pd.DataFrame) -> pd.Series:
    """A readable label per row: model, statistics and gradient source."""
    def one(row):
        if row["model"] != "BN":
            return row["model"]
        text = {"population": "BN, population stats", "batch": "BN, batch stats",
                "population_mean": "BN, running mean + batch var"}[row["stats"]]
        if row["gradient"] == "transfer":
            text += " (transfer)"
        return text
    return df.apply(one, axis=1)


def summary(p: StatsSwapParams, eps_sweep: pd.DataFrame, batch_sweep: pd.DataFrame) -> dict:
    """Headline numbers (fractions, mean and std over seeds) for the claims ledger."""
    def pick(df, **kw):
        sub = df
        for k, v in kw.items():
            sub = sub[sub[k] == v] if not isinstance(v, float) else sub[(sub[k] - v).abs() < 1e-9]
        return sub["accuracy"]

    out = {"sweep_eps": p.sweep_eps}
    pgd_eps = p.sweep_eps if any(abs(e - p.sweep_eps) < 1e-9 for e in p.epsilons) else max(p.epsilons)
    out["pgd_eps"] = pgd_eps
    rows = {
        "clean_population": dict(model="BN", attack="clean", stats="population"),
        "clean_batch": dict(model="BN", attack="clean", stats="batch"),
        "clean_nonorm": dict(model="no norm", attack="clean"),
        "pgd_population": dict(model="BN", attack="pgd", stats="population", eps=pgd_eps),
        "pgd_batch_whitebox": dict(model="BN", attack="pgd", stats="batch", gradient="white-box", eps=pgd_eps),
        "pgd_batch_transfer": dict(model="BN", attack="pgd", stats="batch", gradient="transfer", eps=pgd_eps),
        "pgd_nonorm": dict(model="no norm", attack="pgd", eps=pgd_eps),
    }
    for key, sel in rows.items():
        acc = pick(eps_sweep, **sel)
        if len(acc):
            out[key] = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                        "n_seeds": int(len(acc))}
    bs = batch_sweep[(batch_sweep["attack"] == "pgd") & (batch_sweep["stats"] == "batch")]
    per = summarize(bs, ["batch_size", "makeup", "gradient"]).fillna({"std": 0.0})
    out["batch_sweep"] = per.to_dict(orient="records")
    return out


def findings(summary: dict) -> str:
    """The notebook's findings as markdown bullet points, every number taken from ``summary``."""
    def pct(key):
        return 100 * summary[key]["mean"] if key in summary else None

    pop, wb, tr, nonorm = pct("pgd_population"), pct("pgd_batch_whitebox"), pct("pgd_batch_transfer"), pct("pgd_nonorm")
    eps = f"{summary['pgd_eps'] * 255:.0f}/255"
    lines = [f"- **BN as deployed** (population statistics): PGD at ε = {eps} leaves {pop:.1f}% accuracy."]
    if tr is not None:
        lines.append(f"- **Transferred attack, batch statistics**: {tr:.1f}% ({tr - pop:+.1f} points): what an attack "
                     f"that ignores the swap measures.")
    if wb is not None:
        lines.append(f"- **White-box attack through the batch statistics**: {wb:.1f}% ({wb - pop:+.1f} points).")
    if nonorm is not None:
        lines.append(f"- **No normalization**, same attack: {nonorm:.1f}%.")
    rows = [r for r in summary.get("batch_sweep", []) if r["gradient"] == "white-box"]
    for makeup, text in (("all", "all-adversarial batches"), ("mixed", "a few adversarial images among clean ones")):
        sub = [r for r in rows if r["makeup"] == makeup]
        if sub:
            lo, hi = min(sub, key=lambda r: r["mean"]), max(sub, key=lambda r: r["mean"])
            lines.append(f"- Over inference batch sizes {min(r['batch_size'] for r in sub)}–"
                         f"{max(r['batch_size'] for r in sub)} with {text}, white-box PGD leaves between "
                         f"{100 * lo['mean']:.1f}% (batch {lo['batch_size']}) and {100 * hi['mean']:.1f}% "
                         f"(batch {hi['batch_size']}).")
    return "\n".join(lines)
