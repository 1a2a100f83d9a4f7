"""Tests of rnorm.layout: workers x threads chosen by measurement, once per machine and network."""
from __future__ import annotations

import json

import pytest

from rnorm import book, cli, layout
from rnorm._validate import ConfigError
from rnorm.runs import RunConfig


def tiny(**kw) -> RunConfig:
    return RunConfig(**{"arch": "resnet20", "width": 4, "train_subset": 128, "batch_size": 32, "epochs": 1,
                        "precision": "fp32", **kw})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNORM_CACHE", str(tmp_path))
    return tmp_path / "hardware.json"


@pytest.mark.parametrize("cores, runs, expected", [
    (1, 3, [(1, 1)]),
    (2, 5, [(2, 1), (1, 2)]),
    (2, 1, [(1, 1), (1, 2)]),
    (4, 2, [(2, 1), (2, 2), (1, 4)]),
    (6, 10, [(6, 1), (3, 2), (1, 4), (1, 6)]),
    (16, 40, [(16, 1), (8, 2), (4, 4), (2, 8), (1, 16)]),
])
def test_candidates_use_at_most_the_cores_and_one_worker_per_run(cores, runs, expected):
    got = layout.candidates(cores, runs)
    assert got == expected
    assert all(w * t <= cores and w <= runs for w, t in got)


def test_choose_takes_the_fastest_measured_layout_and_measures_once(cache):
    rates = {(2, 1): 900.0, (1, 2): 1100.0, (1, 1): 500.0}
    calls = []

    def fake(config, workers, threads):
        calls.append((workers, threads))
        return rates[(workers, threads)]

    cfgs = [tiny(seed=s) for s in range(3)]
    lay = layout.choose(cfgs, cores=2, measure_fn=fake, log=lambda *_: None)
    assert (lay.workers, lay.threads) == (1, 2) and lay.measured == {"2x1": 900.0, "1x2": 1100.0}
    assert "1 worker(s) x 2 thread(s)" in lay.describe() and "2x1: 900 img/s" in lay.describe()
    assert calls == [(2, 1), (1, 2)]
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["images_per_s"] == {"2x1": 900.0, "1x2": 1100.0} and "load_before" in entry
    # cached: the same machine and network measure nothing again ...
    assert (layout.choose(cfgs, cores=2, measure_fn=fake, log=lambda *_: None).workers, len(calls)) == (1, 2)
    # ... and one run left measures only the layout not yet known (1 worker x 1 thread)
    one = layout.choose(cfgs[:1], cores=2, measure_fn=fake, log=lambda *_: None)
    assert calls[2:] == [(1, 1)] and (one.workers, one.threads) == (1, 2)
    # another network is another question
    layout.choose([tiny(width=8)], cores=2, measure_fn=fake, log=lambda *_: None)
    assert calls[3:] == [(1, 1), (1, 2)]


def test_choose_prefers_processes_when_they_are_faster(cache):
    lay = layout.choose([tiny(seed=s) for s in range(4)], cores=2, log=lambda *_: None,
                        measure_fn=lambda c, w, t: {(2, 1): 1015.0, (1, 2): 590.0}[(w, t)])
    assert (lay.workers, lay.threads) == (2, 1)


def test_measure_runs_the_layout_for_real(cache, data_root):
    """Two one-thread processes really train the run's network on random images of its shape."""
    rate = layout.measure(tiny(), workers=2, threads=1, batches=2)
    assert 0 < rate < 1e6
    assert any("threads 1" in k for k in json.loads(cache.read_text()))  # the memory layout was resolved first


