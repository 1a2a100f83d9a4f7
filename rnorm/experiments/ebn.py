"""Notebook 04, claims C4 and C5: Easy Batch Normalization against AdvProp and standard training.

Standard training, PGD-AT, AdvProp, EBN and (where a profile lists it) AdvProp+EBN on each dataset
and architecture, over several seeds: clean, FGSM and PGD accuracy through the main branch (what the
papers deploy), the same through each auxiliary branch, and an ablation in which the EBN branches
share either their affine parameters or their statistics (Zhang et al. 2024).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal, Optional

import numpy as np
import pandas as pd
from pydantic import BeforeValidator

from .. import stats
from .._validate import check_choice, check_int
from ..attacks import format_eps, parse_eps
from ..data import DATASETS
from ..evaluate import summarize, test_subset
from ..models import ARCHS
from ..results import StudyResult
from ..runs import RunConfig
from ..train import LOSS_WEIGHTINGS, branches_for
from .common import EVALUATION_FILES, accuracy_table, cached_evaluate, models_frame, setup, train_runs
from .params import (Attacks, Bool, CellType, ConfigError, Eps, Epsilons, Field, Int, Seeds, TrainingParams, choices,
                     model_validator, params_model)
from .protocol import MAX_CI_WIDTH, _select, attack_params, not_at_floor, standard_floor
from .verdicts import seed_values

RECIPES = ("standard", "pgd_at", "advprop", "ebn", "advprop_ebn")


def _as_mapping(value):
    """``epochs_by_dataset`` as given (a mapping), or as held (sorted pairs: ``dataclasses.replace``)."""
    if isinstance(value, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        return dict(value)
    if not isinstance(value, dict):
        raise ConfigError(f"epochs_by_dataset={value!r} is not allowed; allowed: a mapping from dataset "
                          f"({', '.join(DATASETS)}) to epochs, e.g. {{cifar10_jpeg: 30}}, or {{}}.")
    return value


def _train_alpha(value, info):
    """``train_alpha``: None (train_eps / train_steps) or a step in (0, 1], as a float."""
    if value is None:
        return None
    try:
        alpha = parse_eps(value)
    except ConfigError:
        alpha = 0.0
    if not alpha > 0:
        raise ConfigError(f"train_alpha={value!r} is not allowed; allowed: None (train_eps / "
                          f"train_steps) or a step in (0, 1], written like 0.004 or '1/255'.")
    return alpha


@params_model
class EBNParams(TrainingParams):
    """Parameters of ``04_easy_batchnorm``."""

    NOTEBOOK = "04_easy_batchnorm"
    datasets: choices(DATASETS) = Field(("fashion_mnist",), min_length=1, description="settings' datasets: "
                                        "fashion_mnist, cifar10, cifar10_jpeg (lossy JPEG copy)")
    archs: choices(ARCHS) = Field(("resnet18",), min_length=1, description="settings' networks: resnet18, "
                                                                           "resnet50, resnet20")
    recipes: choices(RECIPES, distinct=True) = Field(("standard", "advprop", "ebn", "advprop_ebn"), min_length=1,
                                                     description="standard, pgd_at, advprop, ebn, advprop_ebn")
    width: Int = Field(8, ge=1, description="channels of the first stage (64 is the full ResNet)")
    epochs_by_dataset: Annotated[dict, BeforeValidator(_as_mapping)] = Field(
        default_factory=dict, description='epochs for the datasets named here, e.g. {"cifar10_jpeg": 30}; '
                                          '`epochs` for the others')  # held as sorted (dataset, epochs) pairs
    train_batch_size: Int = Field(128, ge=2, description="training batch (clean images; each slice has as many)")
    seeds: Seeds = Field((0,), min_length=1, description="training seeds; the same seed gives every recipe the "
                                                         "same initialization and data order")
    train_eps: Eps = Field("2/255", description="L-inf radius of the training attacks (adversarial and easy "
                                                "examples), pixel units")
    train_steps: Int = Field(3, ge=1, description="PGD iterations of the training attacks")
    train_alpha: Annotated[Optional[float], BeforeValidator(_train_alpha), CellType("Optional[str]")] = Field(
        None, description="step of each training-attack iteration, pixel units (None: train_eps / train_steps)")
    loss_weighting: Literal[LOSS_WEIGHTINGS] = Field("mean", description="mean over slices (one weight per term; "
                                                     "Methods says what it equalizes) or sum")
    attacks: Attacks = Field(("fgsm", "pgd"), min_length=1, description="evaluation attacks: fgsm, pgd")
    epsilons: Epsilons = Field(("1/255", "4/255"), min_length=1, description="evaluation L-inf radii, pixel units "
                               "(the training and the standard epsilon are added)")
    pgd_steps: Int = Field(20, ge=1, description="PGD iterations at evaluation (step 2.5 eps / steps, random "
                                                 "start)")
    apgd_steps: Int = Field(100, ge=1, description="APGD-CE iterations at the training and the standard epsilon "
                                                   "(main branch of standard, PGD-AT, AdvProp, EBN)")
    apgd_n: Int = Field(64, ge=1, description="test images APGD-CE runs on (the first of the test_n)")
    test_n: Int = Field(128, ge=1, description="test images scored (a fixed stratified subset)")
    eval_batch_size: Int = Field(64, ge=2, description="inference batch (images)")
    ablation: Bool = Field(True, description="also train EBN with shared affine parameters / shared statistics")

    @model_validator(mode="after")
    def _check_ebn(self):
        if self.apgd_n > self.test_n:
            raise ConfigError(f"apgd_n={self.apgd_n} is out of range; allowed: an integer in [1, {self.test_n}] "
                              f"(at most test_n).")
        if self.apgd_n < self.eval_batch_size:
            raise ConfigError(f"apgd_n={self.apgd_n} is smaller than eval_batch_size={self.eval_batch_size}; "
                              f"allowed: at least one inference batch of images.")
        self._set("epochs_by_dataset", _epochs_by_dataset(self.epochs_by_dataset, self.warmup_epochs,
                                                          self.epochs, self.datasets))
        return self

    def as_dict(self) -> dict:
        """The validated values (:meth:`NotebookParams.as_dict`), ``epochs_by_dataset`` as a mapping."""
        return {**super().as_dict(), "epochs_by_dataset": dict(self.epochs_by_dataset)}


def _epochs_by_dataset(value: dict, warmup_epochs: int, epochs: int, datasets) -> tuple:
    """``epochs_by_dataset`` checked: a mapping from dataset names (any the library knows, so that a
    profile may name a dataset a ``-p datasets`` override leaves out) to at least ``warmup_epochs + 1``
    epochs. Kept, as sorted ``(dataset, epochs)`` pairs (so the parameters stay immutable and hashable),
    only for the datasets of this build whose epochs differ from ``epochs``: an entry that changes no run
    changes no result either."""
    out = {}
    for name, n in value.items():
        check_choice("epochs_by_dataset key", name, tuple(DATASETS))
        out[name] = check_int(f"epochs_by_dataset[{name}]", n, min_value=warmup_epochs + 1)
    return tuple(sorted((d, n) for d, n in out.items() if d in datasets and n != epochs))


def epochs_for(p: EBNParams, dataset: str) -> int:
    """The epochs ``dataset``'s runs train for: ``epochs_by_dataset[dataset]`` where given, else ``epochs``
    (one schedule does not converge every dataset: CIFAR-10 (JPEG copy) ResNet-18 width 16 stayed below
    its floor after the 15 epochs that converge FashionMNIST, see Limitations)."""
    return dict(p.epochs_by_dataset).get(dataset, p.epochs)


def epochs_text(p: EBNParams) -> str:
    """The epochs of this build's datasets in words: ``15 epoch(s)`` when they share one number, else
    ``15 epoch(s) on FashionMNIST, 30 on CIFAR-10 (lossy JPEG copy)``."""
    from ..plots import label
    per = {d: epochs_for(p, d) for d in p.datasets}
    if len(set(per.values())) == 1:
        return f"{next(iter(per.values()))} epoch(s)"
    return ", ".join(f"{e}{' epoch(s)' if i == 0 else ''} on {label(d)}" for i, (d, e) in enumerate(per.items()))


def train_alpha(p: EBNParams) -> float:
    """The step of each training-attack iteration: ``train_alpha`` if given, else ``train_eps / train_steps``.

    Departs from the library's default for evaluation attacks (``2.5 * eps / steps``, Madry et al.): with a
    random start, any step of at least ``2 * eps`` puts every pixel on the ball's surface, so a 1-step attack
    at that step is an FGSM taken at a random point, and the start is erased. With ``eps / steps`` the
    attack can just reach the surface in its steps (the public AdvProp ports in ``PAPERS.md`` take one
    step at ε = 1/255, a step of ε) and a one-step attack keeps part of its random start. The ``cpu``
    profile's ε (2/255) is twice those ports'. Stated in the chapter's text.
    """
    return p.train_alpha if p.train_alpha is not None else p.train_eps / p.train_steps


def _config(p: EBNParams, dataset: str, arch: str, recipe: str, seed: int, share: str = "none") -> RunConfig:
    cfg = p.run_config(dataset=dataset, arch=arch, norm="multibn" if branches_for(recipe) else "bn", share=share,
                       recipe=recipe, seed=seed, train_eps=p.train_eps, train_steps=p.train_steps,
                       train_alpha=train_alpha(p), loss_weighting=p.loss_weighting)
    return cfg if cfg.epochs == epochs_for(p, dataset) else dataclasses.replace(cfg, epochs=epochs_for(p, dataset))


def ablation_setting(p: EBNParams) -> tuple[str, str] | None:
    """The (dataset, arch) of the sharing ablation: the first of each, when EBN is in the recipes."""
    return (p.datasets[0], p.archs[0]) if p.ablation and "ebn" in p.recipes else None


def runs(p: EBNParams) -> list[RunConfig]:
    out = [_config(p, d, a, r, s) for d in p.datasets for a in p.archs for s in p.seeds for r in p.recipes]
    setting = ablation_setting(p)
    if setting:
        out += [_config(p, *setting, "ebn", s, share=share) for s in p.seeds for share in ("affine", "stats")]
    return out


def eval_eps(p: EBNParams, dataset: str) -> tuple[float, ...]:
    """The ε a setting is evaluated at: the notebook's ``epsilons``, the training ε and the dataset's
    standard ε (:data:`rnorm.experiments.protocol.EBN_STANDARD_EPS`), which the ledger judges at."""
    from .protocol import EBN_STANDARD_EPS
    extra = [p.train_eps] + ([EBN_STANDARD_EPS[dataset]] if dataset in EBN_STANDARD_EPS else [])
    out: list[float] = []
    for e in tuple(p.epsilons) + tuple(extra):
        if all(abs(e - o) > 1e-12 for o in out):
            out.append(e)
    return tuple(sorted(out))


#: The recipes whose main branch APGD-CE also attacks: those the verdicts compare, and the PGD-AT baseline,
#: whose robustness from a 1-step training attack is exactly what a stronger attack should check.
APGD_RECIPES = ("standard", "pgd_at", "advprop", "ebn")


def test_sets(p: EBNParams) -> tuple[dict, dict]:
    """``({dataset: (x, y)}, {dataset: (x, y)})``: the fixed ``test_n`` images the attacks score and the
    full test set, per dataset; the one definition :func:`run` and :func:`precompute_evaluations` share,
    so that a pre-computed evaluation has the key the notebook looks up."""
    return ({d: test_subset(d, p.test_n, seed=0) for d in p.datasets},
            {d: test_subset(d, None) for d in p.datasets})


def evaluate_run(p: EBNParams, cfg: RunConfig, r, device, tests: dict, full: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One trained run's evaluations (each cached in its folder by the hash of its inputs): every branch at
    every ε (:func:`eval_eps`) on the fixed ``test_n`` images, plus APGD-CE through the main branch at the
    judged ε on the first ``apgd_n`` for :data:`APGD_RECIPES`; and clean accuracy through every
    branch on the full test set. ``tests``/``full``: ``{dataset: (x, y)}``. Returns (accuracy rows,
    full-test-set clean rows), without the run's names.

    The subset's clean rows and each ε's attacks are cached apart, so adding an ε to ``epsilons`` evaluates
    that ε alone; the rows are the same as from one call (each row's seed derives from the run's seed, the
    attack, ε, batch size and branch, not from its place in the grid)."""
    model = r.model(device=device)
    x, y = tests[cfg.dataset]
    branches = ("main",) + branches_for(cfg.recipe)
    common = dict(stats=("population",), batch_sizes=(p.eval_batch_size,), per_image=True, device=p.device,
                  seed=cfg.seed, progress=p.progress)
    frames = [cached_evaluate(r, model, x, y, attacks=("clean",), eps=(p.train_eps,), branches=branches, **common)]
    frames += [cached_evaluate(r, model, x, y, attacks=tuple(p.attacks), eps=(e,), branches=branches,
                               attack_params={"pgd": {"steps": p.pgd_steps}}, **common)
               for e in eval_eps(p, cfg.dataset)]
    if cfg.recipe in APGD_RECIPES and cfg.share == "none":
        frames.append(cached_evaluate(r, model, x[:p.apgd_n], y[:p.apgd_n], attacks=("apgd",),
                                      eps=judged_eps(p, cfg.dataset),
                                      attack_params={"apgd": {"steps": p.apgd_steps}}, **common))
    df = pd.concat(frames, ignore_index=True)
    xf, yf = full[cfg.dataset]
    clean = cached_evaluate(r, model, xf, yf, attacks=("clean",), stats=("population",),
                            batch_sizes=(min(500, len(yf)),), branches=branches, shuffle=False, device=p.device)
    return df, clean


