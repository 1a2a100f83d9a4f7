"""The claims ledger (notebook ``05_claims_ledger``): every claim's verdict over a results folder.

Reads the results the study notebooks wrote (``<results>/<notebook>/``), leaves out results that
do not come from the current notebooks, parameters and code of the profile they name
(``stale``, which the book pipeline computes: :func:`rnorm.book.stale_studies`), refuses to mix profiles
(:func:`check_one_profile`), applies each
claim's rule (:mod:`rnorm.experiments.verdicts`) and tabulates the scale and cost of the build.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd

from ..results import StudyResult, results_root
from .params import Bool, ConfigError, Device, Field, Int, NotebookParams, params_model
from . import protocol
from .chapters import TITLES
from .claims import (C4_CLAIMED, C4_READINGS, CLAIMS, INCONCLUSIVE, NOT, NOT_RUN, PARTLY, REPRODUCED, RULES,
                     SOURCES, SPECS)
from .verdicts import VERDICTS, Results

STUDIES = ("01_distribution_shift", "02_stats_swap", "03_robustnorm", "04_easy_batchnorm")


def ledger(root, stale: dict | None = None) -> pd.DataFrame:
    """One row per claim: claim, statement, experiment (notebook), effect (with 95 % CIs), verdict,
    key_effect and caveat (the front page's one effect and one-line caveat, :func:`key_effect` and the
    claim's spec), why (the reason of an undecided verdict, then the preconditions that were checked and hold, each with its
    threshold: the convergence floor and its source, the attack strength), rule. The results of the notebooks in
    ``stale`` (``{notebook: reason}``, :func:`rnorm.book.stale_studies`) are not read: their claims are ``not run``,
    with the reason as their why."""
    stale = stale or {}
    r = Results(root, skip=stale)
    rows = []
    for cid, claim in CLAIMS.items():
        v = VERDICTS[cid](r)
        held = ("Preconditions met: " + "; ".join(v.held) + ".") if v.held else ""
        reason = v.checks if not v.checks or v.checks.endswith(".") else v.checks + "."
        why = stale.get(SOURCES[cid], " ".join(t for t in (reason, held) if t))
        rows.append({"claim": cid, "statement": claim, "experiment": SOURCES[cid], "effect": v.effect,
                     "verdict": v.verdict, "why": why, "rule": RULES[cid], "key_effect": key_effect(v, cid),
                     "status": part_status(v, cid), "caveat": caveat(v, cid)})
    return pd.DataFrame(rows)


#: How the front page says what a part's (or a setting's) verdict did.
PART_WORDS = {REPRODUCED: "holds", PARTLY: "partly", NOT: "refuted", INCONCLUSIVE: "undecided", NOT_RUN: "not run"}


def key_effect(row, cid: str) -> str:
    """The one effect the front page shows for claim ``cid``: its first part with an effect, as
    "name: estimate [95 % CI] (rule: CI above <margin>)", the margin from the claim's spec; where the parts are
    settings (C4, C5), the clean part's effect in each setting (the row's ``key``, from
    :func:`rnorm.experiments.per_setting.compare_recipes`); else the verdict of each part."""
    if row.key:
        return row.key
    for name, part in row.parts.items():
        if part.effect is not None:
            spec = SPECS[cid].part_of(name)
            return f"{name}: {part.effect.short()}" + (f" (rule: {spec.threshold()})" if spec else "")
    return "; ".join(f"{name}: {part.verdict}" for name, part in row.parts.items()) or "—"


def part_status(row, cid: str) -> str:
    """What each part of claim ``cid``'s verdict did, in the spec's short names, e.g. "robust holds · clean holds
    · speed undecided"; for a claim over settings, each setting's verdict (grouped by reading where the claim has
    several: C4), a reading with no setting judged as "not run", and the settings claimed but not tested."""
    spec = SPECS[cid]
    if not spec.over_settings:
        def short(name):
            part = spec.part_of(name)
            return (part.short or part.name) if part else name
        return " · ".join(f"{short(n)} {PART_WORDS.get(p.verdict, p.verdict)}" for n, p in row.parts.items())
    readings = dict(C4_READINGS) if cid == "C4" else {}
    groups: dict = {label: [] for label in readings.values()}
    for name, p in row.parts.items():
        reading, _, setting = name.rpartition(", ") if name.startswith(tuple(readings.values())) else ("", "", name)
        groups.setdefault(reading, []).append(f"{setting.split(' / ')[0]} {PART_WORDS.get(p.verdict, p.verdict)}")
    untested = C4_CLAIMED[0] - max((len(g) for g in groups.values()), default=0) if cid == "C4" else 0
    tail = [f"{untested} of {C4_CLAIMED[0]} settings not tested"] if untested > 0 else []
    said = [(f"{reading.split(' (')[0]}: " if reading else "") + (" · ".join(g) if g else PART_WORDS[NOT_RUN])
            for reading, g in groups.items()]
    return "; ".join(said + tail)


def caveat(row, cid: str) -> str:
    """The front page's one-line caveat of claim ``cid``: its spec's (reading, coverage), then what the data
    add (the row's ``caveats``, e.g. a compared model below its floor)."""
    return "; ".join((SPECS[cid].caveat,) + tuple(row.caveats))


def scale_summary(texts: dict) -> str:
    """The scale of the claims' experiments in one line, claims of the same scale together: ``texts`` is
    ``{claim: scale text}`` (:func:`scale_text`), e.g. "C1–C3: CIFAR-10 … · 3 seeds. C4, C5: …"."""
    groups: dict = {}
    for cid, text in texts.items():
        groups.setdefault(text, []).append(cid)
    def name(ids):
        nums = [int(i[1:]) for i in ids]
        run = len(ids) > 2 and nums == list(range(nums[0], nums[0] + len(nums)))
        return f"{ids[0]}–{ids[-1]}" if run else ", ".join(ids)
    return " ".join(f"{name(ids)}: {text}." for text, ids in groups.items())


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


def _epochs(p: dict):
    """The epochs of one notebook's parameters: ``epochs``, or where ``epochs_by_dataset`` gives a dataset
    of the build other epochs, the numbers per dataset (e.g. ``15 (cifar10_jpeg: 30)``)."""
    datasets = p.get("datasets") or [p.get("dataset")]
    given = p.get("epochs_by_dataset") or {}
    other = {d: given[d] for d in datasets if d in given and given[d] != p.get("epochs")}
    if not other:
        return p.get("epochs")
    rest = [d for d in datasets if d not in other]
    parts = ", ".join(f"{d}: {e}" for d, e in other.items())
    return f"{p.get('epochs')} ({parts})" if rest else parts


def scale_table(provs: dict) -> pd.DataFrame:
    """The scale of every experiment (datasets, architectures, width, epochs, images, seeds), from provenance."""
    rows = []
    for nb, prov in provs.items():
        p = prov["parameters"]
        rows.append({"notebook": nb, "dataset(s)": ", ".join(p.get("datasets") or [p.get("dataset", "")]),
                     "arch(s)": ", ".join(p.get("archs") or [p.get("arch", "")]), "width": p.get("width"),
                     "epochs": _epochs(p), "training images": p.get("train_subset") or "all",
                     "seeds": len(p.get("seeds", [])), "test images": p.get("test_n", p.get("probe_n"))})
    return pd.DataFrame(rows)


def _labels(cell) -> str:
    """A comma-separated cell of names (``"fashion_mnist, cifar10_jpeg"``) by their display labels."""
    from ..plots import label
    return ", ".join(label(v.strip()) for v in str(cell).split(",")) if str(cell) else ""


def _plain_epochs(row) -> str:
    """A :func:`scale_table` row's epochs with the datasets' display labels: "15 (cifar10_jpeg: 30)" ->
    "15 (CIFAR-10 (lossy JPEG copy): 30)"."""
    from ..plots import label
    text = str(row["epochs"])
    for d in str(row["dataset(s)"]).split(","):
        text = text.replace(f"{d.strip()}:", f"{label(d.strip())}:")
    return text


def scale_text(row) -> str:
    """One row of :func:`scale_table` in words, for the verdicts at a glance: datasets (display labels),
    networks (plain names) with their width, epochs, seeds, e.g. "FashionMNIST · ResNet-18 width 16 · 15 epochs · 3 seeds"."""
    epochs = _plain_epochs(row)
    epochs = f"{epochs} epochs" if epochs.isdigit() else f"epochs {epochs}"
    return f"{_labels(row['dataset(s)'])} · {_labels(row['arch(s)'])} width {row['width']} · {epochs} · {row['seeds']} seeds"


def chapter_title(notebook: str) -> str:
    """A notebook's chapter title (:data:`rnorm.experiments.chapters.TITLES`) for a reader; other steps unchanged."""
    return TITLES.get(notebook, notebook)


def scale_display(scale: pd.DataFrame) -> pd.DataFrame:
    """:func:`scale_table` as the ledger shows it: chapter titles, datasets and networks by their display
    labels (:func:`rnorm.plots.label`), and the per-dataset epochs with the datasets' labels."""
    if not len(scale):
        return scale
    return scale.assign(notebook=scale["notebook"].map(chapter_title), epochs=scale.apply(_plain_epochs, axis=1),
                        **{"dataset(s)": scale["dataset(s)"].map(_labels), "arch(s)": scale["arch(s)"].map(_labels)}
                        ).rename(columns={"notebook": "chapter", "arch(s)": "network(s)"})


def timings_display(timings: pd.DataFrame) -> pd.DataFrame:
    """:func:`timings_table` as the Reproducing page shows it: each notebook's step by its chapter title."""
    return timings.assign(step=timings["step"].map(chapter_title)) if len(timings) else timings


def timings_table(provs: dict, timings: dict | None) -> pd.DataFrame:
    """Minutes per step: the training ``rnorm book`` did before executing (from ``timings-<profile>.json``,
    when present; runs already trained or published cost nothing there) and each notebook."""
    rows = []
    if timings and "pretrain" in timings.get("seconds", {}):
        how = "; ".join(timings.get("layouts") or []) or f"{timings['jobs']} worker(s)"
        step = ("training: none needed (every run was already trained or published)" if "nothing to train" in how
                else f"training the runs not yet trained ({how})")
        rows.append({"step": step, "minutes": round(timings["seconds"]["pretrain"] / 60, 1)})
    rows += [{"step": nb, "minutes": round(prov["wall_seconds"] / 60, 1)} for nb, prov in provs.items()
             if prov.get("wall_seconds") is not None]
    out = pd.DataFrame(rows, columns=["step", "minutes"])
    if len(out):
        out.loc[len(out)] = {"step": "sum of the steps (notebooks may run in parallel, so less wall time)",
                             "minutes": round(out["minutes"].sum(), 1)}
    return out


def eps_curves(root, stale: dict | None = None) -> pd.DataFrame:
    """The whole ε curves the verdicts rest on, to print beside each rule: one row per claim, curve,
    setting, ε and seed with PGD accuracy (PGD with random start, the chapters' sweep), read from the
    results the ledger judges (stale chapters left out). C1: BatchNorm with population statistics and
    with the adversarial batch's own statistics (the repair); C2: BatchNorm with population statistics,
    with batch statistics (white-box and transfer), and no norm, at inference batch :data:`~rnorm.experiments.protocol.JUDGED_BATCH`; C3: every
    normalization with population statistics; C4 (whose models C5 also judges): every recipe through the
    main branch."""
    from ..plots import label, model_label
    r = Results(root, skip=stale or {})
    cols = ["claim", "setting", "curve", "eps", "seed", "accuracy"]
    parts = []

    def pgd(frame):
        return frame[(frame["attack"] == "pgd") & (frame["eps"].astype(float) > 0)]

    def stats_curve(f):
        return [f"BatchNorm, {label(st)} ({g})" for st, g in zip(f["stats"], f["gradient"])]

    def has(frame, *names):  # results of an older layout lack a column: no curve rather than an error
        return frame is not None and all(n in frame for n in ("attack", "eps", "seed", "accuracy") + names)

    a = r.frame("01_distribution_shift", "accuracy")
    if has(a, "stats", "gradient"):
        f = pgd(a)
        parts.append(f.assign(claim="C1", setting="", curve=stats_curve(f)))
    a = r.frame("02_stats_swap", "eps_sweep")
    if has(a, "stats", "gradient", "norm", "batch_size"):
        judged = a["batch_size"] == protocol.JUDGED_BATCH
        f = pgd(a[judged]) if judged.any() else pgd(a)
        curve = [model_label(n) if n != "bn" else c for n, c in zip(f["norm"], stats_curve(f))]
        parts.append(f.assign(claim="C2", setting="", curve=curve))
    a = r.frame("03_robustnorm", "accuracy")
    if has(a, "stats", "norm", "norm_p"):
        f = pgd(a[a["stats"] == "population"])
        parts.append(f.assign(claim="C3", setting="", curve=[model_label(n, q) for n, q in zip(f["norm"], f["norm_p"])]))
    a = r.frame("04_easy_batchnorm", "accuracy")
    if has(a, "branch", "share", "dataset", "arch", "recipe"):
        f = pgd(a[(a["branch"] == "main") & (a["share"].isin(("none", "")))])
        setting = [f"{label(d)} / {label(ar)}" for d, ar in zip(f["dataset"], f["arch"])]
        parts.append(f.assign(claim="C4", setting=setting, curve=f["recipe"].map(label)))  # C5's models too
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat([p_[cols] for p_ in parts], ignore_index=True)


@params_model
class LedgerParams(NotebookParams):
    """Parameters of ``05_claims_ledger``: only where the results are read from."""

    NOTEBOOK = "05_claims_ledger"
    results_dir: Optional[str] = Field(None, description="where the notebooks' results are read from and the "
                                                         "ledger's written (None: book/results)")
    device: Device = Field("auto", description="unused: the ledger computes nothing on a device")
    threads: Optional[Int] = Field(None, ge=1, description="unused")
    progress: Bool = Field(False, description="unused")


def run(p: LedgerParams, stale: dict[str, str]) -> StudyResult:
    """Read the studies' results, leave out the stale ones (``stale``: ``{notebook: reason}``, computed by
    the book pipeline, :func:`rnorm.book.stale_studies`, so the study never asks the pipeline for keys),
    refuse mixed profiles, compute every verdict and the scale/timing tables."""
    root = results_root(p.results_dir)
    provs = {nb: prov for nb, prov in provenances(root).items() if nb not in stale}
    profile = check_one_profile(provs, root)
    tf = Path(root) / f"timings-{profile}.json"
    timings = json.loads(tf.read_text()) if profile and tf.is_file() else None
    table = ledger(root, stale)
    headline = {"profile": profile, "verdicts": dict(zip(table["claim"], table["verdict"])),
                "inputs": {nb: provs[nb].get("key") if nb in provs else None for nb in STUDIES},
                "stale": sorted(stale)}
    return StudyResult(p.NOTEBOOK, p, {"ledger": table, "scale": scale_table(provs),
                                       "timings": timings_table(provs, timings), "eps_curves": eps_curves(root, stale)},
                       table[["claim", "verdict"]], headline, [], "cpu")


def runs(p: LedgerParams) -> list:
    """The ledger trains nothing."""
    return []