def test_resolve_given_auto_and_gpu(cache, monkeypatch):
    assert layout.resolve(3, [tiny()], threads=2) == layout.Layout(3, 2, note="as given")
    assert layout.resolve(2, [tiny()]).threads == 1
    assert layout.resolve(1, [tiny()]).threads is None  # one worker without a thread count: torch's default
    monkeypatch.setattr(layout, "choose", lambda configs, log: layout.Layout(7, 1))
    assert layout.resolve("auto", [tiny()], device="cpu").workers == 7
    assert layout.resolve("auto", [tiny()], device="cuda:0").workers == 1
    assert layout.resolve("auto", [tiny()], device="mps").workers == 1  # not measured on the CPU
    assert "nothing to train" in layout.resolve("auto", [], device="cpu").note
    with pytest.raises(ConfigError, match="jobs=0"):
        layout.resolve(0, [tiny()])


def test_a_layout_that_cannot_be_measured_is_skipped_and_said(cache):
    def fake(config, workers, threads):
        if threads == 2:
            raise layout.MeasurementError(f"measuring {workers} worker(s) x 2 thread(s): a worker exited with code 1")
        return 800.0

    lay = layout.choose([tiny(), tiny(seed=1)], cores=2, measure_fn=fake, log=lambda *_: None)
    assert (lay.workers, lay.threads) == (2, 1) and "not measured" in lay.note and "code 1" in lay.note
    none = layout.choose([tiny(width=8)], cores=2, log=lambda *_: None,
                         measure_fn=lambda c, w, t: (_ for _ in ()).throw(layout.MeasurementError("boom")))
    assert (none.workers, none.threads) == (1, 1) and "boom" in none.note


def test_a_cached_measurement_taken_under_load_says_so_each_time(cache):
    cfgs = [tiny(), tiny(seed=1)]
    layout.choose(cfgs, cores=2, measure_fn=lambda c, w, t: 100.0 * w, log=lambda *_: None)
    known = json.loads(cache.read_text())
    key = next(iter(known))
    known[key]["load_before"] = 1.7
    cache.write_text(json.dumps(known))
    again = layout.choose(cfgs, cores=2, measure_fn=None, log=lambda *_: None)  # from the cache: no measure_fn call
    assert "1-min load 1.70" in again.note and "--remeasure" in again.note


def test_measure_names_the_layout_when_a_worker_dies(cache, data_root):
    with pytest.raises(layout.MeasurementError, match=r"2 worker\(s\) x 1 thread\(s\).*exited with code"):
        layout.measure(tiny(), workers=2, threads=1, batches=-1)


def test_pretrain_with_jobs_auto_trains_with_the_measured_layout(cache, tmp_path, monkeypatch):
    """``jobs: auto``: pretrain measures on the runs still to train and hands the chosen workers x
    threads to the executor; with every run finished it measures nothing."""
    from rnorm import executors
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    measured, calls = [], []
    monkeypatch.setattr(layout, "measure", lambda c, w, t: measured.append((w, t)) or {1: 300.0, 2: 500.0}[t])
    monkeypatch.setattr(layout, "available_cores", lambda: 2)
    monkeypatch.setattr(executors, "run_all", lambda configs, **kw: calls.append(kw) or [(c.folder_name(), True)
                                                                                         for c in configs])
    prof = {**book.load_profile("smoke"), "jobs": "auto"}
    lays: list = []
    book.pretrain(prof, device="cpu", notebooks=["02_stats_swap"], layouts=lays)
    assert measured and calls[0]["jobs"] == lays[0].workers == 1 and calls[0]["threads"] == lays[0].threads == 2
    monkeypatch.setattr("rnorm.runs.find_run", lambda c, *a, **k: object())  # every run finished
    measured.clear()
    book.pretrain(prof, device="cpu", notebooks=["02_stats_swap"], layouts=lays)
    assert not measured and "nothing to train" in lays[-1].note


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


def test_cli_layout_measures_once_then_reads_the_cache(cache, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(layout, "measure", lambda c, w, t: calls.append((w, t)) or 100.0 * w + t)
    assert cli.main(["layout", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "profile 'smoke'" in out and "worker(s) x" in out and calls
    n = len(calls)
    assert cli.main(["layout", "--profile", "smoke"]) == 0 and len(calls) == n  # cached
    assert cli.main(["layout", "--profile", "smoke", "--remeasure"]) == 0 and len(calls) == 2 * n
