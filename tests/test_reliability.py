"""No silently wrong result: each root cause of the reliability review, as a mechanism, with its bad inputs.

Data verified on every load is tested in test_data.py (the corruption cases with the cache already
built); results written all or nothing in test_experiments.py; unknown notebook parameters in
test_experiments.py and test_notebooks.py.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from rnorm import _io, book, cli, norms
from rnorm._validate import ConfigError, check_bool, check_float, check_int
from rnorm.models import Normalize, resnet20
from rnorm.runs import RunConfig, RunError


# --- 2. booleans are booleans -------------------------------------------------------------------
@pytest.mark.parametrize("value", ["False", "yes", "nope", 1, 0, None, "True"])
def test_booleans_are_validated_as_booleans(value):
    with pytest.raises(ConfigError, match="True or False"):
        check_bool("flag", value)


@pytest.mark.parametrize("call", [
    lambda: __import__("rnorm.attacks", fromlist=["x"]).make_attack("pgd", torch.nn.Linear(2, 2), 0.1,
                                                                     random_start="False"),
    lambda: RunConfig(augment="no"),
    lambda: norms.make_norm("bn", 8, affine="yes"),
    lambda: __import__("rnorm.experiments.stats_swap", fromlist=["x"]).StatsSwapParams(include_nonorm="nope"),
    lambda: __import__("rnorm.experiments.shift", fromlist=["x"]).ShiftParams(progress="yes"),
])
def test_no_truthy_string_is_taken_as_true(call):
    with pytest.raises(ConfigError):
        call()


# --- 3. numbers: finite, in range, ints as ints, scientific notation -----------------------------
@pytest.mark.parametrize("value,ok", [(float("nan"), False), (float("inf"), False), (-float("inf"), False),
                                      ("1e-3", True), ("abc", False), (True, False), (1e-3, True)])
def test_one_numeric_validator(value, ok):
    if ok:
        assert check_float("lr", value, min_value=0.0, min_inclusive=False) == pytest.approx(1e-3)
    else:
        with pytest.raises(ConfigError, match="lr="):
            check_float("lr", value, min_value=0.0, min_inclusive=False)
    with pytest.raises(ConfigError):
        check_int("epochs", 2.5)


@pytest.mark.parametrize("kw,param", [(dict(lr=float("inf")), "lr"), (dict(lr=float("nan")), "lr"),
                                      (dict(weight_decay=float("inf")), "weight_decay")])
def test_runconfig_refuses_non_finite_numbers_before_any_file(kw, param):
    with pytest.raises(ConfigError, match=param):
        RunConfig(**kw)


def test_yaml_reads_scientific_notation_as_a_number(tmp_path):
    assert book.parse_cli_value("1e-3") == pytest.approx(1e-3)
    f = tmp_path / "p.yaml"
    f.write_text("defaults:\n  lr: 5e-2\n")
    assert book.load_profile(str(f))["notebooks"]["02_stats_swap"]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("mean,std", [((0.5,), (float("nan"),)), ((float("nan"),), (0.2,)), ((0.5,), (0.0,)),
                                      ((0.5, 0.5), (0.2,))])
def test_input_normalization_must_be_finite_and_positive(mean, std):
    with pytest.raises(ConfigError, match="mean|std"):
        Normalize(mean, std)


@pytest.mark.parametrize("kw,param", [(dict(momentum=5), "momentum"), (dict(momentum=-0.1), "momentum"),
                                      (dict(eps=0.0), "eps"), (dict(eps=float("nan")), "eps")])
def test_batchnorm_arguments_have_ranges(kw, param):
    with pytest.raises(ConfigError, match=param):
        norms.BatchNorm2d(8, **kw)
    norms.BatchNorm2d(8, momentum=None)  # cumulative average, as nn.BatchNorm2d


def _model(classes=10):
    torch.manual_seed(0)
    return resnet20(num_classes=classes, in_channels=1, width=4, mean=(0.5,), std=(0.25,)).eval()


def test_nan_images_and_impossible_labels_are_errors_not_zero_accuracy():
    from rnorm.evaluate import accuracy, evaluate
    x = torch.rand(8, 1, 28, 28)
    y = torch.arange(8)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        accuracy(_model(), bad, y)
    with pytest.raises(ConfigError, match="labels range over -1"):
        accuracy(_model(), x, y - 1)
    with pytest.raises(ConfigError, match="the model has 5 outputs"):  # a 5-class model on 10-class labels
        evaluate(_model(classes=5), x, y, attacks=("clean",), batch_sizes=(8,), device="cpu")


# --- 4. mistakes caught before training or a kernel -----------------------------------------------
@pytest.fixture
def fake_data(data_root, monkeypatch):
    monkeypatch.setenv("RNORM_DATA", str(data_root))
    return data_root


def _no_training(monkeypatch):
    import rnorm.runs as runs
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained before the check"))
    from _book_patch import patch_book
    patch_book(monkeypatch, "pretrain", lambda *a, **k: pytest.fail("trained before the check"))
    import papermill
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("kernel started before the check"))


@pytest.mark.parametrize("args,message", [
    (["-p", "test_n", "20000"], "test_n=20000 is larger than"),
    (["-p", "eval_batch_size", "500"], "eval_batch_size=500 is larger than test_n"),
    (["-p", "device", "cuda"], "CUDA is not available"),
    (["-p", "epsilon", "0.5"], "has no parameter 'epsilon'"),
    (["-p", "profile", "cpu"], "has no parameter 'profile'"),
    (["-p", "seeds", "[0, 0]"], "repeats"),
    (["-p", "lr", "inf"], "finite"),
])
def test_cli_run_refuses_before_training(args, message, fake_data, monkeypatch, capsys, tmp_path):
    _no_training(monkeypatch)
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    assert cli.main(["run", "02_stats_swap", "--out-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").rglob("*.ipynb"))  # no stray temporary notebook


def test_unusable_runs_folder_or_data_root_is_one_line(fake_data, monkeypatch, capsys, tmp_path):
    _no_training(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("RNORM_RUNS", str(blocker))
    assert cli.main(["run", "02_stats_swap", "--out-dir", str(tmp_path / "out")]) == 2
    assert "RNORM_RUNS" in capsys.readouterr().err
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_DATA", str(blocker))
    assert cli.main(["run", "02_stats_swap", "--out-dir", str(tmp_path / "out")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [(["--only", "02_stats_swp"], "Did you mean '02_stats_swap'"),
                                          (["--jobs", "500"], "--jobs=500 is out of range; allowed: a positive integer (at most")])
def test_cli_book_arguments(args, message, capsys):
    assert cli.main(["book", "--profile", "smoke", "--no-build", *args]) == 2
    assert message in capsys.readouterr().err


# --- 5. parameters nobody asked for ---------------------------------------------------------------
def test_empty_powers_and_repeated_seeds_are_errors():
    from rnorm.experiments.robustnorm import RobustNormParams
    with pytest.raises(ConfigError, match="powers=\\[\\] is empty"):
        RobustNormParams(powers=[])
    with pytest.raises(ConfigError, match="repeats"):
        RobustNormParams(seeds=[1, 1])


# --- 6. a full disk names the file -----------------------------------------------------------------
def test_disk_full_while_checkpointing_says_so(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))

    def write(f):
        raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 1234 vs 567")
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(_io.DiskFullError, match=f"disk full while writing {target}"):
        _io._atomic_write(target, write, "wb")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --- 7. hand-damaged run folders ------------------------------------------------------------------
@pytest.fixture
def finished_run(fake_data, tmp_path, monkeypatch):
    from rnorm import runs
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    cfg = RunConfig(arch="resnet20", width=4, train_subset=64, batch_size=32, epochs=1, precision="fp32")
    return runs.train(cfg, device="cpu", progress=False)


@pytest.mark.parametrize("damage,file", [
    (lambda p: (p / "model.pt").write_bytes((p / "model.pt").read_bytes()[:100]), "model.pt"),
    (lambda p: (p / "config.json").write_text("{not json"), "config.json"),
    (lambda p: (p / "config.json").write_text(json.dumps({"lr": -1})), "config.json"),
    (lambda p: (p / "history.csv").write_text('a,b\n1,"2'), "history.csv"),
])
def test_damaged_run_file_is_named_with_what_to_do(finished_run, damage, file):
    from rnorm import runs
    damage(finished_run.path)
    with pytest.raises(RunError, match=f"{file} is damaged.*Delete the folder"):
        runs.load_run(finished_run.path).model()


@pytest.mark.parametrize("missing", ["model.pt", "history.csv"])
def test_a_done_run_missing_a_file_is_damaged_not_untrained(finished_run, missing, monkeypatch):
    """A finished run whose weights or history were deleted is named as damaged; it is not trained
    again as if it had never been trained."""
    from rnorm import runs
    (finished_run.path / missing).unlink()
    monkeypatch.setattr(runs, "_train_locked", lambda *a, **k: pytest.fail("trained a damaged finished run"))
    with pytest.raises(RunError, match=f"{missing} is damaged.*marked done.*Delete the folder"):
        runs.train(finished_run.config, device="cpu", progress=False)


def test_a_short_history_is_damaged(finished_run):
    from rnorm import runs
    (finished_run.path / "history.csv").write_text("epoch,loss\n")
    with pytest.raises(RunError, match=r"history.csv is damaged.*0 epoch row\(s\) for a run of 1"):
        runs.load_run(finished_run.path)


# --- 7b. a diverging run is never done --------------------------------------------------------------
def test_a_run_whose_loss_becomes_nan_stops_names_the_step_and_is_never_done(fake_data, tmp_path):
    from rnorm import runs
    cfg = RunConfig(arch="resnet20", width=8, train_subset=96, batch_size=32, epochs=2, lr=1e30, precision="fp32")
    with pytest.raises(RunError, match=r"diverged: the training loss became (nan|inf) at epoch 1, step \d+\..*"
                                       r"not marked done.*no epoch finished"):
        runs.train(cfg, runs_dir=tmp_path, device="cpu", progress=False, channels_last=False)
    folder = tmp_path / cfg.folder_name()
    assert not (folder / "done").exists() and not (folder / "model.pt").exists()
    assert runs.find_run(cfg, tmp_path, archive=[]) is None


def test_nan_weights_after_a_finite_loss_also_stop_the_run(fake_data, tmp_path, monkeypatch):
    """The epoch's loss was finite but the last step left NaN weights: caught after the epoch, and the
    previous epoch's checkpoint is kept."""
    from rnorm import runs, train as T
    cfg = RunConfig(arch="resnet20", width=8, train_subset=96, batch_size=32, epochs=2, precision="fp32")
    real = T.run_epoch

    def poisoning(model, *a, epoch, **k):
        row = real(model, *a, epoch=epoch, **k)
        if epoch == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return row
    monkeypatch.setattr(T, "run_epoch", poisoning)
    with pytest.raises(RunError, match=r"after epoch 2 the weights .* are not finite.*last good checkpoint "
                                       r"\(epoch 1\)"):
        runs.train(cfg, runs_dir=tmp_path, device="cpu", progress=False, channels_last=False)
    folder = tmp_path / cfg.folder_name()
    assert not (folder / "done").exists()
    assert runs.load_checkpoint(folder, cfg)["epoch"] == 1


