"""Where training runs execute: worker processes on this machine, or tasks on a Ray cluster.

A profile's training runs are independent (each is keyed by its configuration and trained once,
:mod:`rnorm.runs`), so they can run anywhere that sees the same runs folder. The notebooks then
only load them. Two executors:

* ``local`` (the default): ``jobs`` worker processes of ``threads`` threads each on this machine
  (one thread unless told), or in this process when ``jobs`` is 1; a profile's ``jobs: auto`` is one
  one-thread worker per core (:mod:`rnorm.layout`).
* ``ray``: one Ray task per run, with its resource request (1 GPU when the runs train on CUDA,
  else ``threads`` CPUs), on the cluster at ``address`` (``--ray-address``, else ``RAY_ADDRESS``,
  else a Ray instance started on this machine). ``RNORM_RUNS`` must name a folder every node
  sees (a shared file system), as must ``RNORM_DATA``; both are passed to the tasks. Ray is an
  optional dependency: ``pip install 'rnorm[cluster]'``.

Each executor returns, per run, whether it was trained or found finished: :func:`train_one`
decides that under the run's lock, so a run asked for twice (two tasks, two machines) is trained
once.
"""
from __future__ import annotations

import os
import sys

from ._validate import ConfigError, check_choice, check_int

EXECUTORS = ("local", "ray")


def train_one(config, device: str = "auto", threads: int | None = 1, runs_dir=None,
              channels_last="auto") -> tuple[str, bool]:
    """Train ``config`` (or find it finished) in this process, in the memory layout ``channels_last``
    resolves to (:func:`rnorm.hardware.resolve_channels_last`); returns (run name, trained here?)."""
    from .runs import is_complete, runs_root, train, trained_by
    finished_before = is_complete(runs_root(runs_dir) / config.folder_name())
    run = train(config, runs_dir=runs_dir, device=device, progress=False, threads=threads,
                channels_last=channels_last)
    return config.folder_name(), not finished_before and run.environment.get("trained_by") == trained_by()


def _worker_init(threads: int):
    import torch
    torch.set_num_threads(threads)


def _train_args(args):
    return train_one(*args)


def run_local(configs: list, *, jobs: int = 1, device: str = "auto", threads: int | None = None,
              channels_last="auto") -> list:
    """Train ``configs`` in ``jobs`` worker processes of ``threads`` threads (default 1; in this
    process when ``jobs`` is 1); returns :func:`train_one`'s pairs in completion order."""
    jobs = check_int("jobs", jobs, min_value=1)
    if threads is not None:
        threads = check_int("threads", threads, min_value=1)
    out = []
    if jobs <= 1 or len(configs) <= 1:
        for i, cfg in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {cfg.name()}", flush=True)
            out.append(train_one(cfg, device, threads, None, channels_last))
        return out
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs, initializer=_worker_init, initargs=(threads or 1,)) as pool:
        for res in pool.imap_unordered(_train_args, [(c, device, threads or 1, None, channels_last)
                                                        for c in configs]):
            _report(out, res, len(configs))
    return out


def _report(out: list, res: tuple[str, bool], total: int) -> None:
    out.append(res)
    print(f"[{len(out)}/{total}] {'trained' if res[1] else 'found'} {res[0]}", flush=True)


def ray_resources(device: str, threads: int | None) -> dict:
    """The resource request of one training task: 1 GPU (and 1 CPU) for CUDA runs, else ``threads``
    CPUs (1 by default)."""
    if str(device).startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": threads or 1}


def run_ray(configs: list, *, address: str | None = None, device: str = "auto", threads: int | None = None,
            init_kwargs: dict | None = None, channels_last="auto") -> list:
    """Submit one Ray task per config and wait for all; returns :func:`train_one`'s pairs.

    ``address``: the cluster (``"auto"``, ``"ray://host:10001"``, ...), else ``RAY_ADDRESS``, else a
    local instance. ``device="auto"`` asks for a GPU per task when the cluster has GPUs. The runs
    folder and data folder of this process are passed to the tasks as absolute paths.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray: pip install 'rnorm[cluster]' (or pip install ray).") from None
    from .data import data_root
    from .runs import runs_root
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"RNORM_RUNS": str(runs_root()), "RNORM_DATA": str(data_root())}
    if not ray.is_initialized():  # the folders travel with each task (below), not in a runtime_env
        ray.init(address=address, **(init_kwargs or {}))
    if device == "auto":
        device = "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    task = ray.remote(**ray_resources(device, threads))(_ray_train)
    refs = {task.remote(cfg.to_dict(), device, threads or 1, env, channels_last): cfg for cfg in configs}
    out, pending = [], list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        _report(out, ray.get(ready[0]), len(configs))
    return out


def _ray_train(config: dict, device: str, threads: int, env: dict, channels_last="auto") -> tuple[str, bool]:
    os.environ.update(env)
    from .runs import RunConfig
    return train_one(RunConfig.from_dict(config), device, threads, env["RNORM_RUNS"], channels_last)


def run_all(configs: list, *, executor: str = "local", jobs: int = 1, device: str = "auto",
            threads: int | None = None, address: str | None = None, channels_last="auto") -> list:
    """Train ``configs`` with the named executor (:data:`EXECUTORS`) in the memory layout
    ``channels_last`` (True, False, ``"auto"``) resolves to."""
    check_choice("executor", executor, EXECUTORS)
    if executor == "ray":
        return run_ray(configs, address=address, device=device, threads=threads, channels_last=channels_last)
    if address:
        print(f"rnorm: --ray-address {address!r} is ignored by the local executor", file=sys.stderr)
    return run_local(configs, jobs=jobs, device=device, threads=threads, channels_last=channels_last)
