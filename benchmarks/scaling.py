"""Benchmark 7, how the work scales: epoch time against the training-set size (a least-squares line),
two 1-thread worker processes against one 2-thread process, and 2 torch threads against 1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

from . import timing, workload
from .common import entry, random_batch, sgd_step
from .settings import Settings


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
    return entry(r2, "R^2 of epoch seconds vs images", None, None, sizes=list(s.sizes), epoch_seconds=ts,
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
    return entry(r["median"], "throughput ratio 2x1-thread processes / 1x2-thread process", None, None,
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
    x, y = random_batch(s.batch, s, seed=3)
    step = sgd_step(model, x, y)
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
    return entry(r["median"], f"throughput ratio {n} threads / 1 thread", None, None, ratio=r, threads=n,
                  seconds={k: timing.median(v) for k, v in timed["seconds"].items()},
                  cpu_util={k: timing.median(v) for k, v in timed["cpu_util"].items()}, batch=s.batch,
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
