"""Tests of rnorm.executors: the local pool and Ray run every training run exactly once."""
from __future__ import annotations

import pytest

from rnorm import book, cli, executors
from rnorm._validate import ConfigError
from rnorm.experiments import REGISTRY, planned_runs
from rnorm.runs import RunConfig, find_run


def smoke_notebooks():
    return [n for n in REGISTRY if REGISTRY[n].trains]


def test_ray_resources():
    assert executors.ray_resources("cuda", None) == {"num_gpus": 1, "num_cpus": 1}
    assert executors.ray_resources("cuda:1", 4) == {"num_gpus": 1, "num_cpus": 1}
    assert executors.ray_resources("cpu", None) == {"num_gpus": 0, "num_cpus": 1}
    assert executors.ray_resources("cpu", 3) == {"num_gpus": 0, "num_cpus": 3}


def test_unknown_executor_is_named():
    with pytest.raises(ConfigError, match="executor.*'rey'.*local.*ray"):
        executors.run_all([], executor="rey")
    with pytest.raises(SystemExit):  # argparse names the choices
        cli.main(["train", "--profile", "smoke", "--executor", "rey"])


def test_local_executor_reports_trained_then_found(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path))
    cfg = RunConfig(arch="resnet20", width=4, train_subset=128, batch_size=64, epochs=1, precision="fp32")
    assert executors.run_local([cfg]) == [(cfg.folder_name(), True)]
    assert executors.run_local([cfg]) == [(cfg.folder_name(), False)]


def test_smoke_pretraining_on_a_local_ray_instance_trains_every_run_once(tmp_path, monkeypatch, data_root):
    """The smoke profile's whole pretraining as Ray tasks (a local instance, 2 CPUs): every run the
    notebooks need is trained exactly once (03's chosen runs in a second round), and asking again
    trains nothing."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "0")  # Ray nices its workers to 15: any other load would starve them
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # offline CI: no usage report
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2 ** 20, log_to_driver=False)
    try:
        prof = book.load_profile("smoke")
        first = book.pretrain(prof, device="cpu", notebooks=smoke_notebooks(), executor="ray")
        names = [n for n, _ in first]
        assert len(names) == len(set(names)), "a run was submitted twice"
        assert all(trained for _, trained in first), [n for n, t in first if not t]
        planned = {c.folder_name() for nb in smoke_notebooks() for c in planned_runs(nb, prof["notebooks"][nb])}
        assert set(names) == planned
        again = book.pretrain(prof, device="cpu", notebooks=smoke_notebooks(), executor="ray")
        assert sorted(again) == sorted((n, False) for n in names)
    finally:
        ray.shutdown()
    for nb in smoke_notebooks():
        for cfg in planned_runs(nb, prof["notebooks"][nb]):
            run = find_run(cfg)
            assert run is not None and "trained_by" in run.environment


def test_local_workers_train_with_the_threads_asked_for(tmp_path, monkeypatch, data_root):
    """``jobs`` workers of ``threads`` threads each: every run's environment.json records the
    threads it trained with (the layout ``jobs: auto`` chooses is really applied)."""
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path))
    cfgs = [RunConfig(arch="resnet20", width=4, train_subset=64, batch_size=32, epochs=1, precision="fp32", seed=s)
            for s in (0, 1)]
    assert sorted(executors.run_local(cfgs, jobs=2, threads=2)) == sorted((c.folder_name(), True) for c in cfgs)
    assert [find_run(c).environment["threads"] for c in cfgs] == [2, 2]