def precompute_evaluations(p: EBNParams, shard: int = 0, shards: int = 1, log=print) -> dict[str, int]:
    """Compute, ahead of the notebook, the evaluations of the runs already trained, with exactly the calls
    :func:`run` makes (:func:`evaluate_run`), so that executing the chapter finds them cached. Runs not yet
    trained are skipped (nothing is trained here); ``shard`` of ``shards`` takes every ``shards``-th run,
    so several processes (one per core) share the work. The clean accuracy on the full test set that
    :func:`~rnorm.experiments.common.models_frame` records for the ledger's convergence floors is computed
    too, by that same call. Returns ``{run name: evaluations computed now}`` for every trained run of the
    shard (0 where every evaluation was found cached)."""
    from ..runs import find_run
    check_int("shards", shards, min_value=1)
    check_int("shard", shard, min_value=0, max_value=shards - 1)
    device = setup(p)
    tests, full = test_sets(p)
    done = {}
    for i, cfg in enumerate(runs(p)):
        if i % shards != shard:
            continue
        r = find_run(cfg)
        if r is None:
            log(f"not trained yet, skipped: {cfg.name()}")
            continue
        before = _evaluation_files(r)
        evaluate_run(p, cfg, r, device, tests, full)
        models_frame({cfg: r}, device, per_image=True)
        done[cfg.name()] = len(_evaluation_files(r) - before)
        log(f"evaluated: {cfg.name()} ({done[cfg.name()]} computed now)" if done[cfg.name()]
            else f"already evaluated (every evaluation cached): {cfg.name()}")
    return done


