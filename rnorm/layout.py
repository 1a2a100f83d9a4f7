"""How to spread training runs over this machine's cores: how many worker processes, of how many
threads each. Chosen by a rule, never by timing inside a training process.

The rule (``jobs: auto``): on CPU, one worker per ``threads`` cores (``threads`` default 1), at most
one per run; on any other device, one worker. Why one-thread workers: a profile's runs are independent,
and two one-thread processes trained 1.06x faster than one two-thread process on 2 cores (benchmark 7,
``benchmarks/results/latest.md``; 1.28x against a two-thread process with ``OMP_WAIT_POLICY=PASSIVE``),
and an earlier measured choice picked the same 2 x 1 on every profile it was run on (benchmark 8, now
retired). The measurement that used to choose this ran training steps inside the process that then
trained, where a oneDNN bug (issue 6035) can hang or corrupt memory; a rule cannot.

None of this changes what is trained: a run's key and results do not depend on its threads.
"""
from __future__ import annotations

import dataclasses
import os

from ._validate import ConfigError, check_int


@dataclasses.dataclass(frozen=True)
class Layout:
    """``workers`` processes of ``threads`` threads (None: torch's default) and why."""

    workers: int
    threads: int | None
    note: str = ""

    def describe(self) -> str:
        what = f"{self.workers} worker(s) x {self.threads or 'default'} thread(s)"
        return what + (f" ({self.note})" if self.note else "")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve(jobs, configs: list, *, threads: int | None = None, device: str = "auto", cores: int | None = None) -> Layout:
    """The layout for training ``configs`` (the runs still to train): ``jobs`` workers of ``threads``
    threads when ``jobs`` is a number (without ``threads``: one per worker, or torch's default for a
    single worker); when it is ``"auto"``, the rule of the module docstring on ``cores`` (default
    :func:`available_cores`)."""
    if jobs != "auto":
        jobs = check_int("jobs", jobs, min_value=1)
        return Layout(jobs, threads or (None if jobs == 1 else 1), note="as given")
    if not configs:
        return Layout(1, threads, note="every run is finished: nothing to train")
    import torch
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if not on_cpu:
        return Layout(1, threads, note=f"one worker on {device}")
    cores = available_cores() if cores is None else check_int("cores", cores, min_value=1)
    threads = threads or 1
    workers = max(1, min(len(configs), cores // threads))
    return Layout(workers, threads, note=f"jobs: auto, {cores} core(s): one worker per {threads} thread(s), "
                                         f"at most one per run")


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
        raise ConfigError(f"{name}={value!r} {what}; allowed: a positive integer{upto} or 'auto' (one worker per "
                          f"core).") from None
