"""Notebook 01, claim C1: do adversarial images shift the inputs of BatchNorm layers, and does it matter?

For BatchNorm models trained normally (one per seed), on a fixed set of test images:

* **Shift, against controls.** At the input of every BN layer, the per-channel mean and variance
  of the batch, for the clean images, for FGSM and PGD versions (crafted against the model as
  deployed: population statistics) and for two *controls* of the same L-inf radius: random sign
  noise and uniform noise. Each is compared with the layer's population statistics, both the
  running (EMA) estimates and exact PreciseBN ones, so an inaccurate EMA is told apart from a
  real shift. The effect is the ratio of the adversarial distance to the noise distance at equal
  ε, with a bootstrap 95 % CI over the images (the same resampled images for every seed, whose
  ratios are averaged, with the seeds resampled too: a hierarchical bootstrap): an attack that
  merely moves pixels as far as noise does would give 1. The noise is matched to PGD in L-inf
  only; the L2 and L-inf sizes of every perturbation are reported beside (:func:`perturbation_sizes`).
* **Repair.** Scoring the PGD images with the statistics of their own batch instead of the
  population ones (the examples crafted with population statistics, i.e. transferred): how much
  of the accuracy PGD took comes back. This is the same evaluation as notebook 02's, so the two
  share one cache.

The per-image moments behind the bootstrap: :func:`rnorm.probes.norm_input_moments`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .._tensors import stable_seed
from ..attacks import format_eps, make_attack
from ..data import load, subset
from ..evaluate import precise_bn, summarize, test_subset
from ..norms import use_stats
from ..probes import moment_distances, norm_input_moments, record_norm_inputs, shift_distance
from ..results import StudyResult
from ..runs import RunConfig
from .common import cached_evaluate, models_frame, setup, train_runs
from .params import (Arch, Attacks, Dataset, Epsilons, Field, Int, Seeds, TrainingParams, choices, listof,
                     params_model)

CONTROLS = ("noise_sign", "noise_uniform")


@params_model
class ShiftParams(TrainingParams):
    """Parameters of ``01_distribution_shift``."""

    NOTEBOOK = "01_distribution_shift"
    dataset: Dataset = Field("fashion_mnist", description="training and test data: fashion_mnist, cifar10 or "
                                                          "cifar10_jpeg (lossy JPEG copy)")
    arch: Arch = Field("resnet18", description="network: resnet18, resnet50 or resnet20 (CIFAR stem)")
    seeds: Seeds = Field((0,), min_length=1, description="training seeds, one BN model per seed")
    attacks: Attacks = Field(("fgsm", "pgd"), min_length=1, description="attacks that make the adversarial "
                                                                               "batches: fgsm, pgd")
    controls: choices(CONTROLS) = Field(CONTROLS, min_length=1, description="random perturbations of the "
                                                "same radius: noise_sign, noise_uniform")
    epsilons: Epsilons = Field(("1/255", "8/255"), min_length=1, description="L-inf radii in pixel units (write "
                                                                             "8/255); the ledger judges at 1/255")
    pgd_steps: Int = Field(20, ge=1, description="PGD iterations (step 2.5 eps / steps, random start)")
    probe_n: Int = Field(256, ge=2, description="test images whose BN inputs are probed (the same for every seed)")
    precise_n: Int = Field(1000, ge=2, description="training images PreciseBN averages over")
    test_n: Int = Field(128, ge=1, description="test images of the repair test (shared with notebook 02's epsilon "
                                               "sweep)")
    eval_batch_size: Int = Field(64, ge=2, description="inference batch of the repair test (images)")
    n_boot: Int = Field(1000, ge=100, description="bootstrap resamples of the probe images for the confidence "
                                                  "intervals")
    show_layers: listof(Int) = Field((0, 3, -1), description="BN layers drawn channel by channel (negative: from "
                                                             "the last)")


def runs(p: ShiftParams) -> list[RunConfig]:
    """The training runs the notebook needs: one BN model per seed, trained normally."""
    return [p.run_config(dataset=p.dataset, arch=p.arch, norm="bn", recipe="standard", seed=s) for s in p.seeds]


def _tag(attack: str, eps: float) -> str:
    return "clean" if attack == "clean" else f"{attack} {format_eps(eps)}"


def repair_grid(p) -> dict:
    """The evaluation behind the repair test and notebook 02's ε sweep (one cache for both): clean and
    PGD at every ε, population and batch statistics, white-box and transferred gradients, per image."""
    return dict(attacks=("clean", "pgd"), eps=p.epsilons, stats=("population", "batch"),
                batch_sizes=(p.eval_batch_size,), gradients=("white-box", "transfer"),
                attack_params={"pgd": {"steps": p.pgd_steps}}, per_image=True)


def run(p: ShiftParams) -> StudyResult:
    """Train (or reuse) the models, probe their BN inputs, bootstrap the shift ratios, test the repair."""
    device = setup(p)
    trained = train_runs(runs(p), p)
    x, y = test_subset(p.dataset, p.probe_n, seed=0)  # the same probe images for every seed: paired
    x, y = x.to(device), y.to(device)
    tx, ty = test_subset(p.dataset, p.test_n, seed=0)
    train_x, train_y = load(p.dataset, "train")
    train_x, train_y = subset(train_x, train_y, min(p.precise_n, len(train_y)), seed=0)
    records, distances, accuracies, repair, dist, sizes = [], [], [], [], {}, []
    weights = bootstrap_weights(len(y), p.n_boot)
    for cfg, r in trained.items():
        model = r.model(device=device).eval()
        use_stats(model, "population")
        batches = probe_batches(model, x, y, p, seed=cfg.seed)
        sizes.append(perturbation_sizes(batches).assign(seed=cfg.seed))
        with torch.no_grad():
            accuracies.append(pd.DataFrame([{"attack": a, "eps": e, "seed": cfg.seed, "n": len(y),
                                             "accuracy": float((model(v).argmax(1) == y).float().mean())}
                                            for (a, e), v in batches.items()]))
        precise = precise_bn(model, train_x, train_y, batch_size=p.train_batch_size, device=device)
        for reference, m in (("ema", model), ("precise", precise)):
            for k, v in batches.items():  # distances of every bootstrap resample; the moments are dropped
                dist[(cfg.seed, reference, k)] = moment_distances(norm_input_moments(m, v), weights)
            if cfg.seed == p.seeds[0]:  # the per-layer figures show the first seed
                for (attack, eps), batch in batches.items():
                    rec = record_norm_inputs(m, batch, tag=_tag(attack, eps)).assign(
                        reference=reference, attack=attack, eps=eps)
                    records.append(rec)
                    distances.append(shift_distance(rec).assign(reference=reference, attack=attack, eps=eps))
        frame = cached_evaluate(r, model, tx, ty, device=p.device, seed=cfg.seed, progress=p.progress, **repair_grid(p))
        repair.append(frame.assign(seed=cfg.seed, norm="bn"))
    effects, ratios = shift_effects(dist, p.seeds, list(batches))
    effects["n_images"] = len(y)
    models = models_frame(trained, device)
    accuracy = pd.concat(repair, ignore_index=True)
    probe_accuracy = pd.concat(accuracies, ignore_index=True)
    history = pd.concat([r.history.assign(seed=c.seed) for c, r in trained.items()], ignore_index=True)
    summary = summarize(ratios, ["reference", "statistic", "attack", "control", "eps"], value="ratio")
    return StudyResult(p.NOTEBOOK, p, {"bn_input_stats": pd.concat(records, ignore_index=True),
                                       "shift_distance": pd.concat(distances, ignore_index=True),
                                       "shift_effects": effects, "shift_ratios": ratios, "accuracy": accuracy,
                                       "probe_accuracy": probe_accuracy, "models": models, "history": history,
                                       "perturbation_sizes": pd.concat(sizes, ignore_index=True)},
                       summary, {"models": models.to_dict(orient="records")}, list(trained.values()), str(device))


def probe_batches(model, x, y, p: ShiftParams, seed: int) -> dict:
    """``{(attack, eps): images}``: the clean batch, each attack and each noise control at each ε.

    Each is seeded from (seed, attack, ε), so a control's noise does not depend on the order."""
    out = {("clean", 0.0): x}
    for name in tuple(p.attacks) + tuple(p.controls):
        for eps in p.epsilons:
            params = {"steps": p.pgd_steps} if name == "pgd" else {}
            torch.manual_seed(stable_seed("probe", seed, name, repr(eps)))
            out[(name, eps)] = make_attack(name, model, eps, **params)(x, y)
    return out


