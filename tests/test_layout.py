"""Tests of rnorm.layout: workers x threads chosen by a rule (one one-thread worker per core), never by
timing inside the process that trains."""
from __future__ import annotations

import pytest

from rnorm import book, cli, layout
from rnorm._validate import ConfigError
from rnorm.runs import RunConfig


def tiny(**kw) -> RunConfig:
    return RunConfig(**{"arch": "resnet20", "width": 4, "train_subset": 128, "batch_size": 32, "epochs": 1,
                        "precision": "fp32", **kw})


@pytest.mark.parametrize("cores, runs, threads, expected", [
    (1, 3, None, (1, 1)),
    (2, 5, None, (2, 1)),
    (2, 1, None, (1, 1)),    # at most one worker per run
    (4, 2, None, (2, 1)),
    (16, 40, None, (16, 1)),
    (16, 40, 4, (4, 4)),     # the profile's threads: one worker per that many cores
    (2, 5, 4, (1, 4)),       # more threads than cores: still one worker
])
def test_jobs_auto_is_one_worker_per_core_on_cpu(cores, runs, threads, expected):
    lay = layout.resolve("auto", [tiny(seed=s) for s in range(runs)], threads=threads, device="cpu", cores=cores)
    assert (lay.workers, lay.threads) == expected
    assert f"{cores} core(s)" in lay.describe()


def test_jobs_given_or_nothing_to_train_or_not_cpu():
    assert (layout.resolve(3, [tiny()], device="cpu").workers, layout.resolve(3, [tiny()]).threads) == (3, 1)
    assert layout.resolve(1, [tiny()]).threads is None  # a single worker keeps torch's default
    assert "nothing to train" in layout.resolve("auto", [], device="cpu").note
    assert layout.resolve("auto", [tiny(), tiny(seed=1)], device="cuda").workers == 1


def test_layout_measures_nothing(monkeypatch):
    """The rule reads no clock: a ``time`` module that fails on every call changes nothing."""
    import time

    def no_clock(*a, **k):
        raise AssertionError("layout.resolve read the clock")
    for name in ("time", "perf_counter", "monotonic", "process_time"):
        monkeypatch.setattr(time, name, no_clock)
    assert layout.resolve("auto", [tiny(), tiny(seed=1)], device="cpu", cores=2).workers == 2


def test_pretrain_with_jobs_auto_hands_the_rule_and_the_profiles_layout_to_the_executor(tmp_path, monkeypatch):
    from rnorm import executors
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    calls = []
    monkeypatch.setattr(layout, "available_cores", lambda: 2)
    monkeypatch.setattr(executors, "run_all", lambda configs, **kw: calls.append(kw) or [(c.folder_name(), True)
                                                                                         for c in configs])
    prof = {**book.load_profile("smoke"), "jobs": "auto", "channels_last": True}
    lays: list = []
    book.pretrain(prof, device="cpu", notebooks=["02_stats_swap"], layouts=lays)
    n = len(book.planned_configs(prof, ["02_stats_swap"]))
    assert calls[0]["jobs"] == lays[0].workers == min(2, n) and calls[0]["threads"] == lays[0].threads == 1
    assert calls[0]["channels_last"] is True
    monkeypatch.setattr("rnorm.runs.find_run", lambda c, *a, **k: object())  # every run finished
    book.pretrain(prof, device="cpu", notebooks=["02_stats_swap"], layouts=lays)
    assert "nothing to train" in lays[-1].note


@pytest.mark.parametrize("value", ["many", 0, -1, 1.5])
def test_profile_jobs_must_be_a_count_or_auto(tmp_path, value):
    f = tmp_path / "p.yaml"
    f.write_text(f"jobs: {value}\nnotebooks: {{}}\n")
    with pytest.raises(ConfigError, match=r"p.yaml.*jobs"):
        book.load_profile(str(f))
    f.write_text("jobs: auto\nnotebooks: {}\n")
    assert book.load_profile(str(f))["jobs"] == "auto"


def test_cli_jobs_is_a_count_or_auto(capsys):
    assert cli._jobs(None) is None and cli._jobs("auto") == "auto" and cli._jobs("2") == 2
    with pytest.raises(ConfigError, match=r"--jobs='two'.*positive integer.*or 'auto'"):
        cli._jobs("two")
    with pytest.raises(ConfigError, match="--jobs"):
        cli._jobs("0")


def test_cli_layout_prints_the_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    assert cli.main(["layout", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "profile 'smoke'" in out and "worker(s) x" in out
