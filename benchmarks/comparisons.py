"""Benchmarks 1-4: rnorm against a reference that computes the same thing -- torchvision's ResNet-18
with plain BatchNorm, the plain-BN network for the multi-branch split, the earlier RobustNorm
implementation, torchattacks' PGD."""
from __future__ import annotations

import copy

import torch

from . import reference, timing
from .common import (accuracy, entry, fwd_bwd, grads, median_times, random_batch, sgd_step, throughput_ratio,
                     time_ratios, trained_model)
from .settings import Settings


# ---------------------------------------------------------------------------------- 1
def train_step_vs_torchvision(s: Settings, ctx: dict) -> dict:
    """rnorm resnet18(norm="bn") training step vs the same network from plain torchvision."""
    from rnorm.models import resnet18

    torch.manual_seed(0)
    ours = resnet18(width=s.width, norm="bn")
    ref = reference.torchvision_resnet18(width=s.width)
    reference.copy_rnorm_weights(ours, ref)
    x, y = random_batch(s.batch, s)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        same = float((ours(x) - ref(x)).abs().max())
    timed = timing.interleave({"rnorm": sgd_step(ours, x, y), "torchvision": sgd_step(ref, x, y)},
                              rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    rr = throughput_ratio(timed, "rnorm", "torchvision")  # t_ref / t_ours = throughput ours / ref
    r = rr["ratio"]
    t = median_times(timed)
    clock = "wall_seconds" if r["clock"] == "wall" else "cpu_seconds"
    return entry(r["median"], "throughput ratio rnorm/torchvision", ">= 0.95", r["median"] >= 0.95, **rr,
                  images_per_s={k: s.batch / v for k, v in t[clock].items()}, images_per_s_clock=r["clock"],
                  max_abs_logit_diff_same_weights=same, batch=s.batch, precision="fp32", **t)


# ---------------------------------------------------------------------------------- 2
def multibn_split_vs_bn(s: Settings, ctx: dict) -> dict:
    """multibn forward+backward over [clean; adv; easy] routed to three branches vs plain BN."""
    from rnorm.models import resnet18

    torch.manual_seed(0)
    multi = resnet18(width=s.width, norm="multibn")  # branches adv, easy
    plain = reference.torchvision_resnet18(width=s.width)
    x, y = random_batch(3 * s.slice_batch, s, seed=1)
    timed = timing.interleave({
        "multibn_split": fwd_bwd(multi, x, y, branch=["main", "adv", "easy"]),
        "plain_bn": fwd_bwd(plain, x, y),
    }, rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    rr = throughput_ratio(timed, "multibn_split", "plain_bn")
    r = rr["ratio"]
    return entry(r["median"], "throughput ratio multibn-split/plain-BN", ">= 0.90", r["median"] >= 0.90, **rr,
                  batch=3 * s.slice_batch, route=["main", "adv", "easy"], **median_times(timed))


# ---------------------------------------------------------------------------------- 3
def robustnorm_vs_bn(s: Settings, ctx: dict) -> dict:
    """robustnorm training step vs bn, with the earlier RobustNorm implementation alongside."""
    from rnorm.models import resnet18

    torch.manual_seed(0)
    bn = resnet18(width=s.width, norm="bn")
    rn = resnet18(width=s.width, norm="robustnorm")
    rn_before = copy.deepcopy(rn)
    x, y = random_batch(s.batch, s, seed=2)
    step_before = sgd_step(rn_before, x, y)

    def before():
        with reference.robustnorm_before():
            step_before()
    timed = timing.interleave({"bn": sgd_step(bn, x, y), "robustnorm": sgd_step(rn, x, y),
                               "robustnorm_before": before},
                              rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    after = time_ratios(timed, "robustnorm", "bn")
    prev = time_ratios(timed, "robustnorm_before", "bn")
    gain = time_ratios(timed, "robustnorm_before", "robustnorm")
    # The two implementations compute the same thing: one step from the same weights.
    a, b = copy.deepcopy(rn), copy.deepcopy(rn)
    ga = grads(a, x, y)
    with reference.robustnorm_before():
        gb = grads(b, x, y)
    diff = max(float((u - v).abs().max() / (v.abs().max() + 1e-12)) for u, v in zip(ga, gb))
    # Chapter 03's networks: ResNet-20 (width s.width) with RobustNorm at the two powers the chapter trains.
    from rnorm.models import resnet20
    nets20 = {"bn": resnet20(width=s.width, norm="bn")}
    nets20.update({f"robustnorm_p{q:g}": resnet20(width=s.width, norm="robustnorm", p=q) for q in (0.2, 1.0)})
    timed20 = timing.interleave({k: sgd_step(m, x, y) for k, m in nets20.items()},
                                rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    resnet20_ratios = {k: time_ratios(timed20, k, "bn")["ratio"] for k in nets20 if k != "bn"}
    r = after["ratio"]
    return entry(r["median"], "time ratio robustnorm/bn", "<= 1.3", r["median"] <= 1.3,
                  resnet20_time_ratio=resnet20_ratios, resnet20_times=median_times(timed20),
                  time_ratio=r, time_ratio_wall=after["ratio_wall"], time_ratio_cpu=after["ratio_cpu"],
                  before_change={"time_ratio": prev["ratio"], "time_ratio_wall": prev["ratio_wall"],
                                 "time_ratio_cpu": prev["ratio_cpu"], "implementation":
                                                   "torch.aminmax on x.transpose(0,1).reshape(C,-1); "
                                                   "affine map and gradient by autograd"},
                  speedup_vs_before=gain["ratio"], after_change={"implementation":
                                                        "two-stage amin/amax, F.batch_norm inference form, "
                                                        "hand-written backward (rnorm.norms._RobustNormFn)"},
                  max_rel_grad_diff_before_vs_after=diff, batch=s.batch, **median_times(timed))



# ---------------------------------------------------------------------------------- 4
def pgd_wrapper_vs_torchattacks(s: Settings, ctx: dict) -> dict:
    """rnorm.attacks.make_attack("pgd") vs torchattacks.PGD on the same model, batch and seed."""
    import torchattacks

    from rnorm.attacks import make_attack

    model = trained_model(s, ctx)
    x, y = ctx["test"][0][: s.pgd_images], ctx["test"][1][: s.pgd_images]
    eps, alpha = 8 / 255, 2 / 255
    ours = make_attack("pgd", model, eps, steps=s.pgd_steps, alpha=alpha, random_start=True)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=s.pgd_steps, random_start=True)
    out = {}

    def run(name, atk):
        def f():
            torch.manual_seed(1234)
            out[name] = atk(x, y)
        return f
    timed = timing.interleave({"make_attack": run("make_attack", ours), "torchattacks": run("torchattacks", theirs)},
                              rounds=s.pgd_rounds, warmup=1, reps=1)
    rr = throughput_ratio(timed, "make_attack", "torchattacks")
    r = rr["ratio"]
    model.eval()
    acc = {k: accuracy(model, v, y, s.eval_batch) for k, v in out.items()}
    same_images = float((out["make_attack"] - out["torchattacks"]).abs().max())
    tol = max(0.02, (r["q3"] - r["q1"]) / 2)
    met = r["median"] >= 1.0 - tol and acc["make_attack"] == acc["torchattacks"]
    return entry(r["median"], "throughput ratio make_attack/torchattacks",
                  ">= 1.0 within noise, same adversarial accuracy", met,
                  **rr, noise_tolerance=tol, adversarial_accuracy_pct=acc, max_abs_diff_adv_images=same_images,
                  eps=eps, alpha=alpha, steps=s.pgd_steps, images=int(y.shape[0]), **median_times(timed))