def perturbation_sizes(batches: dict) -> pd.DataFrame:
    """Per (attack, ε) of :func:`probe_batches`: the mean L2 and the largest L-inf norm of the
    perturbations (pixel scale, per image), against the clean batch. Sign noise sits at the corner
    of the L-inf ball (L2 = ε sqrt(d), the largest an L-inf perturbation of ε can have), so an
    attack that shifts BN inputs further with a *smaller* L2 does so by direction, not by size."""
    clean = batches[("clean", 0.0)]
    rows = []
    for (attack, eps), v in batches.items():
        if attack == "clean":
            continue
        d = (v - clean).flatten(1).double()
        rows.append({"attack": attack, "eps": eps, "l2_mean": float(d.norm(dim=1).mean()),
                     "linf_max": float(d.abs().max()), "dims": int(d.shape[1])})
    return pd.DataFrame(rows)


def bootstrap_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot + 1) x n weights: each row a bootstrap resample of n images as counts / n; the last row
    the observed sample (1/n each)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot + 1, n))
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0 / n)
    weights[-1] = 1.0 / n
    return weights


def basic_interval(estimate: float, boots: np.ndarray) -> tuple[float, float, float]:
    """Bias-corrected estimate ``2 t - mean(t*)`` and the basic (reverse-percentile) 95 % bootstrap
    interval ``[2 t - q97.5, 2 t - q2.5]``.

    Not the plain percentile interval: a distance measured against the population statistics has a
    noise floor (a finite batch's mean is never exactly the population's), and resampling the
    images adds to it, most for the batches closest to the population -- so resampled ratios
    sit systematically below the observed one (measured on the CIFAR-10 ResNet-20: the percentile
    interval of a 8x ratio ended below 8). Both the estimate and the interval reflect that shift
    back, which corrects a bias of this kind to first order; the uncorrected ratio is kept beside.
    """
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(2 * estimate - boots.mean()), float(2 * estimate - hi), float(2 * estimate - lo)


