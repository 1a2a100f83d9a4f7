"""Throughput benchmarks of rnorm, measured as ratios of interleaved timings.

``python -m benchmarks`` (``make bench``) runs each benchmark in a child process of its own, with a
time limit (:func:`run_in_child`): a kernel that crashes or hangs there (oneDNN issue 6035 does both)
is recorded as *unusable* with what ended it, never as a result, and the other benchmarks go on. It
writes, into ``--out`` (default
``benchmarks/results/``; ``benchmarks/results/quick/`` with ``--quick``):

* ``<YYYY-MM-DD>-<machine>.json`` -- environment (torch version, threads, CPU model and flags,
  load average before and after) and one entry per benchmark with a numeric ``value``, its
  ``unit``, ``target`` and ``met`` plus the per-round details;
* ``<YYYY-MM-DD>-<machine>.md`` and ``latest.md`` -- the table (:mod:`benchmarks.report`): benchmark,
  measured, target, met?

The benchmarks (see :mod:`benchmarks.suite`):

1. ``train_step_vs_torchvision`` -- rnorm's resnet18(width=16, norm="bn") training step vs the
   same network built from torchvision's ``ResNet`` with ``nn.BatchNorm2d`` (target >= 0.95).
2. ``multibn_split_vs_bn`` -- multibn forward+backward over a [clean; adv; easy] batch routed to
   three branches vs the plain BN network over the same batch (target >= 0.90).
3. ``robustnorm_vs_bn`` -- robustnorm vs bn training step (target <= 1.3x the time), with the
   earlier RobustNorm implementation timed alongside (before/after); also chapter 03's ResNet-20 at
   RobustNorm's powers 0.2 and 1.0 (``resnet20_time_ratio``, reported, no target).
4. ``pgd_wrapper_vs_torchattacks`` -- ``make_attack("pgd")`` vs ``torchattacks.PGD`` (target >= 1
   within noise, same adversarial accuracy).
5. ``recipe_throughput`` + ``matmul_peak`` -- one epoch per recipe in fp32 and bf16+channels-last,
   GFLOP/s as a share of the measured matmul peak.
6. ``data_pipeline_share`` -- share of an epoch spent in ``rnorm.data.batches`` (target < 5 %).
7. ``scaling_dataset_size`` (epoch time vs images, R^2), ``scaling_processes`` (two 1-thread
   processes vs one 2-thread process, which also runs with ``OMP_WAIT_POLICY=PASSIVE``) and
   ``threads_two_vs_one`` (2 vs 1 torch threads for the same step, in this process).

9. ``precision_auto_isa_capped`` -- ``precision: auto`` on a CPU without native bf16, emulated by
   capping PyTorch's kernels at AVX2 (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) in a worker
   process: the resolved precision, and the resolved ``cpu``-profile run vs plain fp32 (target >= 0.90)
   and vs forced bf16.

Also ``bf16_eval_attack``: robust accuracy with bf16 evaluation attacks vs fp32 (same images).

Threads: ``--threads N``; by default all cores on an idle machine and one thread when the
1-minute load average is >= 0.5 at start (see :func:`choose_threads`). The choice and the reason
are in the JSON. With one thread, ratios are taken on process CPU time (see
:mod:`benchmarks.timing`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

from rnorm.hardware import cpu_name as cpu_model
from rnorm.hardware import native_bf16, resolve_precision

from .report import markdown, table_rows  # noqa: F401  (the report of a run)

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_flags() -> dict:
    from rnorm.hardware import cpu_flags as flags_of
    flags = flags_of()
    return {k: k in flags for k in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def machine_name() -> str:
    """A short machine slug: the CPU model and core count (``amd-epyc-2c``); host names of
    virtual machines (``vm``, ``localhost``) say nothing about the hardware."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower())
    slug = re.sub(r"-(processor|cpu|with-radeon-graphics)\b", "", slug).strip("-")[:40].strip("-")
    return f"{slug or 'cpu'}-{os.cpu_count()}c"


LOADED = 0.5  # 1-minute load average from which the machine counts as shared


def choose_threads(requested: int | None, load1: float) -> tuple[int, str]:
    """The torch thread count for the run, and why.

    ``requested`` wins. Otherwise all cores on an idle machine; one thread on a loaded one: with
    2 threads on 2 cores and another busy process, OpenMP's spinning barriers stall every
    parallel region for a scheduler time slice (measured here: a training step 10-100x slower
    than with one thread; see the ``threads_two_vs_one`` benchmark).
    """
    if requested is not None:
        return requested, "--threads"
    if load1 >= LOADED:
        return 1, f"machine loaded at start (1-min load {load1:.2f} >= {LOADED}): 1 thread"
    return os.cpu_count() or 1, f"machine idle at start (1-min load {load1:.2f}): all cores"


