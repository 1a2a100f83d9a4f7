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
from ..results import StudyResult
from ..runs import RunConfig
from .common import cached_evaluate, setup, train_runs
from .params import ConfigError, TrainingParams, check_bool, check_float, int_list


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
    eval_batch_size: int = 64
    sweep_batch_sizes: tuple = (8, 32, 128)
    sweep_eps: str = "4/255"
    adv_fraction: float = 0.125
    include_nonorm: bool = True

    def _check(self):
        super()._check()
        self._check_evaluation()
        self._set("sweep_batch_sizes", int_list("sweep_batch_sizes", self.sweep_batch_sizes, min_value=2))
        self._set("sweep_eps", parse_eps(self.sweep_eps))
        self._set("adv_fraction", check_float("adv_fraction", self.adv_fraction, min_value=0.0, max_value=1.0, min_inclusive=False))
        check_bool("include_nonorm", self.include_nonorm)
        for name, bs in [("eval_batch_size", self.eval_batch_size)] + [("sweep_batch_sizes", b)
                                                                      for b in self.sweep_batch_sizes]:
            if bs > self.test_n:
                raise ConfigError(f"{name}={bs} is larger than test_n={self.test_n}; "
                                  f"allowed: batch sizes up to test_n.")


def runs(p: StatsSwapParams) -> list[RunConfig]:
    """BN and (optionally) no-normalization models, trained normally, one per seed."""
    norms = ("bn", "none") if p.include_nonorm else ("bn",)
    return [p.run_config(dataset=p.dataset, arch=p.arch, norm=n, recipe="standard", seed=s)
            for s in p.seeds for n in norms]


def run(p: StatsSwapParams) -> StudyResult:
    device = setup(p)
    trained = train_runs(runs(p), p)
    x, y = test_subset(p.dataset, p.test_n, seed=0)
    attack_params = {"pgd": {"steps": p.pgd_steps}}
    sweeps, sizes = [], []
    for cfg, r in trained.items():
        model = r.model(device=device)
        bn = cfg.norm == "bn"
        df = cached_evaluate(r, model, x, y, attacks=("clean",) + tuple(p.attacks), eps=p.epsilons,
                             stats=("population", "batch", "population_mean") if bn else ("population",),
                             batch_sizes=(p.eval_batch_size,), gradients=("white-box", "transfer") if bn else ("white-box",),
                             attack_params=attack_params, device=p.device, seed=cfg.seed, progress=p.progress)
        sweeps.append(df.assign(norm=cfg.norm, seed=cfg.seed))
        if bn:
            df = cached_evaluate(r, model, x, y, attacks=("clean", "pgd"), eps=(p.sweep_eps,), stats=("population", "batch"),
                                 batch_sizes=p.sweep_batch_sizes, makeups=("all", "mixed"),
                                 gradients=("white-box", "transfer"), adv_fraction=p.adv_fraction,
                                 attack_params=attack_params, device=p.device, seed=cfg.seed, progress=p.progress)
            sizes.append(df.assign(norm=cfg.norm, seed=cfg.seed))
    eps_sweep = pd.concat(sweeps, ignore_index=True)
    batch_sweep = pd.concat(sizes, ignore_index=True)
    by = ["norm", "attack", "eps", "stats", "gradient", "batch_size", "makeup"]
    table = pd.concat([summarize(eps_sweep, by).assign(sweep="epsilon"),
                       summarize(batch_sweep, by).assign(sweep="batch size")], ignore_index=True)
    history = pd.concat([r.history.assign(norm=c.norm, seed=c.seed) for c, r in trained.items()], ignore_index=True)
    return StudyResult(p.NOTEBOOK, p, {"eps_sweep": eps_sweep, "batch_sweep": batch_sweep, "history": history},
                       table, summary(p, eps_sweep, batch_sweep), list(trained.values()), str(device))


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
        "clean_population": dict(norm="bn", attack="clean", stats="population"),
        "clean_batch": dict(norm="bn", attack="clean", stats="batch"),
        "clean_nonorm": dict(norm="none", attack="clean"),
        "pgd_population": dict(norm="bn", attack="pgd", stats="population", eps=pgd_eps),
        "pgd_batch_whitebox": dict(norm="bn", attack="pgd", stats="batch", gradient="white-box", eps=pgd_eps),
        "pgd_batch_transfer": dict(norm="bn", attack="pgd", stats="batch", gradient="transfer", eps=pgd_eps),
        "pgd_nonorm": dict(norm="none", attack="pgd", eps=pgd_eps),
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
    from ..attacks import format_eps
    eps = format_eps(summary["pgd_eps"])
    if pop is None:
        return "- PGD was not among the attacks, so there is no robust accuracy to report."
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