def test_a_finite_but_exploding_loss_is_warned_about_in_history_and_environment(tmp_path):
    from rnorm import runs
    cfg = RunConfig(arch="resnet20", width=8, precision="fp32")
    env, row = {}, {"loss": 2.2e10}
    runs._warn_if_diverging(row, cfg, env, tmp_path, epoch=3)
    assert "diverging" in row["warning"] and env["warnings"][0].startswith("epoch 4: diverging")
    assert "diverging" in json.loads((tmp_path / "environment.json").read_text())["warnings"][0]
    quiet = {"loss": 2.0}
    runs._warn_if_diverging(quiet, cfg, {}, tmp_path, epoch=0)
    assert "warning" not in quiet


# --- 8. a lock whose pid was reused ---------------------------------------------------------------
def test_lock_of_a_reused_pid_is_stale(tmp_path):
    """The pid is alive (it is a live process: the test's parent), but it started at another time."""
    lock = tmp_path / "lock"
    rec = {"pid": os.getppid(), "host": __import__("socket").gethostname(), "token": "t", "time": 0,
           "start": (_io.process_start(os.getppid()) or 0) + 12345, "boot_id": _io.boot_id()}
    lock.write_text(json.dumps(rec))
    with _io.FileLock(lock, poll=0.01, timeout=2) as held:
        assert held.recovered_stale
    rec["start"] = _io.process_start(os.getppid())  # the real owner: not stale
    lock.write_text(json.dumps(rec))
    with pytest.raises(_io.LockTimeout):
        _io.FileLock(lock, poll=0.01, timeout=0.2, on_wait=lambda m: None).acquire()


# --- 9. API misuse gets a ConfigError naming the parameter ------------------------------------------
@pytest.mark.parametrize("call,param", [
    (lambda: norms.convert_norms(None, "bn"), "model"),
    (lambda: norms.route(torch.nn.Sequential(norms.MultiBatchNorm2d(4, branches=("adv",))), [("main",)]), "branch"),
    (lambda: norms.make_norm("bn", "16"), "num_features"),
    (lambda: norms.make_norm("bn", 0), "num_features"),
])
def test_api_misuse_is_a_config_error(call, param):
    with pytest.raises(ConfigError, match=param):
        call()