def shift_effects(dist: dict, seeds, batches, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ratio of each perturbed batch's distance to a control's, with a bootstrap CI over images.

    ``dist[(seed, reference, (attack, eps))]`` holds :func:`rnorm.probes.moment_distances` over
    the rows of :func:`bootstrap_weights` (the same resamples for every seed and batch, so the
    comparison stays paired; the last row is the observed sample). For every reference,
    statistic (mean, var), perturbed batch (attack, ε) and control (the clean batch, and each
    noise control at the same ε): the ratio of the distances, averaged over seeds; CI: the basic
    bootstrap interval (:func:`basic_interval`) of a hierarchical bootstrap: each image resample
    also resamples the seeds with replacement (``seed`` seeds those draws), so the CI carries the
    variance between trained models as well as the images'. Returns ``(effects, per_seed)``: effects has
    reference, statistic, attack, eps, control, ratio (bias-corrected), low, high, raw_ratio (the
    observed ratio), n_images, n_models, paired_over, adv_distance, control_distance; per_seed one
    observed ratio per seed.
    """
    seeds = list(seeds)
    refs = sorted({ref for (_, ref, _) in dist})
    n_boot = len(next(iter(dist.values()))["mean"]) - 1
    seed_draws = np.random.default_rng(seed).integers(0, len(seeds), size=(n_boot, len(seeds)))

    rows, per_seed = [], []
    for ref in refs:
        for stat in ("mean", "var"):
            for (attack, eps) in batches:
                if attack == "clean":
                    continue
                controls = [("clean", 0.0)] + [(c, eps) for c in CONTROLS if (c, eps) in batches and c != attack]
                for control in controls:
                    r = np.stack([dist[(s, ref, (attack, eps))][stat] / dist[(s, ref, control)][stat] for s in seeds])
                    mean = r.mean(axis=0)
                    # hierarchical: each image resample (a column) also draws the seeds with replacement
                    boots = np.take_along_axis(r[:, :-1].T, seed_draws, axis=1).mean(axis=1)
                    corrected, low, high = basic_interval(mean[-1], boots)
                    rows.append({"reference": ref, "statistic": stat, "attack": attack, "eps": eps,
                                 "control": control[0], "ratio": corrected, "low": low, "raw_ratio": float(mean[-1]),
                                 "high": high, "n_models": len(seeds),
                                 "paired_over": "images" if len(seeds) == 1 else f"images x {len(seeds)} models",
                                 "adv_distance": float(np.mean([dist[(s, ref, (attack, eps))][stat][-1] for s in seeds])),
                                 "control_distance": float(np.mean([dist[(s, ref, control)][stat][-1] for s in seeds]))})
                    per_seed += [{"reference": ref, "statistic": stat, "attack": attack, "eps": eps,
                                  "control": control[0], "seed": s, "ratio": float(r[i, -1])}
                                 for i, s in enumerate(seeds)]
    return pd.DataFrame(rows), pd.DataFrame(per_seed)


def shown_layers(record: pd.DataFrame, show_layers) -> list[int]:
    """The layer indices to draw: ``show_layers`` with negative indices counted from the end,
    out-of-range ones dropped, sorted and without repeats."""
    n = record["layer_index"].nunique()
    return sorted({(i if i >= 0 else n + i) for i in show_layers if -n <= i < n})


def judged(effects: pd.DataFrame, eps: float, control: str = "noise_sign", reference: str = "precise") -> pd.DataFrame:
    """The PGD rows of ``effects`` at ``eps`` against ``control`` and ``reference`` (one per statistic)."""
    sub = effects[(effects["attack"] == "pgd") & (effects["control"] == control) & (effects["reference"] == reference)]
    return sub[(sub["eps"] - eps).abs() < 1e-9]
