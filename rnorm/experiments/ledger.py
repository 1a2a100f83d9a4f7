"""The claims ledger: a verdict for each claim C1-C5, computed from the notebooks' summaries.

Every verdict follows a rule written here (and printed in the book beside it), applied to the
``summary.json`` files the notebooks write; nothing is typed by hand. An effect counts when it is
larger than the spread over seeds: ``|difference of means| > 2 * pooled std`` (with one seed the
spread is unknown, which the ledger says). Verdicts: ``reproduced``, ``partly``,
``not reproduced``, or ``not run`` when the results are missing.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from ..attacks import format_eps
from ..results import StudyResult, results_root
from .params import ConfigError, NotebookParams

REPRODUCED, PARTLY, NOT, NOT_RUN = "reproduced", "partly", "not reproduced", "not run"

CLAIMS = {
    "C1": "Adversarial images shift the distribution of BatchNorm inputs, so the population statistics "
          "estimated in training are inaccurate for them.",
    "C2": "Evaluating BatchNorm with the statistics of the inference batch (stats swap) makes its adversarial "
          "vulnerability disappear: about as robust as a network without BN, at about the same clean accuracy.",
    "C3": "RobustNorm is more robust than BatchNorm under attack while keeping BatchNorm's clean accuracy "
          "and training speed.",
    "C4": "An auxiliary BatchNorm for easy examples (EBN) improves both clean and robust accuracy over AdvProp "
          "in most settings of dataset x architecture.",
    "C5": "AdvProp (adversarial examples through an auxiliary BN) improves clean accuracy over standard training.",
}

RULES = {
    "C1": "reproduced if, for PGD at the largest epsilon, the adversarial batch's statistics are on average at "
          "least twice as far from the population statistics as the clean batch's (mean over layers of the "
          "per-layer ratio), for both the mean and the variance, against both the EMA and PreciseBN statistics; "
          "partly if that holds for some of these four comparisons; not reproduced if for none.",
    "C2": "reproduced if white-box PGD accuracy with batch statistics is within 5 points of (or above) the "
          "no-norm model's and clearly above BN with population statistics, at clean accuracy within 2 points of "
          "BN's; partly if only the transferred attack (gradient from population statistics) is defeated; not "
          "reproduced otherwise.",
    "C3": "reproduced if RobustNorm (some p, population statistics) beats BatchNorm's PGD accuracy by more than "
          "the seed spread while its clean accuracy is within 2 points of BatchNorm's; partly if it beats BN on "
          "only one of the two; not reproduced otherwise.",
    "C4": "over the settings where some recipe reached at least twice chance clean accuracy (others are excluded "
          "and named): reproduced if EBN beats AdvProp on both clean and PGD accuracy in more than half of them; "
          "partly if on at least one; not reproduced otherwise (a setting counts as a win when the mean is higher; "
          "a win larger than the seed spread is reported separately).",
    "C5": "over the same informative settings: reproduced if AdvProp's clean accuracy beats standard training's "
          "in more than half of them; "
          "partly if in at least one; not reproduced otherwise.",
}


def pooled_std(*stds) -> float:
    vals = [s for s in stds if s is not None and not math.isnan(s)]
    return math.sqrt(sum(s * s for s in vals) / len(vals)) if vals else 0.0


def load_summaries(results_root) -> dict:
    """Read ``<root>/<notebook>/summary.json`` for every notebook that has one."""
    out = {}
    for f in sorted(Path(results_root).glob("*/summary.json")):
        out[f.parent.name] = json.loads(f.read_text())
    return out


def verdict_c1(s: dict | None) -> dict:
    if not s or not s.get("ratios"):
        return {"verdict": NOT_RUN}
    pgd = [r for r in s["ratios"] if r["attack"] == "pgd"]
    if not pgd:
        return {"verdict": NOT_RUN}
    eps = max(r["eps"] for r in pgd)
    comps = [r for r in pgd if r["eps"] == eps and r["statistic"] in ("mean", "var")]
    ok = [r["ratio"] >= 2 for r in comps]
    verdict = REPRODUCED if ok and all(ok) else PARTLY if any(ok) else NOT
    refs = {"ema": "EMA", "precise": "PreciseBN"}
    effect = "; ".join(f"{r['statistic']} vs {refs.get(r['reference'], r['reference'])}: {r['ratio']:.2f}×"
                       for r in comps)
    return {"verdict": verdict, "effect": f"PGD {format_eps(eps)}: adversarial/clean distance {effect}",
            "spread": "one model"}


def verdict_c2(s: dict | None) -> dict:
    need = ("clean_population", "clean_batch", "pgd_population", "pgd_batch_whitebox", "pgd_batch_transfer")
    if not s or any(k not in s for k in need):
        return {"verdict": NOT_RUN}
    pop, wb, tr = s["pgd_population"]["mean"], s["pgd_batch_whitebox"]["mean"], s["pgd_batch_transfer"]["mean"]
    clean_gap = abs(s["clean_batch"]["mean"] - s["clean_population"]["mean"])
    spread = pooled_std(s["pgd_population"]["std"], s["pgd_batch_whitebox"]["std"])
    nonorm = s.get("pgd_nonorm", {}).get("mean")
    clearly_above = wb - pop > max(2 * spread, 0.02)
    near_nonorm = nonorm is None or wb >= nonorm - 0.05
    if clearly_above and near_nonorm and clean_gap <= 0.02:
        verdict = REPRODUCED
    elif tr - pop > max(2 * spread, 0.02):
        verdict = PARTLY
    else:
        verdict = NOT
    eps = format_eps(s["pgd_eps"])
    effect = (f"PGD {eps}: population {100 * pop:.1f}%, batch white-box {100 * wb:.1f}%, batch transfer "
              f"{100 * tr:.1f}%" + (f", no norm {100 * nonorm:.1f}%" if nonorm is not None else "")
              + f"; clean gap {100 * clean_gap:.1f} points")
    return {"verdict": verdict, "effect": effect, "spread": _spread_text(s["pgd_batch_whitebox"])}


def _spread_text(entry: dict) -> str:
    n = entry.get("n_seeds", 1)
    return f"± {100 * entry['std']:.1f} (sd over {n} seeds)" if n > 1 else "one seed: spread unknown"


def verdict_c3(s: dict | None) -> dict:
    models = (s or {}).get("models", [])
    bn = next((m for m in models if m["norm"] == "bn"), None)
    rns = [m for m in models if m["norm"] == "robustnorm" and m["pgd_mean"] is not None]
    if bn is None or not rns:
        return {"verdict": NOT_RUN}
    rn = max(rns, key=lambda m: m["pgd_mean"])
    name = f"RobustNorm p={rn['norm_p']:g}"
    spread = pooled_std(bn["pgd_std"], rn["pgd_std"])
    robust_win = rn["pgd_mean"] - bn["pgd_mean"] > 2 * spread and rn["pgd_mean"] > bn["pgd_mean"]
    clean_ok = rn["clean_mean"] >= bn["clean_mean"] - 0.02
    verdict = REPRODUCED if robust_win and clean_ok else PARTLY if (robust_win or (clean_ok and rn["pgd_mean"] > bn["pgd_mean"])) else NOT
    speed = rn["images_per_s"] / bn["images_per_s"] if bn["images_per_s"] else float("nan")
    effect = (f"PGD {format_eps(s['eps'])}: {name} {100 * rn['pgd_mean']:.1f}% vs BN {100 * bn['pgd_mean']:.1f}%; "
              f"clean {100 * rn['clean_mean']:.1f}% vs {100 * bn['clean_mean']:.1f}%; training speed {speed:.2f}× BN's")
    n = bn["n_seeds"]
    return {"verdict": verdict, "effect": effect,
            "spread": f"pooled sd {100 * spread:.1f} points over {n} seeds" if n > 1 else "one seed: spread unknown"}


CHANCE_FACTOR = 2.0  # a setting whose best clean accuracy is below twice chance taught us nothing


def _settings(s: dict, *, informative_only: bool = False):
    for entry in s.get("settings", []):
        if informative_only and not informative(entry):
            continue
        yield _setting_label(entry), entry["recipes"]


def _setting_label(entry: dict) -> str:
    from ..plots import label
    return f"{label(entry['dataset'])} / {entry['arch']}"


def informative(entry: dict, num_classes: int = 10) -> bool:
    """True when some recipe of a setting reached at least twice chance clean accuracy."""
    best = max((r["clean_mean"] for r in entry["recipes"].values()), default=0.0)
    return best >= CHANCE_FACTOR / num_classes


def _excluded_text(s: dict) -> str:
    out = [_setting_label(e) for e in s.get("settings", []) if not informative(e)]
    return f" — excluded, no recipe reached twice chance accuracy: {', '.join(out)}" if out else ""


def _compare_recipes(s: dict | None, new: str, old: str, compare) -> dict:
    """Count the informative settings where recipe ``new`` beats ``old``; ``compare`` judges one setting.

    ``compare(new_entry, old_entry)`` returns ``(win, clear_win, text)``; the verdict is
    reproduced for wins in more than half of the settings, partly for at least one.
    """
    if not s:
        return {"verdict": NOT_RUN}
    wins, clear, total, parts = 0, 0, 0, []
    for label, rec in _settings(s, informative_only=True):
        if new not in rec or old not in rec:
            continue
        win, clear_win, text = compare(rec[new], rec[old])
        total += 1
        wins += win
        clear += clear_win
        parts.append(f"{label}: {text}")
    if not total:
        return {"verdict": NOT_RUN, "effect": "no informative setting" + _excluded_text(s)}
    verdict = REPRODUCED if wins > total / 2 else PARTLY if wins else NOT
    from ..plots import label
    return {"verdict": verdict, "effect": f"{label(new)} − {label(old)}: {'; '.join(parts)}{_excluded_text(s)}",
            "spread": _wins_text(wins, clear, total, s)}


def _wins_text(wins: int, clear: int, total: int, s: dict) -> str:
    seeds = min((r.get("n_seeds", 1) for _, rec in _settings(s) for r in rec.values()), default=1)
    if seeds < 2:
        return f"wins in {wins}/{total} settings; one seed: spread unknown"
    return f"wins in {wins}/{total} settings, {clear} beyond 2× the seed spread ({seeds} seeds)"


def _clean_and_robust(e: dict, a: dict):
    dc, dr = e["clean_mean"] - a["clean_mean"], (e["pgd_mean"] or 0) - (a["pgd_mean"] or 0)
    win = dc > 0 and dr > 0
    clear = win and dc > 2 * pooled_std(e["clean_std"], a["clean_std"]) and dr > 2 * pooled_std(e["pgd_std"], a["pgd_std"])
    return win, clear, f"clean {100 * dc:+.1f}, PGD {100 * dr:+.1f} points"


def _clean_only(a: dict, b: dict):
    d = a["clean_mean"] - b["clean_mean"]
    return d > 0, d > 2 * pooled_std(a["clean_std"], b["clean_std"]), f"clean {100 * d:+.1f} points"


def verdict_c4(s: dict | None) -> dict:
    return _compare_recipes(s, "ebn", "advprop", _clean_and_robust)


def verdict_c5(s: dict | None) -> dict:
    return _compare_recipes(s, "advprop", "standard", _clean_only)


SOURCES = {"C1": "01_distribution_shift", "C2": "02_stats_swap", "C3": "03_robustnorm",
           "C4": "04_easy_batchnorm", "C5": "04_easy_batchnorm"}
VERDICTS = {"C1": verdict_c1, "C2": verdict_c2, "C3": verdict_c3, "C4": verdict_c4, "C5": verdict_c5}


STUDIES = ("01_distribution_shift", "02_stats_swap", "03_robustnorm", "04_easy_batchnorm")


def ledger(root) -> pd.DataFrame:
    """One row per claim: claim, statement, experiment (notebook), measured effect, spread, verdict, rule."""
    summaries = load_summaries(root)
    rows = []
    for cid, claim in CLAIMS.items():
        v = VERDICTS[cid](summaries.get(SOURCES[cid]))
        rows.append({"claim": cid, "statement": claim, "experiment": SOURCES[cid], "effect": v.get("effect", "—"),
                     "spread": v.get("spread", "—"), "verdict": v["verdict"], "rule": RULES[cid]})
    return pd.DataFrame(rows)


def provenances(root) -> dict:
    """``{notebook: provenance dict}`` for every study notebook with results under ``root``."""
    out = {}
    for nb in STUDIES:
        f = Path(root) / nb / "provenance.json"
        if f.is_file():
            out[nb] = json.loads(f.read_text())
    return out


def check_one_profile(provs: dict, root) -> str | None:
    """The one profile all results under ``root`` come from; mixed profiles are an error naming the files."""
    profiles = {nb: p.get("profile") for nb, p in provs.items()}
    if len(set(profiles.values())) > 1:
        listing = "; ".join(f"{Path(root) / nb / 'provenance.json'}: {prof or 'no profile (custom parameters)'}"
                            for nb, prof in profiles.items())
        raise ConfigError(f"the results under {root} come from different profiles, and a ledger over them would "
                          f"mix scales: {listing}. Re-run the notebooks of one profile (rnorm book --profile NAME).")
    return next(iter(profiles.values()), None)


def scale_table(provs: dict) -> pd.DataFrame:
    """The scale of every experiment (datasets, architectures, width, epochs, images, seeds), from provenance."""
    rows = []
    for nb, prov in provs.items():
        p = prov["parameters"]
        rows.append({"notebook": nb, "dataset(s)": ", ".join(p.get("datasets") or [p.get("dataset", "")]),
                     "arch(s)": ", ".join(p.get("archs") or [p.get("arch", "")]), "width": p.get("width"),
                     "epochs": p.get("epochs"), "training images": p.get("train_subset") or "all",
                     "seeds": len(p.get("seeds", [])), "test images": p.get("test_n", p.get("probe_n"))})
    return pd.DataFrame(rows)


def timings_table(provs: dict, timings: dict | None) -> pd.DataFrame:
    """Minutes per step: pre-training (from ``timings-<profile>.json``, when present) and each notebook."""
    rows = []
    if timings and "pretrain" in timings.get("seconds", {}):
        rows.append({"step": f"training all runs ({timings['jobs']} worker(s))",
                     "minutes": round(timings["seconds"]["pretrain"] / 60, 1)})
    rows += [{"step": nb, "minutes": round(prov["wall_seconds"] / 60, 1)} for nb, prov in provs.items()
             if prov.get("wall_seconds") is not None]
    out = pd.DataFrame(rows, columns=["step", "minutes"])
    if len(out):
        out.loc[len(out)] = {"step": "sum of the steps (notebooks may run in parallel, so less wall time)",
                             "minutes": round(out["minutes"].sum(), 1)}
    return out


@dataclasses.dataclass(frozen=True)
class LedgerParams(NotebookParams):
    """Parameters of ``05_claims_ledger``: only where the results are read from."""

    NOTEBOOK = "05_claims_ledger"


def run(p: LedgerParams) -> StudyResult:
    """Read the studies' results, refuse mixed profiles, compute every verdict and the scale/timing tables."""
    root = results_root(p.results_dir)
    provs = provenances(root)
    profile = check_one_profile(provs, root)
    tf = Path(root) / f"timings-{profile}.json"
    timings = json.loads(tf.read_text()) if profile and tf.is_file() else None
    table = ledger(root)
    headline = {"profile": profile, "verdicts": dict(zip(table["claim"], table["verdict"])),
                "inputs": {nb: provs[nb].get("key") if nb in provs else None for nb in STUDIES}}
    return StudyResult(p.NOTEBOOK, p, {"ledger": table, "scale": scale_table(provs),
                                       "timings": timings_table(provs, timings)},
                       table[["claim", "verdict"]], headline, [], "cpu")


def runs(p: LedgerParams) -> list:
    """The ledger trains nothing."""
    return []
