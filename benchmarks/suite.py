"""The benchmarks. Each function takes the :class:`Settings` and a shared context dict and
returns one JSON-ready entry with a numeric ``value`` (the headline number), its ``unit``, the
``target`` (text, or None for numbers that are reported, not judged) and ``met``.

Ratios are throughput ratios (>1: the first-named side is faster) unless the key says
``time_ratio``; each is the median over rounds of the per-round ratio of interleaved timings
(:mod:`benchmarks.timing`), on process CPU time when torch runs one thread and on wall time
otherwise (``clock``); ``*_wall`` / ``*_cpu`` keys hold both.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import reference, timing, workload

RECIPE_NAMES = ("standard", "pgd_at", "advprop", "ebn", "advprop_ebn")


@dataclass
class Settings:
    """Sizes and repetitions; :meth:`quick` gives the tiny version."""

    mode: str = "full"
    width: int = 16
    batch: int = 128              # benchmarks 1 and 3 (32x32x3 random images)
    slice_batch: int = 64         # benchmark 2: a [clean; adv; easy] batch of 3 x this
    image_size: int = 32
    warmup: int = 2
    rounds: int = 12              # interleaved rounds of benchmarks 1-3
    reps: int = 3                 # training steps per timed measurement
    pgd_images: int = 256
    pgd_steps: int = 10
    pgd_rounds: int = 6
    epoch_images: int = 1024      # benchmark 5 (one epoch per recipe and precision)
    recipe_batch: int = 128
    train_steps: int = 3
    recipe_rounds: int = 2
    mm_n: int = 2048
    mm_reps: int = 8
    conv_peak_shape: tuple = (8, 256)   # batch, channels of the 3x3 convolution peak (32x32)
    share_images: int = 2048
    share_rounds: int = 3
    sizes: tuple = (1024, 2048, 4096, 8192)
    size_rounds: int = 2
    proc_images: int = 1024
    proc_rounds: int = 2
    thread_rounds: int = 4
    eval_train_images: int = 5000
    eval_test_images: int = 1000
    eval_eps: tuple = (2 / 255, 8 / 255)
    eval_steps: int = 10
    eval_batch: int = 250
    isa_images: int = 1024        # precision_auto_isa_capped: images per fp32 / auto epoch
    isa_bf16_images: int = 256    # ... per bf16 epoch (emulated under the cap: about 10x slower)
    isa_rounds: int = 3

    @classmethod
    def quick(cls) -> "Settings":
        return cls(mode="quick", width=8, batch=32, slice_batch=16, warmup=1, rounds=2, reps=1,
                   pgd_images=32, pgd_steps=2, pgd_rounds=2, epoch_images=64, recipe_batch=32, train_steps=1,
                   recipe_rounds=1, mm_n=512, mm_reps=2, conv_peak_shape=(2, 64), share_images=128, share_rounds=1,
                   sizes=(64, 128, 192, 256), size_rounds=1, proc_images=32, proc_rounds=1, thread_rounds=1,
                   eval_train_images=256, eval_test_images=64, eval_steps=2, eval_batch=32,
                   isa_images=64, isa_bf16_images=32, isa_rounds=1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        d["eval_eps"] = [float(e) for e in self.eval_eps]
        return d


def _entry(value, unit, target, met, **details) -> dict:
    return {"value": float(value), "unit": unit, "target": target, "met": met, **details}


def _loss(model: nn.Module, x, y, branch=None):
    """Cross-entropy of ``model`` on ``(x, y)``, routed to ``branch`` if given."""
    if branch is None:
        return F.cross_entropy(model(x), y)
    from rnorm.norms import route
    with route(model, branch):
        return F.cross_entropy(model(x), y)


def _sgd_step(model: nn.Module, x, y, branch=None):
    """A closure: one SGD step of ``model`` on ``(x, y)`` (routed to ``branch`` if given)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        _loss(model, x, y, branch).backward()
        opt.step()
    return step


