"""Benchmarks 5 and 6: the machine's matmul and convolution peak, one epoch per recipe in fp32 and in
bf16 + channels-last as a share of that peak (FLOPs counted by torch's formulas), and the share of an
epoch spent in the data pipeline."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import timing, workload
from .common import entry
from .settings import RECIPE_NAMES, Settings


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
    return entry(mm["fp32"], "GFLOP/s torch.mm fp32 (best)", None, None, peak_gflops=peak, mm_peak_gflops=mm,
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
    return entry(out["standard"]["fp32"]["images_per_s"], "images/s (standard, fp32)", None, None,
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
    return entry(100 * v, "% of epoch time", "< 5 %", v < 0.05, per_round_pct=[100 * a for a in shares],
                  data_seconds=data_s, epoch_seconds=epoch_s, images=int(y.shape[0]), augment=True, data=source)
