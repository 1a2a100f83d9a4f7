"""Writes book/training-cost.md, the Reproducing page's table of what training the published runs cost, from
the files each run in models/ carries: config.json (what was trained), history.csv (epoch_seconds: the time
of each epoch) and environment.json (CPU, threads, precision). Standard library only (the display labels come from
rnorm/labels.py, read from its file); run from anywhere:

    python book/training_cost.py

tests/test_browser.py fails when the committed page differs from what this script writes (a run was
published since), so rerun it after `rnorm publish`.
"""
from __future__ import annotations

import csv
import importlib.util
import json
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "book" / "training-cost.md"

# The book's display labels (rnorm/labels.py, standard library only), loaded from its file so that this script
# needs neither the package installed nor its dependencies.
_spec = importlib.util.spec_from_file_location("_rnorm_labels", REPO / "rnorm" / "labels.py")
_labels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_labels)
LABELS, SHARE_LABELS, network_label = _labels.LABELS, _labels.SHARE_LABELS, _labels.network_label


def _recipe(cfg: dict) -> str:
    norm = LABELS.get(cfg["norm"], cfg["norm"]) + (f" p={cfg['norm_p']:g}" if cfg["norm"] == "robustnorm" else "")
    shared = cfg.get("share", "none")
    share = "" if shared in ("none", "", None) else f", {SHARE_LABELS.get(shared, shared)}"
    sweep = ", learning-rate sweep" if cfg.get("holdout") else ""  # chapter 3's sweep holds images out
    return f"{LABELS.get(cfg['recipe'], cfg['recipe'])} ({norm}{share}{sweep})"


def rows(models: Path = REPO / "models") -> list[dict]:
    groups: dict[tuple, list] = defaultdict(list)
    for run in sorted(p for p in models.iterdir() if (p / "history.csv").is_file()):
        cfg = json.loads((run / "config.json").read_text())
        env = json.loads((run / "environment.json").read_text())
        with open(run / "history.csv", newline="") as f:
            seconds = sum(float(r["epoch_seconds"]) for r in csv.DictReader(f))
        key = (LABELS.get(cfg["dataset"], cfg["dataset"]), network_label(cfg["arch"], cfg["width"]), _recipe(cfg),
               cfg["epochs"])
        groups[key].append((seconds, env.get("cpu", "?"), env.get("threads", "?"), env.get("precision", "?")))
    out = []
    for (dataset, arch, recipe, epochs), runs in groups.items():
        minutes = [s / 60 for s, *_ in runs]
        out.append(dict(dataset=dataset, arch=arch, recipe=recipe, epochs=epochs, runs=len(runs),
                        total_h=sum(minutes) / 60, lo=min(minutes), hi=max(minutes),
                        cpus=", ".join(sorted({c for _, c, _, _ in runs})),
                        threads=", ".join(sorted({str(t) for _, _, t, _ in runs})),
                        precision=", ".join(sorted({p for *_, p in runs}))))
    return out


def page(models: Path = REPO / "models") -> str:
    rs = rows(models)
    total = sum(r["total_h"] for r in rs)
    n = sum(r["runs"] for r in rs)
    lines = [
        "<!-- Written by book/training_cost.py from models/*/{config.json,history.csv,environment.json}; "
        "do not edit by hand. -->",
        "",
        f"Training the {n} published runs took {total:.1f} worker-hours in all: the sum, over every run in "
        "`models/`, of the seconds of each of its epochs (`epoch_seconds` in its `history.csv`), on the CPU and "
        "with the threads its `environment.json` records. Some runs were trained beside other processes on the "
        "same cores (the commits that published them say so), so these are the times this build paid, not a "
        "benchmark of the recipes.",
        "",
        "| dataset | network | recipe (norm) | epochs | runs | worker-hours | minutes per run | CPU | threads | precision |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in rs:
        per_run = f"{r['lo']:.0f}" if round(r["lo"]) == round(r["hi"]) else f"{r['lo']:.0f}–{r['hi']:.0f}"
        lines.append(f"| {r['dataset']} | {r['arch']} | {r['recipe']} | {r['epochs']} | {r['runs']} | "
                     f"{r['total_h']:.1f} | {per_run} | {r['cpus']} | {r['threads']} | {r['precision']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.write_text(page())
    print(f"wrote {OUT.relative_to(REPO)}")