def _evaluation_files(run) -> set:
    """The cached evaluations in a run's folder (the ``eval-<key>.csv`` files of
    :func:`~rnorm.experiments.common.cached_evaluate`), by the pattern ``rnorm publish`` copies them by."""
    return set(run.path.glob(EVALUATION_FILES))


def run(p: EBNParams) -> StudyResult:
    """Train (or reuse) every recipe x setting x seed and evaluate each (:func:`evaluate_run`): every
    branch at every ε on the fixed ``test_n`` images, clean accuracy through every branch on the full
    test set, and APGD-CE through the main branch at the judged ε (the training ε and the standard ε) on
    the first ``apgd_n`` images for :data:`APGD_RECIPES` (the recipes the ledger compares, and PGD-AT).

    Frames: ``accuracy`` (per-image rows on the subset), ``clean_full`` (per model and branch, the
    whole test set), ``history`` and ``models``."""
    device = setup(p)
    trained = train_runs(runs(p), p)
    tests, full = test_sets(p)
    frames, fulls, histories = [], [], []
    for cfg, r in trained.items():
        df, clean = evaluate_run(p, cfg, r, device, tests, full)
        names = dict(dataset=cfg.dataset, arch=cfg.arch, recipe=cfg.recipe, share=cfg.share, seed=cfg.seed)
        frames.append(df.assign(**names))
        fulls.append(clean.assign(**names))
        histories.append(r.history.assign(**names))
    acc = pd.concat(frames, ignore_index=True)
    clean_full = pd.concat(fulls, ignore_index=True)
    table = summarize(acc, ["dataset", "arch", "recipe", "share", "branch", "attack", "eps"])
    models = models_frame(trained, device, per_image=True)  # per-image bits: C4/C5's clean parts, seeds x images
    return StudyResult(p.NOTEBOOK, p, {"accuracy": acc, "clean_full": clean_full,
                                       "history": pd.concat(histories, ignore_index=True), "models": models}, table,
                       summary(p, acc, clean_full), list(trained.values()), str(device))


def judged_eps(p: EBNParams, dataset: str) -> tuple[float, ...]:
    """The ε C4 is judged at in a setting: the training ε and the dataset's standard ε (when known)."""
    from .protocol import EBN_STANDARD_EPS
    std = EBN_STANDARD_EPS.get(dataset)
    return tuple(sorted({p.train_eps} | ({std} if std is not None else set())))


