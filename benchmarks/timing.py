"""Interleaved timing: alternate the contenders A, B, A, B, ... and compare them round by round.

On a shared machine the speed available to one process drifts by tens of percent within
seconds (other jobs come and go). Timing A for a minute and then B for a minute measures the
drift as much as the code. Here each round times every contender once, back to back (the order
reversed every other round -- A B, B A, A B, ... -- so that neither always goes first), and the
comparison is the *ratio within a round*; the median over rounds is the estimate and the spread
of the per-round ratios (min, max, quartiles) says how much to trust it.

Two clocks are kept: wall time and the process's CPU time. With one torch thread the CPU time
leaves out the time slices the scheduler gave to other processes, so its ratios are much less
noisy on a shared machine; with several threads it would count OpenMP's spin-waiting, so there
wall time is the measure. :func:`compare` reports both and names the one it leads with.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable


def interleave(fns: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1, reps: int = 1) -> dict:
    """Time each callable ``reps`` times per round, contenders in turn, for ``rounds`` rounds.

    Returns ``{"seconds": {name: [per-call wall seconds, one per round]}, "cpu_seconds": {...},
    "cpu_util": {...}}``. ``cpu_util`` is process CPU time / (wall time * torch threads): near 1
    when the process had its cores to itself, lower when other processes took them.
    """
    import torch

    threads = max(1, torch.get_num_threads())
    for _ in range(warmup):
        for f in fns.values():
            f()
    gc.collect()
    secs = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    util = {k: [] for k in fns}
    names = list(fns)
    for rnd in range(rounds):
        for k in (names if rnd % 2 == 0 else names[::-1]):
            f = fns[k]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(reps):
                f()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            secs[k].append(wall / reps)
            cpus[k].append(cpu / reps)
            util[k].append(cpu / max(wall * threads, 1e-12))
    return {"seconds": secs, "cpu_seconds": cpus, "cpu_util": util, "threads": threads}


def quartiles(xs: list[float]) -> tuple[float, float]:
    """First and third quartile (inclusive method; the values themselves for fewer than 2)."""
    if len(xs) < 2:
        return float(xs[0]), float(xs[0])
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def summarize(ratios: list[float]) -> dict:
    """Median, min, max and quartiles of per-round ratios."""
    q1, q3 = quartiles(ratios)
    return {
        "median": float(statistics.median(ratios)),
        "min": float(min(ratios)),
        "max": float(max(ratios)),
        "q1": q1,
        "q3": q3,
        "rounds": len(ratios),
        "per_round": [float(r) for r in ratios],
    }


def ratio(timed: dict, num: str, den: str, clock: str = "wall") -> dict:
    """Per-round ``time[num] / time[den]`` summarized (a time ratio; >1 means ``num`` is slower)."""
    s = timed["seconds" if clock == "wall" else "cpu_seconds"]
    return summarize([a / b for a, b in zip(s[num], s[den])])


def lead_clock(timed: dict) -> str:
    """``"cpu"`` for single-threaded timings, else ``"wall"`` (see the module docstring)."""
    return "cpu" if timed.get("threads", 1) == 1 else "wall"


def compare(timed: dict, num: str, den: str) -> dict:
    """Time ratio ``num / den`` on both clocks; ``headline`` is the one of :func:`lead_clock`."""
    out = {"wall": ratio(timed, num, den, "wall"), "cpu": ratio(timed, num, den, "cpu")}
    out["clock"] = lead_clock(timed)
    out["headline"] = dict(out[out["clock"]], clock=out["clock"])
    return out


def median(xs) -> float:
    return float(statistics.median(list(xs)))