def _fwd_bwd(model: nn.Module, x, y, branch=None):
    """A closure: forward, loss and backward (no optimizer step), routed to ``branch`` if given."""
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        _loss(model, x, y, branch).backward()
    return run


def _random_batch(n, s: Settings, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, s.image_size, s.image_size, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def _util(timed) -> float:
    return timing.median(u for us in timed["cpu_util"].values() for u in us)


def _ratios(timed, num, den) -> dict:
    """Entry fields for the time ratio ``num / den``: headline (lead clock) and both clocks."""
    c = timing.compare(timed, num, den)
    return {"ratio": c["headline"], "ratio_wall": c["wall"], "ratio_cpu": c["cpu"]}


def _throughput(timed, fast, slow) -> dict:
    """Entry fields for the throughput ratio ``fast / slow``, i.e. the time ratio ``slow / fast``."""
    return _ratios(timed, slow, fast)


def _times(timed) -> dict:
    return {"wall_seconds": {k: timing.median(v) for k, v in timed["seconds"].items()},
            "cpu_seconds": {k: timing.median(v) for k, v in timed["cpu_seconds"].items()},
            "cpu_util": _util(timed)}


# ---------------------------------------------------------------------------------- 1
def train_step_vs_torchvision(s: Settings, ctx: dict) -> dict:
    """rnorm resnet18(norm="bn") training step vs the same network from plain torchvision."""
    from rnorm.models import resnet18

    torch.manual_seed(0)
    ours = resnet18(width=s.width, norm="bn")
    ref = reference.torchvision_resnet18(width=s.width)
    reference.copy_rnorm_weights(ours, ref)
    x, y = _random_batch(s.batch, s)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        same = float((ours(x) - ref(x)).abs().max())
    timed = timing.interleave({"rnorm": _sgd_step(ours, x, y), "torchvision": _sgd_step(ref, x, y)},
                              rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    rr = _throughput(timed, "rnorm", "torchvision")  # t_ref / t_ours = throughput ours / ref
    r = rr["ratio"]
    t = _times(timed)
    clock = "wall_seconds" if r["clock"] == "wall" else "cpu_seconds"
    return _entry(r["median"], "throughput ratio rnorm/torchvision", ">= 0.95", r["median"] >= 0.95, **rr,
                  images_per_s={k: s.batch / v for k, v in t[clock].items()}, images_per_s_clock=r["clock"],
                  max_abs_logit_diff_same_weights=same, batch=s.batch, precision="fp32", **t)


# ---------------------------------------------------------------------------------- 2
def multibn_split_vs_bn(s: Settings, ctx: dict) -> dict:
    """multibn forward+backward over [clean; adv; easy] routed to three branches vs plain BN."""
    from rnorm.models import resnet18

    torch.manual_seed(0)
    multi = resnet18(width=s.width, norm="multibn")  # branches adv, easy
    plain = reference.torchvision_resnet18(width=s.width)
    x, y = _random_batch(3 * s.slice_batch, s, seed=1)
    timed = timing.interleave({
        "multibn_split": _fwd_bwd(multi, x, y, branch=["main", "adv", "easy"]),
        "plain_bn": _fwd_bwd(plain, x, y),
    }, rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    rr = _throughput(timed, "multibn_split", "plain_bn")
    r = rr["ratio"]
    return _entry(r["median"], "throughput ratio multibn-split/plain-BN", ">= 0.90", r["median"] >= 0.90, **rr,
                  batch=3 * s.slice_batch, route=["main", "adv", "easy"], **_times(timed))


# ---------------------------------------------------------------------------------- 3
def robustnorm_vs_bn(s: Settings, ctx: dict) -> dict:
    """robustnorm training step vs bn, with the earlier RobustNorm implementation alongside."""
    from rnorm.models import resnet18

    torch.manual_seed(0)
    bn = resnet18(width=s.width, norm="bn")
    rn = resnet18(width=s.width, norm="robustnorm")
    rn_before = copy.deepcopy(rn)
    x, y = _random_batch(s.batch, s, seed=2)
    step_before = _sgd_step(rn_before, x, y)

    def before():
        with reference.robustnorm_before():
            step_before()
    timed = timing.interleave({"bn": _sgd_step(bn, x, y), "robustnorm": _sgd_step(rn, x, y),
                               "robustnorm_before": before},
                              rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    after = _ratios(timed, "robustnorm", "bn")
    prev = _ratios(timed, "robustnorm_before", "bn")
    gain = _ratios(timed, "robustnorm_before", "robustnorm")
    # The two implementations compute the same thing: one step from the same weights.
    a, b = copy.deepcopy(rn), copy.deepcopy(rn)
    ga = _grads(a, x, y)
    with reference.robustnorm_before():
        gb = _grads(b, x, y)
    diff = max(float((u - v).abs().max() / (v.abs().max() + 1e-12)) for u, v in zip(ga, gb))
    # Chapter 03's networks: ResNet-20 (width s.width) with RobustNorm at the two powers the chapter trains.
    from rnorm.models import resnet20
    nets20 = {"bn": resnet20(width=s.width, norm="bn")}
    nets20.update({f"robustnorm_p{q:g}": resnet20(width=s.width, norm="robustnorm", p=q) for q in (0.2, 1.0)})
    timed20 = timing.interleave({k: _sgd_step(m, x, y) for k, m in nets20.items()},
                                rounds=s.rounds, warmup=s.warmup, reps=s.reps)
    resnet20_ratios = {k: _ratios(timed20, k, "bn")["ratio"] for k in nets20 if k != "bn"}
    r = after["ratio"]
    return _entry(r["median"], "time ratio robustnorm/bn", "<= 1.3", r["median"] <= 1.3,
                  resnet20_time_ratio=resnet20_ratios, resnet20_times=_times(timed20),
                  time_ratio=r, time_ratio_wall=after["ratio_wall"], time_ratio_cpu=after["ratio_cpu"],
                  before_change={"time_ratio": prev["ratio"], "time_ratio_wall": prev["ratio_wall"],
                                 "time_ratio_cpu": prev["ratio_cpu"], "implementation":
                                                   "torch.aminmax on x.transpose(0,1).reshape(C,-1); "
                                                   "affine map and gradient by autograd"},
                  speedup_vs_before=gain["ratio"], after_change={"implementation":
                                                        "two-stage amin/amax, F.batch_norm inference form, "
                                                        "hand-written backward (rnorm.norms._RobustNormFn)"},
                  max_rel_grad_diff_before_vs_after=diff, batch=s.batch, **_times(timed))


def _grads(model, x, y):
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------------------------- shared model
def trained_model(s: Settings, ctx: dict):
    """resnet18 w16 (bn) trained one epoch on ``eval_train_images`` FashionMNIST images (cached in ctx)."""
    if "model" not in ctx:
        x, y, source = workload.images("train", s.eval_train_images)
        cfg = workload.config(width=s.width, norm="bn", recipe="standard", epochs=1, subset=s.eval_train_images)
        t0 = time.perf_counter()
        row, model = workload.train_epoch(cfg, x, y)
        ctx["model"] = model.eval()
        ctx["model_info"] = {"config": cfg.to_dict(), "train_seconds": time.perf_counter() - t0,
                             "train_acc": row["acc_main"], "data": source}
        tx, ty, _ = workload.images("test", s.eval_test_images)
        ctx["test"] = (tx.float().div_(255.0), ty)
    return ctx["model"]


def _accuracy(predict, x, y, batch: int) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, y.shape[0], batch):
            correct += int((predict(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / y.shape[0]


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
    rr = _throughput(timed, "make_attack", "torchattacks")
    r = rr["ratio"]
    model.eval()
    acc = {k: _accuracy(model, v, y, s.eval_batch) for k, v in out.items()}
    same_images = float((out["make_attack"] - out["torchattacks"]).abs().max())
    tol = max(0.02, (r["q3"] - r["q1"]) / 2)
    met = r["median"] >= 1.0 - tol and acc["make_attack"] == acc["torchattacks"]
    return _entry(r["median"], "throughput ratio make_attack/torchattacks",
                  ">= 1.0 within noise, same adversarial accuracy", met,
                  **rr, noise_tolerance=tol, adversarial_accuracy_pct=acc, max_abs_diff_adv_images=same_images,
                  eps=eps, alpha=alpha, steps=s.pgd_steps, images=int(y.shape[0]), **_times(timed))


# ---------------------------------------------------------------------------------- bf16 eval
class _Bf16(nn.Module):
    """Runs the wrapped model under bf16 autocast on channels-last inputs; returns fp32 logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


def bf16_eval_attack(s: Settings, ctx: dict) -> dict:
    """Robust accuracy under PGD with the model in bf16 (autocast, channels-last) vs fp32."""
    from rnorm.attacks import make_attack, format_eps

    model = trained_model(s, ctx)
    x, y = ctx["test"]
    fp32 = model.eval()
    bf16 = _Bf16(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    rows = []
    for eps in s.eval_eps:
        row = {"eps": format_eps(eps)}
        for name, m in (("fp32", fp32), ("bf16", bf16)):
            atk = make_attack("pgd", m, eps, steps=s.eval_steps)
            t0 = time.perf_counter()
            correct = 0
            for i in range(0, y.shape[0], s.eval_batch):
                torch.manual_seed(1000 + i)
                adv = atk(x[i:i + s.eval_batch], y[i:i + s.eval_batch])
                with torch.no_grad():
                    correct += int((m(adv).argmax(1) == y[i:i + s.eval_batch]).sum())
            row[f"robust_acc_{name}_pct"] = 100.0 * correct / y.shape[0]
            row[f"seconds_{name}"] = time.perf_counter() - t0
        row["diff_points"] = row["robust_acc_bf16_pct"] - row["robust_acc_fp32_pct"]
        rows.append(row)
    clean = {"fp32": _accuracy(fp32, x, y, s.eval_batch), "bf16": _accuracy(bf16, x, y, s.eval_batch)}
    worst = max(abs(r["diff_points"]) for r in rows)
    return _entry(worst, "max |robust acc bf16 - fp32| (points)", "<= 0.5 points", worst <= 0.5,
                  per_eps=rows, clean_acc_pct=clean, attack=f"PGD-{s.eval_steps}, alpha 2.5*eps/steps, random start",
                  test_images=int(y.shape[0]), model=ctx["model_info"],
                  robust_acc_fp32_pct=rows[-1]["robust_acc_fp32_pct"], robust_acc_bf16_pct=rows[-1]["robust_acc_bf16_pct"],
                  headline_eps=rows[-1]["eps"])


# ---------------------------------------------------------------------------------- 5
def matmul_peak(s: Settings, ctx: dict) -> dict:
    """fp32 and bf16 GFLOP/s of a large torch.mm, and of a large 3x3 convolution (oneDNN).

    Best of interleaved repetitions. The convolution is there because torch.mm in fp32 goes to
    MKL, which may not use AVX-512 on every CPU (it does not on AMD ones), while the model's
    convolutions run in oneDNN; the higher of the two is the ``best`` peak.
    """
    n = s.mm_n
    g = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    cb, cc = s.conv_peak_shape
    x32 = torch.randn(cb, cc, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    w32 = torch.randn(cc, cc, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    x16, w16 = x32.bfloat16(), w32.bfloat16()
    timed = timing.interleave({"mm_fp32": lambda: torch.mm(a32, b32), "mm_bf16": lambda: torch.mm(a16, b16),
                               "conv_fp32": lambda: F.conv2d(x32, w32, padding=1),
                               "conv_bf16": lambda: F.conv2d(x16, w16, padding=1)},
                              rounds=s.mm_reps, warmup=1, reps=1)
    flops = {"mm": 2.0 * n ** 3, "conv": 2.0 * cb * cc * cc * 9 * 32 * 32}
    best = {k: flops[k.split("_")[0]] / min(v) / 1e9 for k, v in timed["seconds"].items()}
    med = {k: flops[k.split("_")[0]] / timing.median(v) / 1e9 for k, v in timed["seconds"].items()}
    peak = {p: max(best[f"mm_{p}"], best[f"conv_{p}"]) for p in ("fp32", "bf16")}
    mm = {p: best[f"mm_{p}"] for p in ("fp32", "bf16")}
    ctx["peak"], ctx["mm_peak"] = peak, mm
    return _entry(mm["fp32"], "GFLOP/s torch.mm fp32 (best)", None, None, peak_gflops=peak, mm_peak_gflops=mm,
                  best_gflops=best, median_gflops=med, mm_n=n, conv_shape=[cb, cc, 32, 32, "3x3"],
                  threads=torch.get_num_threads())


class _FlopCount:
    """Total FLOPs of the matmuls and convolutions run inside the block (forward and backward).

    torch's formulas (``torch.utils.flop_counter.flop_registry``, what ``FlopCounterMode``
    uses) in a bare dispatch mode: ``FlopCounterMode`` itself also tracks modules with hooks
    that ``torch.autograd.grad`` (inside torchattacks) refuses.
    """

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self
        self.total = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                f = flop_registry.get(func._overloadpacket)
                if f is not None:
                    counter.total += int(f(*args, **kwargs, out_val=out))
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def _flops_per_step(cfg, x, y) -> float:
    from rnorm import train as T

    model = workload.build(cfg)
    opt = T.make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    xb, yb = workload.first_batch(cfg, x, y)
    with _FlopCount() as fc:
        T.train_step(model, opt, xb, yb, cfg.recipe, cfg)
    return float(fc.total)


def recipe_throughput(s: Settings, ctx: dict) -> dict:
    """One epoch per recipe in fp32 and in bf16+channels-last; GFLOP/s as a share of the matmul peak."""
    if "peak" not in ctx:
        matmul_peak(s, ctx)
    peak, mm_peak = ctx["peak"], ctx["mm_peak"]
    x, y, source = workload.images("train", s.epoch_images)
    precisions = {"fp32": dict(precision="fp32", channels_last=False),
                  "bf16_cl": dict(precision="bf16", channels_last=True)}
    cfgs = {(r, p): workload.config(width=s.width, recipe=r, batch_size=s.recipe_batch, train_steps=s.train_steps,
                                     subset=s.epoch_images, **kw)
            for r in RECIPE_NAMES for p, kw in precisions.items()}
    flops = {r: _flops_per_step(cfgs[(r, "fp32")], x, y) / s.recipe_batch for r in RECIPE_NAMES}
    for cfg in cfgs.values():
        workload.warm(cfg, x, y)
    ips = {k: [] for k in cfgs}
    util = {k: [] for k in cfgs}
    for rnd in range(s.recipe_rounds):
        for r in RECIPE_NAMES:
            for p in (precisions if rnd % 2 == 0 else list(precisions)[::-1]):  # back to back
                c0 = time.process_time()
                row, _ = workload.train_epoch(cfgs[(r, p)], x, y, epoch=rnd)
                ips[(r, p)].append(row["images_per_s"])
                util[(r, p)].append((time.process_time() - c0) / (row["epoch_seconds"] * torch.get_num_threads()))
    out = {}
    for r in RECIPE_NAMES:
        d = {"flops_per_image": flops[r]}
        for p in precisions:
            v = timing.median(ips[(r, p)])
            gf = flops[r] * v / 1e9
            dt = "bf16" if p.startswith("bf16") else "fp32"
            d[p] = {"images_per_s": v, "per_round": ips[(r, p)], "gflops_per_s": gf,
                    "fraction_of_peak": gf / peak[dt], "fraction_of_mm_peak": gf / mm_peak[dt],
                    "cpu_util": timing.median(util[(r, p)])}
        d["bf16_over_fp32"] = timing.summarize([b / a for a, b in zip(ips[(r, "fp32")], ips[(r, "bf16_cl")])])
        out[r] = d
    return _entry(out["standard"]["fp32"]["images_per_s"], "images/s (standard, fp32)", None, None,
                  recipes=out, epoch_images=int(y.shape[0]), batch=s.recipe_batch, train_steps=s.train_steps,
                  data=source, peak_gflops=peak, mm_peak_gflops=mm_peak,
                  flops_note="FLOPs of one rnorm.train.train_step (attack steps included) by the formulas "
                             "of torch.utils.flop_counter (FlopCounterMode's registry), divided by the batch size")


# ---------------------------------------------------------------------------------- 6
def data_pipeline_share(s: Settings, ctx: dict) -> dict:
    """Share of an epoch (standard recipe, fp32, with crop+flip augmentation) spent in rnorm.data.batches."""
    from rnorm import data as D

    x, y, source = workload.images("train", s.share_images)
    cfg = workload.config(width=s.width, recipe="standard", batch_size=s.recipe_batch, augment=True,
                          subset=s.share_images)
    workload.warm(cfg, x, y)
    original = D.batches
    spent = [0.0]

    def timed_batches(*a, **k):
        t0 = time.perf_counter()
        it = original(*a, **k)
        spent[0] += time.perf_counter() - t0
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                spent[0] += time.perf_counter() - t0
                return
            spent[0] += time.perf_counter() - t0
            yield item

    shares, data_s, epoch_s = [], [], []
    D.batches = timed_batches
    try:
        for rnd in range(s.share_rounds):
            spent[0] = 0.0
            row, _ = workload.train_epoch(cfg, x, y, epoch=rnd)
            shares.append(spent[0] / row["epoch_seconds"])
            data_s.append(spent[0])
            epoch_s.append(row["epoch_seconds"])
    finally:
        D.batches = original
    v = timing.median(shares)
    return _entry(100 * v, "% of epoch time", "< 5 %", v < 0.05, per_round_pct=[100 * a for a in shares],
                  data_seconds=data_s, epoch_seconds=epoch_s, images=int(y.shape[0]), augment=True, data=source)


# ---------------------------------------------------------------------------------- 7
def scaling_dataset_size(s: Settings, ctx: dict) -> dict:
    """Epoch time of the standard recipe against the number of training images; least-squares line."""
    x, y, source = workload.images("train", max(s.sizes))
    cfgs = {n: workload.config(width=s.width, recipe="standard", batch_size=s.recipe_batch, subset=n) for n in s.sizes}
    sub = {}
    from rnorm import data as D
    for n in s.sizes:
        sub[n] = D.subset(x, y, n, seed=0) if n < y.shape[0] else (x, y)
    workload.warm(cfgs[s.sizes[0]], x, y)
    secs = {n: [] for n in s.sizes}
    for rnd in range(s.size_rounds):
        order = list(s.sizes) if rnd % 2 == 0 else list(reversed(s.sizes))
        for n in order:
            row, _ = workload.train_epoch(cfgs[n], *sub[n], epoch=rnd)
            secs[n].append(row["epoch_seconds"])
    xs = [float(n) for n in s.sizes]
    ts = [timing.median(secs[n]) for n in s.sizes]
    slope, intercept, r2 = _linfit(xs, ts)
    return _entry(r2, "R^2 of epoch seconds vs images", None, None, sizes=list(s.sizes), epoch_seconds=ts,
                  per_round=secs, slope_ms_per_image=1000 * slope, intercept_s=intercept,
                  images_per_s=[n / t for n, t in zip(xs, ts)], data=source)


def _linfit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in xs)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(xs, ys))
    ss_tot = sum((b - my) ** 2 for b in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return slope, intercept, r2


def _workers(specs: list[dict], s: Settings) -> dict:
    """Start one worker per spec, release them together, return wall span and images trained."""
    procs = []
    errs = []
    try:
        for spec in specs:
            env = dict(os.environ, **spec.get("env", {}))
            err = tempfile.TemporaryFile(mode="w+")
            errs.append(err)
            cmd = [sys.executable, "-m", "benchmarks._worker", "--threads", str(spec["threads"]),
                   "--jobs", str(spec["jobs"]), "--images", str(s.proc_images), "--width", str(s.width),
                   "--batch", str(s.recipe_batch)]
            procs.append(subprocess.Popen(cmd, cwd=workload.ROOT, env=env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=err, text=True))
        for p, err in zip(procs, errs):
            line = p.stdout.readline().strip()
            if line != "ready":
                p.wait(timeout=60)
                err.seek(0)
                raise RuntimeError(f"benchmark worker failed before starting: {err.read()[-2000:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p, err in zip(procs, errs):
            out, _ = p.communicate(timeout=1800)
            if p.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"benchmark worker exited with {p.returncode}: {err.read()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in errs:
            err.close()
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    images = sum(r["images"] for r in results)
    return {"seconds": span, "images": images, "images_per_s": images / span, "workers": results}


def scaling_processes(s: Settings, ctx: dict) -> dict:
    """Two 1-thread worker processes (one epoch each, at once) vs one 2-thread process doing both
    epochs in turn; the 2-thread process also with ``OMP_WAIT_POLICY=PASSIVE`` (threads that wait
    at a barrier sleep instead of spinning), the setting that matters on a shared machine."""
    modes = {
        "two_1thread_processes": [{"threads": 1, "jobs": 1}, {"threads": 1, "jobs": 1}],
        "one_2thread_process": [{"threads": 2, "jobs": 2}],
        "one_2thread_process_passive": [{"threads": 2, "jobs": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}}],
    }
    res = {k: [] for k in modes}
    names = list(modes)
    for rnd in range(s.proc_rounds):
        for k in (names if rnd % 2 == 0 else names[::-1]):
            res[k].append(_workers(modes[k], s))
    ips = {k: [r["images_per_s"] for r in v] for k, v in res.items()}
    r = timing.summarize([a / b for a, b in zip(ips["two_1thread_processes"], ips["one_2thread_process"])])
    rp = timing.summarize([a / b for a, b in zip(ips["two_1thread_processes"], ips["one_2thread_process_passive"])])
    return _entry(r["median"], "throughput ratio 2x1-thread processes / 1x2-thread process", None, None,
                  ratio=r, ratio_vs_passive=rp, images_per_s={k: timing.median(v) for k, v in ips.items()},
                  per_round_images_per_s=ips,
                  job=f"standard recipe, resnet18 w{s.width}, one epoch of {s.proc_images} images, batch {s.recipe_batch}",
                  pinned=False, data=res["two_1thread_processes"][0]["workers"][0]["data"])


def threads_two_vs_one(s: Settings, ctx: dict) -> dict:
    """The bn training step of benchmark 1 with 2 torch threads vs 1, interleaved in this process.

    On a 2-core machine shared with other jobs, OpenMP's spinning barrier makes every parallel
    region wait for a descheduled thread: this number says whether 2 threads pay here.
    """
    from rnorm.models import resnet18

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = resnet18(width=s.width, norm="bn")
    x, y = _random_batch(s.batch, s, seed=3)
    step = _sgd_step(model, x, y)
    n = max(2, os.cpu_count() or 2)

    def with_threads(k):
        def f():
            torch.set_num_threads(k)
            try:
                step()
            finally:
                torch.set_num_threads(threads)
        return f
    timed = timing.interleave({f"{n}_threads": with_threads(n), "1_thread": with_threads(1)},
                              rounds=s.thread_rounds, warmup=1, reps=1)
    r = timing.ratio(timed, "1_thread", f"{n}_threads")
    return _entry(r["median"], f"throughput ratio {n} threads / 1 thread", None, None, ratio=r, threads=n,
                  seconds={k: timing.median(v) for k, v in timed["seconds"].items()},
                  cpu_util={k: timing.median(v) for k, v in timed["cpu_util"].items()}, batch=s.batch,
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))


# ---------------------------------------------------------------------------------- 9
#: The cap: the instruction set of a CPU with AVX2 but neither AVX-512 nor native bf16 (such as AMD Zen 3).
ISA_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def precision_auto_isa_capped(s: Settings, ctx: dict) -> dict:
    """``precision: auto`` on a CPU without native bf16, emulated here by capping PyTorch's kernels at
    AVX2 (:data:`ISA_CAP`, see :mod:`benchmarks._isa_worker`): what ``auto`` resolves to, and the
    throughput of the ``cpu`` profile's resolved standard run against plain fp32 (target: within 10 %)
    and against forced bf16 + channels-last (the profile's former fixed choice). On a CPU that has
    only AVX2 anyway, the cap changes nothing and this is the machine's own measurement."""
    cmd = [sys.executable, "-m", "benchmarks._isa_worker", "--images", str(s.isa_images),
           "--bf16-images", str(s.isa_bf16_images), "--rounds", str(s.isa_rounds), "--width", str(s.width),
           "--batch", str(s.recipe_batch), "--channels-last", str(workload.cpu_profile_channels_last())]
    with tempfile.TemporaryDirectory() as cache:  # nothing of the capped run enters the real cache
        env = dict(os.environ, RNORM_CACHE=cache, OMP_NUM_THREADS="1", **ISA_CAP)
        proc = subprocess.run(cmd, cwd=workload.ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"ISA-capped worker exited with {proc.returncode}: {proc.stderr[-2000:]}")
    w = json.loads(proc.stdout.strip().splitlines()[-1])
    ips = w["images_per_s"]
    r = {**timing.summarize([a / b for a, b in zip(ips["auto"], ips["fp32"])]), "clock": "cpu"}
    bf = timing.summarize([a / b for a, b in zip(ips["bf16_cl"], ips["fp32"])])
    capped = w["cpu_capability"].upper() == "AVX2"
    return _entry(r["median"], "throughput ratio auto (resolved) / plain fp32, ISA capped at AVX2", ">= 0.90",
                  bool(r["median"] >= 0.90 and w["precision_resolved"] == "fp32"), ratio=r, bf16_over_fp32=bf,
                  images_per_s={k: timing.median(v) for k, v in ips.items()}, cap=ISA_CAP, cap_in_effect=capped,
                  **{k: w[k] for k in ("cpu_capability", "flags_hidden", "native_bf16_seen", "precision_resolved",
                                       "config_precision", "channels_last_resolved", "images", "data", "cpu_util")},
                  job=f"standard recipe, resnet18 w{s.width}, batch {s.recipe_batch}, 1 thread, one epoch per round")


BENCHMARKS = {
    "train_step_vs_torchvision": train_step_vs_torchvision,
    "multibn_split_vs_bn": multibn_split_vs_bn,
    "robustnorm_vs_bn": robustnorm_vs_bn,
    "pgd_wrapper_vs_torchattacks": pgd_wrapper_vs_torchattacks,
    "bf16_eval_attack": bf16_eval_attack,
    "matmul_peak": matmul_peak,
    "recipe_throughput": recipe_throughput,
    "data_pipeline_share": data_pipeline_share,
    "scaling_dataset_size": scaling_dataset_size,
    "scaling_processes": scaling_processes,
    "threads_two_vs_one": threads_two_vs_one,
    "precision_auto_isa_capped": precision_auto_isa_capped,
}