def with_full_clean(acc: pd.DataFrame, clean_full: pd.DataFrame | None) -> pd.DataFrame:
    """``acc`` with its clean rows (the ``test_n`` subset) replaced by the full-test-set clean rows of
    the same models and branches, for the tables and findings (attacks stay on the subset)."""
    if clean_full is None or clean_full.empty:
        return acc
    keys = [k for k in ("dataset", "arch", "recipe", "share", "seed", "branch") if k in acc and k in clean_full]
    cols = [c for c in acc.columns if c in clean_full.columns]
    full = clean_full[cols]
    have = set(full[keys].itertuples(index=False, name=None))
    clean = acc[acc["attack"] == "clean"]
    kept = clean[[row not in have for row in clean[keys].itertuples(index=False, name=None)]]
    # clean first, as the tables order their columns by first appearance
    return pd.concat([full, kept, acc[acc["attack"] != "clean"]], ignore_index=True)


def judged(models: pd.DataFrame | None, dataset: str, arch: str) -> tuple[bool, str]:
    """Whether a setting's differences may be given a direction in words: standard training (the
    reference of C4-C5, separate branches) reached its convergence floor there
    (:func:`rnorm.experiments.protocol.standard_floor`, the rule the verdicts apply). ``(ok, text)``; the
    text says why not, or which floor was met."""
    return standard_floor(models, dataset, arch)


def _header(text: str, ok: bool, why: str) -> str:
    """A setting's heading line; when it is not judged, the reason, and that no word gives a direction."""
    return text if ok else (f"{text}\n\n*Not judged: {why}. The differences are shown; no word says which way "
                            f"they go.*")


def _category(e, a, b, attack: str, ok: bool) -> str | None:
    """Which way a paired difference ``e`` of per-seed values ``a`` -> ``b`` goes: ``"higher"`` or
    ``"lower"`` where its 95 % CI excludes 0, ``"none"`` where it holds 0 and is at most the protocol's
    :data:`~rnorm.experiments.protocol.MAX_CI_WIDTH` wide, ``"wide"`` where it holds 0 and is wider (too
    wide to tell a difference from none, as the verdicts' rule says), ``"floor"`` where every robust
    accuracy compared is at the attack's floor (no difference can show), ``"no CI"`` with fewer than 3
    seeds; None where the setting is not judged (no word may give a direction)."""
    if not ok:
        return None
    if e is None or math.isnan(e.low):
        return "no CI"
    if attack != "clean" and not not_at_floor(*a, *b)[0]:
        return "floor"
    if e.low > 0 or e.high < 0:
        return "higher" if e.low > 0 else "lower"
    return "wide" if e.high - e.low > MAX_CI_WIDTH else "none"


def _direction(e, a, b, attack: str, ok: bool, words: tuple[str, str, str]) -> str:
    """:func:`_category` in words, as a parenthesis to append: ``words`` = (above 0, below 0, neither);
    nothing when the setting is not judged or there is no CI; a note instead at the attack's floor and
    where the CI is too wide to tell."""
    cat = _category(e, a, b, attack, ok)
    if cat in (None, "no CI"):
        return ""
    if cat == "floor":
        return " (both at the attack's floor: no difference can show)"
    if cat == "wide":
        return f" (CI wider than {100 * MAX_CI_WIDTH:.0f} points: too wide to tell)"
    return f" ({dict(zip(('higher', 'lower', 'none'), words))[cat]})"


def _attack_name(rows: pd.DataFrame, attack: str, eps: float) -> str:
    """``clean``, or the attack with its steps and ε as run (``PGD-20 2/255``), read from the rows' params."""
    if attack == "clean":
        return "clean"
    name, steps = attack.upper(), set()
    if "params" in rows:
        for text in _select(rows, attack=attack, eps=float(eps))["params"].dropna():
            steps.add(attack_params(text).get("steps"))
    if len(steps) == 1 and None not in steps:
        name += f"-{steps.pop()}"
    return f"{name} {format_eps(eps)}"


def branch_findings(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                    models: pd.DataFrame | None) -> str:
    """Plain-words findings per setting: for every recipe and branch, the clean (full test set where
    measured) and PGD accuracy (at each ε) minus standard training's main branch, paired over seeds
    with a 95 % CI, so that what hurts is said as plainly as what helps. "helps"/"hurts" only where
    the CI excludes 0, standard training reached its floor (:func:`judged`) and the robust accuracies
    are not all at the attack's floor."""
    from ..plots import label
    lines = []
    main = with_full_clean(acc, clean_full)
    main = main[main["share"] == "none"]
    for (d, a), sub in main.groupby(["dataset", "arch"], sort=False):
        base = sub[(sub["recipe"] == "standard") & (sub["branch"] == "main")]
        if base.empty:
            continue
        ok, why = judged(models, d, a)
        lines += [""] if lines else []  # a blank line ends the previous setting's list
        lines.append(_header(f"**{label(d)} / {a}** — difference from standard training (main branch), paired "
                             f"over seeds:", ok, why))
        for (recipe, branch), rows in sub[sub["recipe"] != "standard"].groupby(["recipe", "branch"], sort=False):
            parts = []
            for attack, eps in _scored(rows):
                got = _paired(base, rows, attack, eps)
                if got is None:
                    continue
                e, va, vb = got
                word = _direction(e, va, vb, attack, ok, ("helps", "hurts", "no difference shown"))
                parts.append(f"{_attack_name(rows, attack, eps)} {e.text()}{word}")
            lines.append(f"- {label(recipe)}, {branch} branch: " + "; ".join(parts))
    return "\n".join(lines)