def environment() -> dict:
    """The record of the machine a benchmark ran on: :func:`rnorm.hardware.environment` (the one
    record every run and result uses) plus what a timing needs -- the date, the CPU flags that
    decide the precision, what ``precision: auto`` resolves to, and the load before the run."""
    import torch

    from rnorm.hardware import environment as rnorm_environment

    load = os.getloadavg()
    return rnorm_environment(
        "cpu",
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu_model=cpu_model(), cpu_flags=cpu_flags(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=native_bf16(), precision_auto_resolves_to=resolve_precision("auto", "cpu"),
        node=platform.node(), loadavg_before=list(load), loaded_before=load[0] >= LOADED,
        rnorm_data=os.environ.get("RNORM_DATA"))


#: What a benchmark's child must run first, in the same process (it reads their ``ctx`` entries).
DEPENDS = {"recipe_throughput": ("matmul_peak",)}
#: Seconds a benchmark's child may take before it counts as hung.
CHILD_LIMIT = {"quick": 600, "full": 5400}


def run_one(name: str, quick: bool, threads: int) -> dict:
    """One benchmark's entry, computed in this process (after what it depends on, :data:`DEPENDS`)."""
    import torch

    from . import suite
    torch.set_num_threads(threads)
    settings = suite.Settings.quick() if quick else suite.Settings()
    ctx: dict = {}
    try:
        for dep in DEPENDS.get(name, ()):
            suite.BENCHMARKS[dep](settings, ctx)
        return suite.BENCHMARKS[name](settings, ctx)
    except Exception as exc:  # noqa: BLE001 - record it, go on with the others
        return {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                "traceback": traceback.format_exc()}


def run_in_child(name: str, quick: bool, threads: int) -> dict:
    """:func:`run_one` in a child process (``python -m benchmarks --child NAME``) with a time limit
    (:data:`CHILD_LIMIT`). A child killed by a signal or past its limit gives an entry with ``unusable:
    True`` and an ``error`` saying what ended it."""
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks", "--child", name, "--threads", str(threads)] + (["--quick"] if quick else [])
    limit = CHILD_LIMIT["quick" if quick else "full"]
    try:
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"unusable: no result within {limit} s (a kernel hung?)", "unusable": True}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    if proc.returncode < 0:
        why = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        why = f"exit code {proc.returncode}"
    return {"error": f"unusable: the benchmark's process ended with {why}: {proc.stderr[-1500:]}", "unusable": True}


def run(quick: bool = False, out=None, threads: int | None = None, only=None, log=sys.stderr) -> dict:
    """Run the benchmarks and write the JSON and markdown files; returns the results dict
    (with ``paths``)."""
    import torch

    from . import suite, workload

    workload.default_data_root()
    settings = suite.Settings.quick() if quick else suite.Settings()
    out = Path(out) if out is not None else (RESULTS / "quick" if quick else RESULTS)
    load1 = os.getloadavg()[0]
    default_threads = torch.get_num_threads()
    n_threads, why = choose_threads(threads, load1)
    torch.set_num_threads(n_threads)
    env = environment()
    env.update(threads_default=default_threads, threads_reason=why)
    results = {"schema": 1, "mode": settings.mode, "machine": machine_name(), "environment": env,
               "settings": settings.to_dict(), "benchmarks": {}}
    t_all = time.perf_counter()
    names = list(suite.BENCHMARKS) if only is None else list(only)
    for name in names:
        t0 = time.perf_counter()
        load0 = list(os.getloadavg())
        print(f"[bench] {name} ...", file=log, flush=True)
        entry = run_in_child(name, quick, n_threads)
        entry["wall_seconds"] = time.perf_counter() - t0
        entry["loadavg_at_start"] = load0
        results["benchmarks"][name] = entry
        status = "ERROR " + entry["error"] if "error" in entry else f"{entry['value']:.4g} {entry['unit']}"
        print(f"[bench] {name}: {status} ({entry['wall_seconds']:.1f} s)", file=log, flush=True)
    env["loadavg_after"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - t_all
    torch.set_num_threads(default_threads)

    out.mkdir(parents=True, exist_ok=True)
    stem = f"{env['date'][:10]}-{results['machine']}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    text = json.dumps(results, indent=2, allow_nan=False, default=float)
    json_path.write_text(text + "\n")
    md_path.write_text(markdown(results))
    shutil.copyfile(md_path, out / "latest.md")
    results["paths"] = {"json": str(json_path), "markdown": str(md_path), "latest": str(out / "latest.md")}
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 rounds (well under a minute)")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results, "
                                                "or benchmarks/results/quick with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: all cores on an idle machine, 1 on a loaded one)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME",
                    help="run only these benchmarks (give --out too, or latest.md holds only them)")
    ap.add_argument("--child", default=None, metavar="NAME", help=argparse.SUPPRESS)  # run_in_child's worker
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(run_one(a.child, a.quick, a.threads or 1), allow_nan=False, default=float), flush=True)
        return 0
    if a.threads is not None and a.threads < 1:
        ap.error(f"--threads {a.threads}: give a number >= 1")
    from . import suite
    unknown = [n for n in a.only or () if n not in suite.BENCHMARKS]
    if unknown:
        ap.error(f"--only {' '.join(unknown)}: no such benchmark; choose from {', '.join(suite.BENCHMARKS)}")
    res = run(quick=a.quick, out=a.out, threads=a.threads, only=a.only)
    print(markdown(res))
    print(f"wrote {res['paths']['json']}, {res['paths']['markdown']}, {res['paths']['latest']}")
    return 1 if any("error" in e for e in res["benchmarks"].values()) else 0
