"""Notebook 04, claims C4 and C5: Easy Batch Normalization against AdvProp and standard training.

Standard training, PGD-AT, AdvProp, EBN and (where a profile lists it) AdvProp+EBN on each dataset
and architecture, over several seeds: clean, FGSM and PGD accuracy through the main branch (what the
papers deploy), the same through each auxiliary branch, and an ablation in which the EBN branches
share either their affine parameters or their statistics (Zhang et al. 2024).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional

import pandas as pd
from pydantic import BeforeValidator

from .._validate import check_choice, check_int
from ..attacks import format_eps, parse_eps
from ..data import DATASETS
from ..evaluate import summarize, test_subset
from ..models import ARCHS
from ..results import StudyResult
from ..runs import RunConfig
from ..train import LOSS_WEIGHTINGS, branches_for
from .common import EVALUATION_FILES, cached_evaluate, models_frame, setup, train_runs
from .params import (Attacks, Bool, CellType, ConfigError, Eps, Epsilons, Field, Int, Seeds, TrainingParams,
                     check_at_most_test_n, choices, model_validator, params_model)
# The chapter's tables and findings frames live in their own modules; their names stay importable from here.
from .ebn_findings import (COMPARED, ablation_frame, attack_name, branch_frame, category,  # noqa: F401
                           direction_words, effect, headline_frame, judged, mean_over_seeds, paired, ranking_frame,
                           scored, slice_loss_frame, slice_readings, versus_frame)
from .ebn_tables import (ablation_rows, ablation_table, branch_table, cost_table, main_table,  # noqa: F401
                         with_every_hue_level, with_full_clean)

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
        check_at_most_test_n("apgd_n", self.apgd_n, self.test_n)
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