def _display(acc: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return accuracy_table(acc, by, labelled=("dataset", "recipe"))


def main_table(acc: pd.DataFrame, branch: str = "main") -> pd.DataFrame:
    """Accuracy (%) "mean ± sd" over seeds per dataset, arch and recipe through ``branch`` (no ablation rows)."""
    return _display(acc[(acc["branch"] == branch) & (acc["share"] == "none")], ["dataset", "arch", "recipe"])


def branch_table(acc: pd.DataFrame) -> pd.DataFrame:
    """The same through each auxiliary branch (empty when no recipe has one)."""
    aux = acc[(acc["branch"] != "main") & (acc["share"] == "none")]
    return _display(aux, ["dataset", "arch", "recipe", "branch"]) if len(aux) else aux


def ablation_table(acc: pd.DataFrame) -> pd.DataFrame:
    """EBN through the main branch with separate (``none``), shared-affine and shared-statistics
    branches, in the settings where the ablation was trained (:func:`_ablation_rows`; empty when it did not
    run). Without APGD-CE, which attacks only the separate-branch models (:data:`APGD_RECIPES`), so that
    every column compares all three."""
    abl = _ablation_rows(acc)
    abl = abl[abl["attack"] != "apgd"]
    return _display(abl, ["dataset", "arch", "share"]) if len(abl) else abl


def _ablation_rows(acc: pd.DataFrame) -> pd.DataFrame:
    """EBN's main-branch rows in the settings (dataset, arch) where a shared-branch variant was trained:
    a setting with separate-branch EBN alone (the ablation runs in one setting, :func:`ablation_setting`)
    has nothing to compare and is left out."""
    ebn_main = acc[(acc["recipe"] == "ebn") & (acc["branch"] == "main")]
    shared = ebn_main.loc[ebn_main["share"] != "none", ["dataset", "arch"]].drop_duplicates()
    return ebn_main.merge(shared, on=["dataset", "arch"])


def with_every_hue_level(rows: pd.DataFrame, *, x: str, hue: str, col: str) -> pd.DataFrame:
    """``rows`` for :func:`rnorm.plots.accuracy_bars` with one panel per ``col``, led by one empty row
    (accuracy NaN, no bar) per ``hue`` level of any panel, in the order the levels first appear.

    ``accuracy_bars`` colours each panel's levels in the order they appear in that panel, and keeps the
    first panel's legend: two settings evaluated at different ε (FashionMNIST at 0.1, CIFAR-10 at
    8/255) would give one level two colours and leave the second panel's levels out of the legend. With
    every level in every panel, in one order, a level has one colour and the legend names them all; a
    level a panel lacks leaves an empty slot. Done here, not in :mod:`rnorm.plots`, because that module
    is part of every cached evaluation's key (through :mod:`rnorm.results`), and editing it would
    recompute every evaluation of the study."""
    levels = list(dict.fromkeys(rows[hue]))
    pad = pd.DataFrame([{col: c, x: rows.loc[rows[col] == c, x].iloc[0], hue: level, "accuracy": float("nan")}
                        for c in dict.fromkeys(rows[col]) for level in levels])
    return pd.concat([pad, rows], ignore_index=True)


def summary(p: EBNParams, acc: pd.DataFrame, clean_full: pd.DataFrame | None = None) -> dict:
    """Per (dataset, arch): mean/std over seeds of clean accuracy (full test set where measured) and of PGD
    accuracy at every evaluated ε, per recipe (by name), through the main branch."""
    main = with_full_clean(acc, clean_full)
    main = main[(main["branch"] == "main") & (main["share"] == "none")]
    out = {"settings": []}

    def mean_sd(v):
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n_seeds": int(len(v))}

    for (d, a), sub in main.groupby(["dataset", "arch"], sort=False):
        entry = {"dataset": d, "arch": a, "recipes": {}}
        for recipe, rs in sub.groupby("recipe", sort=False):
            pgd = rs[rs["attack"] == "pgd"]
            entry["recipes"][recipe] = {
                "clean": mean_sd(rs[rs["attack"] == "clean"]["accuracy"]),
                "pgd": {format_eps(e): mean_sd(g["accuracy"]) for e, g in pgd.groupby("eps")}}
        out["settings"].append(entry)
    return out


def _scored(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """The (attack, ε) pairs of ``frame``'s clean and PGD rows, clean first, then PGD by ε."""
    rows = frame[frame["attack"].isin(("clean", "pgd"))][["attack", "eps"]].drop_duplicates()
    return list(rows.sort_values(["attack", "eps"]).itertuples(index=False, name=None))


def _mean_over_seeds(frame: pd.DataFrame, attack: str, eps: float) -> float:
    """Mean over seeds of one value per seed (:func:`~rnorm.experiments.verdicts.seed_values`); NaN if none."""
    rows = _select(frame, attack=attack, eps=float(eps))
    seeds = sorted(set(rows["seed"]))
    return float(np.mean(seed_values(rows, seeds))) if seeds else math.nan


def _paired(a: pd.DataFrame, b: pd.DataFrame, attack: str, eps: float):
    """``b`` minus ``a`` at (attack, ε), paired over the seeds both have (one value per seed,
    :func:`~rnorm.experiments.verdicts.seed_values`): ``(effect, a's values, b's values)`` with
    :func:`rnorm.stats.paired_seeds`'s 95 % CI; None if they share no seed."""
    a, b = _select(a, attack=attack, eps=float(eps)), _select(b, attack=attack, eps=float(eps))
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    if not seeds:
        return None
    va, vb = seed_values(a, seeds), seed_values(b, seeds)
    return stats.paired_seeds(va, vb), va, vb


_COMPARED = ("higher", "lower", "no difference shown")


def ranking_findings(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                     models: pd.DataFrame | None) -> str:
    """The chapter's headline, in plain words, per setting through the main branch: the recipes ranked by
    mean clean accuracy and by mean PGD accuracy at each ε, a ">" between neighbours only where their paired
    CI excludes 0 (:func:`_rank_sign`), whether EBN has the lowest mean, and EBN against AdvProp
    (paired over seeds, 95 % CI), whatever way it cuts; the direction in words only where the setting
    is judged (:func:`judged`). The PGD rows here are PGD alone; the C4 verdict's robust parts take the
    per-image worst case of PGD and APGD-CE and are named "robust" to keep the two apart."""
    from ..plots import label
    main = with_full_clean(acc, clean_full)
    main = main[(main["branch"] == "main") & (main["share"] == "none")]
    full = clean_full is not None and not clean_full.empty
    lines = []
    for (d, a), sub in main.groupby(["dataset", "arch"], sort=False):
        ok, why = judged(models, d, a)
        lines += [""] if lines else []  # a blank line ends the previous setting's list
        lines.append(_header(f"**{label(d)} / {a}, main branch** (the branch used at inference; recipes by their "
                             f"mean over seeds, \">\" where the paired 95 % CI of two neighbours excludes 0, \"≈\" "
                             f"where it does not):", ok, why))
        for attack, eps in _scored(sub):
            what = (f"clean accuracy ({'full test set' if full else 'test subset'})" if attack == "clean"
                    else _attack_name(sub, attack, eps).replace(" ", " accuracy at ", 1))
            means = {r: _mean_over_seeds(g, attack, eps) for r, g in sub.groupby("recipe", sort=False)}
            means = {r: m for r, m in means.items() if m == m}  # a recipe without rows here is not ranked
            order = sorted(means, key=lambda r: -means[r])
            shown = [round(100 * means[r], 1) for r in order]
            text = label(order[0]) + f" {shown[0]:.1f} %" if order else ""
            for prev_r, r, cur in zip(order, order[1:], shown[1:]):
                sign = _rank_sign(sub, prev_r, r, attack, eps, ok)
                text += f"{', ' if sign == ',' else f' {sign} '}{label(r)} {cur:.1f} %"
            got = _paired(sub[sub["recipe"] == "advprop"], sub[sub["recipe"] == "ebn"], attack, eps)
            versus = "" if got is None else (f"; EBN minus AdvProp {got[0].text()}"
                                             f"{_direction(*got, attack, ok, _COMPARED)}")
            others = [means[r] for r in order if r != "ebn"]
            last = (f" EBN has the lowest mean of the {len(order)} recipes." if len(order) > 2 and "ebn" in means
                    and round(100 * means["ebn"], 1) < min(round(100 * m, 1) for m in others) else "")
            lines.append(f"- {what}: {text}{versus}.{last}")
    return "\n".join(lines)


def _rank_sign(sub: pd.DataFrame, higher: str, lower: str, attack: str, eps: float, ok: bool) -> str:
    """The sign between two neighbours of a ranking by mean (``higher``'s mean first): ">" where the paired
    95 % CI of ``lower`` minus ``higher`` lies below 0, "≈" where it holds 0 or both are at the attack's
    floor, "<" in the odd case of a CI above 0 (paired over fewer seeds than the means), "," where no
    direction may be read (setting not judged, fewer than 3 shared seeds)."""
    got = _paired(sub[sub["recipe"] == higher], sub[sub["recipe"] == lower], attack, eps)
    cat = None if got is None else _category(*got, attack, ok)
    return {"lower": ">", "higher": "<", "none": "≈", "wide": "≈", "floor": "≈"}.get(cat, ",")


def headline(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *, models: pd.DataFrame | None) -> str:
    """The lead of the chapter's findings, per judged setting (:func:`judged`), through the main branch:
    EBN under PGD at the smallest ε at which not everything compared is at the attack's floor -- "the
    least (most) robust of the recipes" only where its paired CI against every other recipe lies below
    (above) 0 -- its paired difference there from standard training and from AdvProp, and the same two
    on clean accuracy, each with its 95 % CI and a word only where the CI excludes 0, whichever way that
    cuts. Empty where the setting is not judged or lacks EBN or both references (the findings below say
    why)."""
    from ..plots import label
    main = with_full_clean(acc, clean_full)
    main = main[(main["branch"] == "main") & (main["share"] == "none")]
    full = clean_full is not None and not clean_full.empty
    lines = []
    for (d, a), sub in main.groupby(["dataset", "arch"], sort=False):
        ok, _ = judged(models, d, a)
        refs = [r for r in ("standard", "advprop") if (sub["recipe"] == r).any()]
        ebn_rows = sub[sub["recipe"] == "ebn"]
        if not ok or ebn_rows.empty or not refs:
            continue
        for attack, eps in [x for x in _scored(sub) if x[0] == "pgd"]:
            got = {r: _paired(sub[sub["recipe"] == r], ebn_rows, attack, eps) for r in refs}
            if any(g is not None and not_at_floor(*g[1], *g[2])[0] for g in got.values()):
                break
        else:
            continue
        mine = _mean_over_seeds(ebn_rows, attack, eps)
        if mine != mine:
            continue
        # a place among the recipes only where every paired CI against the others puts EBN on one side
        others = {r: _paired(g, ebn_rows, attack, eps) for r, g in sub.groupby("recipe", sort=False) if r != "ebn"}
        others = {r: g for r, g in others.items() if g is not None}
        below = bool(others) and all(g[0].high < 0 for g in others.values())
        above = bool(others) and all(g[0].low > 0 for g in others.values())
        place = (f"the least robust of the {len(others) + 1} recipes" if below else
                 f"the most robust of the {len(others) + 1} recipes" if above else "")

        def versus(got_by, what):
            return ", ".join(f"{g[0].text()} against {label(r) if r != 'standard' else 'standard training'}"
                             f"{_direction(*g, what, ok, _COMPARED)}" for r, g in got_by.items() if g is not None)

        text = (f"**In short ({label(d)} / {a}, main branch, used at inference):** under "
                f"{_attack_name(sub, attack, eps)} alone (PGD only: the ledger's verdicts take, per image, the "
                f"worse of PGD-20 and APGD-CE where run, which can only be lower), EBN "
                f"{f'is {place} ({100 * mine:.1f} %)' if place else f'scores {100 * mine:.1f} %'}: {versus(got, attack)}.")
        clean = versus({r: _paired(sub[sub["recipe"] == r], ebn_rows, "clean", 0.0) for r in refs}, "clean")
        if clean:
            text += f" On clean accuracy ({'full test set' if full else 'test subset'}): {clean}."
        lines.append(text)
    return "\n\n".join(lines)


def _paired_all(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[str, float, tuple]]:
    """``b`` minus ``a`` at each of ``b``'s clean and PGD settings (:func:`_scored`), paired over the seeds
    both have (:func:`_paired`): ``(attack, eps, (effect, a's values, b's values))``; settings where they
    share no seed are left out."""
    out = []
    for attack, eps in _scored(b):
        got = _paired(a, b, attack, eps)
        if got is not None:
            out.append((attack, eps, got))
    return out


def _paired_parts(pairs: list[tuple[str, float, tuple]], b: pd.DataFrame, ok: bool) -> list[str]:
    """:func:`_paired_all`'s pairs as "<attack> <difference with CI> (<direction>)", the word only where
    ``ok``; ``b`` names the attacks (steps, ε) as run."""
    return [f"{_attack_name(b, attack, eps)} {got[0].text()}{_direction(*got, attack, ok, _COMPARED)}"
            for attack, eps, got in pairs]


def ablation_findings(acc: pd.DataFrame, clean_full: pd.DataFrame | None = None, *,
                      models: pd.DataFrame | None) -> str:
    """The sharing ablation in numbers: EBN with shared affine parameters, and with shared statistics,
    minus EBN with separate branches, through the main branch, paired over seeds with 95 % CIs (the
    direction in words only where the setting is judged, :func:`judged`). Where both were trained, also
    shared γ/β minus shared statistics, paired over the seeds both have: Zhang et al. (2024, ``PAPERS.md``)
    argue that separate affine parameters matter more than separate statistics, which here would read as
    sharing γ/β costing more than sharing the statistics (a difference below 0). No ledger verdict rests on it."""
    from ..plots import label
    abl = _ablation_rows(with_full_clean(acc, clean_full))
    if abl.empty:
        return ""
    lines = ["**Sharing ablation** (EBN, main branch; shared minus separate branches, paired over seeds):"]
    for (d, a), sub in abl.groupby(["dataset", "arch"], sort=False):
        base = sub[sub["share"] == "none"]
        ok, why = judged(models, d, a)
        if not ok:
            lines.append(f"- {label(d)} / {a}: *not judged: {why}; no word says which way the differences go.*")
        for share, rows in sub[sub["share"] != "none"].groupby("share", sort=False):
            what = "shared γ/β" if share == "affine" else "shared statistics"
            lines.append(f"- {label(d)} / {a}, {what}: " + "; ".join(_paired_parts(_paired_all(base, rows), rows, ok)))
        affine, shared_stats = sub[sub["share"] == "affine"], sub[sub["share"] == "stats"]
        if len(affine) and len(shared_stats):
            pairs = _paired_all(shared_stats, affine)
            if pairs:  # none while the two share no seed
                lines.append(f"- {label(d)} / {a}, shared γ/β minus shared statistics: "
                             + "; ".join(_paired_parts(pairs, affine, ok))
                             + ". " + " ".join(t for t in (
                                 "Zhang et al. (2024) argue that separate affine parameters matter more than "
                                 "separate statistics, which would show here as a difference below 0.",
                                 _zhang_reading(pairs, affine, ok), "No ledger verdict rests on it.") if t))
    return "\n".join(lines)


def _zhang_reading(pairs: list[tuple[str, float, tuple]], affine: pd.DataFrame, ok: bool) -> str:
    """Whether shared γ/β minus shared statistics (:func:`_paired_all`'s ``pairs``) is below 0, as Zhang et
    al. argue, in plain words: where its CI says so, where it says the opposite, where it shows nothing,
    where both are at the attack's floor and where there is no CI; empty when the setting is not judged."""
    if not ok:
        return ""
    words = {"lower": [], "higher": [], "none": [], "wide": [], "floor": [], "no CI": []}
    for attack, eps, got in pairs:
        name = "clean accuracy" if attack == "clean" else _attack_name(affine, attack, eps)
        words[_category(*got, attack, ok)].append(name)
    shown = ([f"below 0 in {', '.join(words['lower'])}, the direction they argue for"] if words["lower"] else []) + (
        [f"above 0, against their view, in {', '.join(words['higher'])}"] if words["higher"] else [])
    out = ["It is " + "; and ".join(shown)] if shown else []
    if words["none"]:
        out.append(f"no difference is shown in {', '.join(words['none'])}")
    if words["wide"]:
        out.append(f"the CI is too wide to tell in {', '.join(words['wide'])}")
    if words["floor"]:
        out.append(f"both are at the attack's floor under {', '.join(words['floor'])}")
    if words["no CI"]:
        out.append(f"no direction can be read in {', '.join(words['no CI'])} (fewer than 3 seeds: no CI)")
    text = "; ".join(out)
    return (text[0].upper() + text[1:] + ". Their argument is about hybrid adversarial training, where the second "
            "branch sees adversarial examples; here it sees easy ones, so this is a check of the direction, not a "
            "test of their account. APGD-CE is not run on the ablation models.") if text else ""


_AUX = {"advprop": ("adv",), "ebn": ("easy",), "advprop_ebn": ("adv", "easy")}
_HISTORY_KEYS = ("dataset", "arch", "recipe", "seed", "epoch", "loss_main")


def slice_loss_findings(history: pd.DataFrame | None, loss_weighting: str = "mean") -> str:
    """How hard each auxiliary slice is, from the runs' training histories: per setting and recipe, the
    training loss of the clean slice and of each auxiliary slice (adversarial, easy) at the first and the
    last epoch, and the median over epochs of the auxiliary slice's loss as a share of the clean slice's
    (per seed, then the mean over seeds, so a seed with fewer epochs weighs as much; the median keeps the
    warmup epoch from dominating). The sharing ablation is left out.

    Two readings follow, each decided per setting and naming the settings it holds for. An easy slice
    not below the clean one contradicts our reading of EBN, and the text says so; an easy slice below
    it is only an implementation check (the easy attack is built to lower the loss), not evidence for
    the reading. And the loss weighting (``loss_weighting``: ``mean`` or ``sum``, Methods) cannot give
    the recipes one step size where the losses differ enough: a cross-entropy's gradient shrinks
    roughly with its loss once that is small, so a slice far below the clean one adds little to the
    step on the shared weights. That confound is argued where an easy slice is below half the clean
    slice's or an adversarial slice above twice it (median ratio), for C4 and, through AdvProp's step,
    for C5. Empty without the history's columns."""
    from ..plots import label
    if history is None or not set(_HISTORY_KEYS) <= set(history.columns):
        return ""
    h = history[history["share"].isin(("none", ""))] if "share" in history else history
    lines, ratios = [], {}  # ratios: {setting label: {"loss_easy": [...], "loss_adv": [...]}}
    for (d, a), sub in h.groupby(["dataset", "arch"], sort=False):
        parts, setting = [], f"{label(d)} / {a}"
        for recipe, branches in _AUX.items():
            rows = sub[sub["recipe"] == recipe]
            cols = [f"loss_{b}" for b in branches if f"loss_{b}" in rows and rows[f"loss_{b}"].notna().any()]
            if rows.empty or not cols:
                continue
            per_seed = []
            for _, run in rows.sort_values("epoch").groupby("seed"):
                run = run.dropna(subset=["loss_main"] + cols)
                if len(run):
                    per_seed.append({**{f"first_{c}": run[c].iloc[0] for c in ["loss_main"] + cols},
                                     **{f"last_{c}": run[c].iloc[-1] for c in ["loss_main"] + cols},
                                     **{f"ratio_{c}": (run[c] / run["loss_main"]).median() for c in cols},
                                     "epochs": len(run)})
            if not per_seed:
                continue
            m = pd.DataFrame(per_seed).mean()
            for c in cols:
                ratios.setdefault(setting, {"loss_easy": [], "loss_adv": []})[c].append(m[f"ratio_{c}"])
            n, epochs = len(per_seed), sorted({r["epochs"] for r in per_seed})
            span = f"{epochs[0]} epoch{'s' if epochs[0] > 1 else ''}" if len(epochs) == 1 else \
                f"{epochs[0]}–{epochs[-1]} epochs"

            def trend(c):
                return f"{m[f'first_{c}']:.3g}" + (f" → {m[f'last_{c}']:.3g}" if epochs[-1] > 1 else "")
            slices = "; ".join(f"{'adversarial' if c == 'loss_adv' else 'easy'} slice {trend(c)} (median over "
                               f"epochs {100 * m[f'ratio_{c}']:.0f} % of the clean slice's)" for c in cols)
            parts.append(f"{label(recipe)} ({n} seed{'s' if n > 1 else ''}, {span}): clean slice "
                         f"{trend('loss_main')}; {slices}")
        if parts:
            lines.append(f"- {setting}: " + ". ".join(parts) + ".")
    if not lines:
        return ""
    head = ("**How hard each slice is** (training loss per slice, first → last epoch, mean over seeds; from the "
            "runs' histories):\n" + "\n".join(lines))

    def where(settings):
        return f"In {' and '.join(settings)}" if len(settings) < len(ratios) else (
            "In every setting" if len(ratios) > 1 else "Here")
    harder = [k for k, r in ratios.items() if r["loss_easy"] and not all(x < 1 for x in r["loss_easy"])]
    easier = [k for k, r in ratios.items() if r["loss_easy"] and all(x < 1 for x in r["loss_easy"])]
    apart = [k for k, r in ratios.items() if any(x < 0.5 for x in r["loss_easy"]) or any(x > 2 for x in r["loss_adv"])]
    out = [head]
    if harder:
        out.append(f"{where(harder)} the easy slice's loss is not below the clean slice's, though our reading of "
                   f"EBN makes its examples easier: the easy attack does not do what we read it to do.")
    if easier:
        out.append(f"{where(easier)} the easy slice's loss is below the clean slice's. That checks the "
                   f"implementation (the easy attack is built to lower the loss), not our reading of EBN.")
    if not apart:
        return "\n\n".join(out)  # the slices' losses are alike enough that no weighting confound is argued
    if loss_weighting == "mean":
        weights = ("with the mean over slices every term has the same weight (½ for AdvProp and EBN, ⅓ for "
                   "AdvProp+EBN), so a slice far below the clean one adds little to the step on the shared "
                   "weights and the clean term, at that weight, drives them. EBN's shared weights then likely "
                   "move by less than standard training's at the same learning rate, and an adversarial slice "
                   "above the clean one moves AdvProp's by more than standard training's")
    else:
        weights = ("with the sum over slices every term has weight 1, so a slice far below the clean one adds "
                   "little to the step on the shared weights: EBN's then likely move by about as much as "
                   "standard training's at the same learning rate, and an adversarial slice adds its own step, "
                   "so AdvProp's move by more")
    out.append(
        f"{where(apart)} the slices' losses differ enough that the loss weighting cannot give every recipe one "
        f"step size. A cross-entropy's gradient shrinks roughly with its loss once that is small, and {weights}. "
        "This holds mainly for the parameters BatchNorm does not make scale-invariant (its γ and β, the final "
        "linear layer); for a convolution followed by BatchNorm, the learning rate and the weight decay set the "
        "effective step more than the gradient's size does. It confounds EBN against standard training and "
        "against AdvProp (C4), and AdvProp against standard training (C5), whose clean-accuracy differences "
        "the verdicts judge with a margin of 0; no control for it (e.g. standard training at a lower learning "
        "rate) is in this build.")
    return "\n\n".join(out)


def cost_table(history: pd.DataFrame) -> pd.DataFrame:
    """Measured training cost per recipe, from the runs' histories: each run's mean seconds per epoch and
    training images per second, then per recipe the fastest and the slowest run. The runs were trained
    over several sessions, alone or beside other work, with one or two workers, so a recipe's range
    shows that load as much as the recipe; the benchmarks compare recipes on one quiet machine."""
    cols = [c for c in ("epoch_seconds", "images_per_s") if c in history]
    keys = ["dataset", "arch", "recipe", "share"]
    if not cols:
        return pd.DataFrame(columns=keys)
    per_run = history.groupby(keys + ["seed"], sort=False)[cols].mean().reset_index()
    t = per_run.groupby(keys, sort=False).agg(runs=("seed", "size"), **{
        f"{c}_{f}": (c, f) for c in cols for f in ("min", "max")}).reset_index()
    return t.round({c: 0 for c in t.columns if c.endswith(("_min", "_max"))})
