"""How to spread training runs over this machine's cores: how many worker processes, of how many
threads each. Chosen by measurement, once per machine, instead of fixed in a profile.

A profile's runs are independent, so the question is only which layout trains the most images
per second in total: several one-thread processes (no synchronisation between threads, but the
processes share caches and memory bandwidth) or fewer processes with more threads (oneDNN splits
each convolution; small networks on small images often scale badly). The answer depends on the
CPU, the network and the load, so :func:`choose` measures it: for each candidate layout
(:func:`candidates`), ``workers`` processes of ``threads`` threads each train the profile's first
(longest) run on random images, started together, for a few batches through
:func:`rnorm.train.run_epoch`, the loop the real runs use (same precision, memory layout,
recipe); their images per second are summed. The layout with the highest total wins.

Measured layouts are cached in ``hardware.json`` (:func:`rnorm.hardware.cache_file`) under the
CPU model, torch version, precision, network, recipe and core count, so the measurement runs
once per machine and network. It should be taken on a quiet machine: a measurement taken beside
other work is recorded with the load average it saw, and :func:`choose` says so each time it is
used (``rnorm layout --remeasure`` measures again).

None of this changes what is trained: a run's key and results do not depend on its threads.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from ._validate import ConfigError, check_int


@dataclasses.dataclass(frozen=True)
class Layout:
    """``workers`` processes of ``threads`` threads; ``measured`` maps each candidate
    ``"<workers>x<threads>"`` to its total images/s (empty when the layout was given, not measured);
    ``threads`` None leaves torch's default."""

    workers: int
    threads: int | None  # None: torch's default
    measured: dict = dataclasses.field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        what = f"{self.workers} worker(s) x {self.threads or 'default'} thread(s)"
        if not self.measured:
            return what + (f" ({self.note})" if self.note else "")
        rates = ", ".join(f"{k}: {v:.0f} img/s" for k, v in self.measured.items())
        return f"{what}, the fastest measured ({rates})" + (f"; {self.note}" if self.note else "")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def candidates(cores: int, runs: int) -> list[tuple[int, int]]:
    """The ``(workers, threads)`` layouts worth measuring on ``cores`` cores for ``runs`` runs: for
    ``threads`` in 1, 2, 4, ... and ``cores`` itself, as many workers as fit (at most one per run).

    >>> candidates(2, 5)
    [(2, 1), (1, 2)]
    >>> candidates(2, 1)
    [(1, 1), (1, 2)]
    >>> candidates(6, 10)
    [(6, 1), (3, 2), (1, 4), (1, 6)]
    """
    cores = check_int("cores", cores, min_value=1)
    runs = check_int("runs", runs, min_value=1)
    threads = sorted({t for t in (2 ** i for i in range(cores.bit_length())) if t <= cores} | {cores})
    out: list[tuple[int, int]] = []
    for t in threads:
        layout = (min(runs, cores // t), t)
        if layout not in out:
            out.append(layout)
    return out


def _cache_key(config, cores: int) -> str:
    import torch

    from .hardware import cpu_name
    return (f"layout|{cpu_name()}|torch {torch.__version__}|{config.precision}|{config.dataset}|"
            f"{config.arch}w{config.width}-{config.norm}|{config.recipe}|batch {config.batch_size}|cores {cores}")


def _read_cache() -> dict:
    from .hardware import cache_file
    try:
        known = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    from ._io import atomic_write_text
    from .hardware import cache_file
    known = _read_cache()
    known[key] = entry
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file(), json.dumps(known, indent=2) + "\n")
    except OSError:  # pragma: no cover - an unwritable cache only costs a re-measurement
        pass


def _timed_worker(config: dict, threads: int, channels_last: bool, batches: int, barrier, results) -> None:
    """One worker of a measured layout: warm up on one batch, wait for the others, train ``batches``
    batches of random images of the run's shape, report the images per second."""
    import torch

    from . import train as T
    from .data import info
    from .runs import RunConfig, build_model

    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(config)
    d = info(cfg.dataset)
    g = torch.Generator().manual_seed(0)
    n = cfg.batch_size * batches
    x = torch.randint(0, 256, (n, d.in_channels, d.image_size, d.image_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, d.num_classes, (n,), generator=g)
    model = build_model(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = T.make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = T.make_scheduler(opt, "constant", batches + 1, 0)
    kw = dict(recipe=cfg.recipe, cfg=cfg, batch_size=cfg.batch_size, seed=0, augment=cfg.resolved_augment(),
              device="cpu", channels_last=channels_last)
    T.run_epoch(model, opt, sched, x[:cfg.batch_size], y[:cfg.batch_size], epoch=0, **kw)  # oneDNN builds kernels
    barrier.wait(timeout=_BARRIER_SECONDS)
    start = time.monotonic()
    T.run_epoch(model, opt, sched, x, y, epoch=1, **kw)
    results.put((n, start, time.monotonic()))


_BARRIER_SECONDS = 300


class MeasurementError(RuntimeError):
    """A measured layout could not be timed (a worker failed or never reported)."""


def measure(config, workers: int, threads: int, batches: int = 6) -> float:
    """Total images/s of ``workers`` processes of ``threads`` threads training ``config`` at once
    (see the module docstring): all their images over the time from the first start to the last
    end, so a worker that finishes early does not count its uncontended time. A worker that dies
    raises :class:`MeasurementError` naming the layout (the others are stopped)."""
    import multiprocessing as mp
    import queue

    import torch

    from .runs import _layout
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the memory layout the run would get with this many threads (measured once, cached)
        channels_last = _layout(config, "auto", torch.device("cpu"))
    finally:
        torch.set_num_threads(old)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_timed_worker, args=(config.to_dict(), threads, channels_last, batches, barrier,
                                                     results)) for _ in range(workers)]
    for p in procs:
        p.start()
    reports: list = []
    try:
        deadline = time.monotonic() + _BARRIER_SECONDS + 600
        while len(reports) < workers:
            try:
                reports.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    barrier.abort()
                    why = f"a worker exited with code {dead[0]}" if dead else "the workers did not report in time"
                    raise MeasurementError(f"measuring {workers} worker(s) x {threads} thread(s) on {config.name()}: "
                                           f"{why}") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    images = sum(n for n, _, _ in reports)
    return images / (max(end for _, _, end in reports) - min(start for _, start, _ in reports))


def choose(configs: list, *, cores: int | None = None, measure_fn=None, log=print, remeasure: bool = False) -> Layout:
    """The layout that trains ``configs`` fastest on this machine: measured for the first (the
    longest, as :func:`rnorm.book.pretrain` orders them) on CPU, cached per machine and network
    (``remeasure``: ignore the cache).

    ``measure_fn(config, workers, threads) -> images/s`` replaces :func:`measure` (tests).
    """
    if not configs:
        return Layout(1, 1, note="nothing to train")
    cores = available_cores() if cores is None else check_int("cores", cores, min_value=1)
    measure_fn = measure_fn or measure
    config = configs[0]
    key = _cache_key(config, cores)
    cached = _read_cache().get(key)
    entry = cached if isinstance(cached, dict) and not remeasure else {}
    known = dict(entry.get("images_per_s", {}))
    todo = [(w, t) for w, t in candidates(cores, len(configs)) if f"{w}x{t}" not in known]
    load = entry.get("load_before", 0.0)
    failed = []
    if todo:
        load = max(load, os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
        log(f"[rnorm] measuring how to spread {len(configs)} run(s) over {cores} core(s) "
            f"({', '.join(f'{w}x{t}' for w, t in todo)} workers x threads, {config.name()}); once per machine")
        for w, t in todo:
            try:
                known[f"{w}x{t}"] = round(measure_fn(config, w, t), 1)
            except MeasurementError as e:
                failed.append(str(e))
        _write_cache(key, {"images_per_s": known, "load_before": round(load, 2),
                           "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    notes = []
    if load >= 0.5:
        notes.append(f"measured beside other work (1-min load {load:.2f}); `rnorm layout --remeasure` on a quiet "
                     f"machine measures again")
    notes += [f"not measured: {e}" for e in failed]
    options = {f"{w}x{t}": known[f"{w}x{t}"] for w, t in candidates(cores, len(configs)) if f"{w}x{t}" in known}
    if not options:
        return Layout(min(cores, len(configs)), 1, {}, "; ".join(notes + ["one thread per worker, one worker per core"]))
    best = max(options, key=options.get)
    workers, threads = (int(v) for v in best.split("x"))
    return Layout(workers, threads, options, "; ".join(notes))


def resolve(jobs, configs: list, *, threads: int | None = None, device: str = "auto", log=print) -> Layout:
    """The layout for training ``configs`` (the runs still to train): ``jobs`` workers of
    ``threads`` threads when ``jobs`` is a number (without ``threads``: one per worker, or torch's
    default for a single worker); when it is ``"auto"``, :func:`choose` on CPU, one worker on any
    other device, and nothing to measure when no run is left to train."""
    if jobs != "auto":
        jobs = check_int("jobs", jobs, min_value=1)
        return Layout(jobs, threads or (None if jobs == 1 else 1), note="as given")
    if not configs:
        return Layout(1, threads, note="every run is finished: nothing to train")
    import torch
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        return Layout(1, threads, note=f"one worker on {device}")
    return choose(configs, log=log)


def check_jobs(value, name: str = "jobs", max_value: int | None = None):
    """``jobs`` as a profile or the command line (text) gives it: a positive int (at most
    ``max_value``) or ``"auto"``."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    try:
        return check_int(name, value, min_value=1, max_value=max_value)
    except ConfigError:
        upto = f" (at most {max_value})" if max_value is not None else ""
        what = "is out of range" if isinstance(value, int) and not isinstance(value, bool) else "is not allowed"
        raise ConfigError(f"{name}={value!r} {what}; allowed: a positive integer{upto} or 'auto' (measure the "
                          f"fastest workers x threads on this machine).") from None
