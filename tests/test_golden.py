"""Golden tests: what an evaluation and a short training run compute stays what it was when the
published runs and evaluation caches were made (``tests/golden/``).

The evaluation cache key (:func:`rnorm.experiments.common.cached_evaluate`) holds an explicit version
instead of a hash of the library's code, so that a change that computes the same numbers (a new input
check, a refactoring) keeps every published cache valid. These tests are what holds the version honest:
a change of what an evaluation or a training run computes fails here, and must bump
``EVAL_CACHE_VERSION`` (evaluations) or ``SCHEMA_VERSION`` (runs) and re-record the golden files.

The models are float64 (evaluation) or tiny, so the comparison does not depend on the CPU's kernels
beyond rounding: the evaluation's per-image bits are compared exactly (its decisions sit far from ties),
the trained weights within a tolerance far below what any change of semantics moves them.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn as nn

GOLDEN = Path(__file__).parent / "golden"


def small_trained_net():
    """A float64 conv + BatchNorm net trained for 60 full-batch steps on three separable classes, and the
    24 held-out images it is evaluated on."""
    from rnorm.norms import BatchNorm2d
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 3)).double()
    y = torch.arange(48) % 3
    x = 0.35 * torch.rand(48, 1, 8, 8, dtype=torch.float64)
    for c in range(3):
        x[y == c, :, c * 2:c * 2 + 3, :] += 0.5
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    net.train()
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[:24]), y[:24]).backward()
        opt.step()
    return net.eval(), x[24:], y[24:]


GOLDEN_EVAL_COLUMNS = ["attack", "eps_label", "stats", "batch_size", "gradient", "n", "correct", "correct_bits"]


def golden_evaluation() -> pd.DataFrame:
    from rnorm.evaluate import evaluate
    net, x, y = small_trained_net()
    frame = evaluate(net, x, y, attacks=("clean", "fgsm", "pgd"), eps=("8/255", "0.1"),
                     stats=("population", "batch"), batch_sizes=(8,), device="cpu", progress=False,
                     per_image=True)
    return frame[GOLDEN_EVAL_COLUMNS].astype(str).reset_index(drop=True)


def test_evaluation_computes_what_the_published_caches_hold():
    expected = pd.read_csv(GOLDEN / "evaluation.csv", dtype=str, keep_default_na=False)
    got = golden_evaluation()
    assert (got["correct"] != got["n"]).any(), "the golden model must be attackable, or the test proves nothing"
    pd.testing.assert_frame_equal(got, expected)


GOLDEN_RUN = dict(dataset="fashion_mnist", arch="resnet20", width=8, recipe="advprop", norm="multibn", epochs=1,
                  batch_size=32, train_subset=96, train_steps=1, train_eps="2/255", precision="fp32", lr=0.05)


def weight_fingerprint(state: dict) -> dict:
    """Per tensor of a state dict: its sum and the sum of its absolute values (float64)."""
    return {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in sorted(state.items())
            if v.is_floating_point()}


@pytest.mark.data
def test_a_short_training_run_gives_the_recorded_weights(tmp_path):
    """Bit-identical on the CPU that recorded it; within 1e-4 (relative, per tensor) anywhere, where a
    change of initialisation, data order, augmentation, attack or loss moves the sums by far more."""
    from rnorm.runs import RunConfig, train
    cfg = RunConfig(**GOLDEN_RUN)
    run = train(cfg, runs_dir=tmp_path, device="cpu", progress=False, threads=1, channels_last=False, archive=[])
    expected = json.loads((GOLDEN / "training.json").read_text())
    assert cfg.key() == expected["key"], "the golden run's key changed: every published run would be re-keyed"
    got = weight_fingerprint(run.state_dict())
    assert got.keys() == expected["weights"].keys()
    for name, (s, a) in expected["weights"].items():
        assert got[name][1] == pytest.approx(a, rel=1e-4, abs=1e-6), name
        assert got[name][0] == pytest.approx(s, rel=1e-4, abs=1e-4 * max(a, 1e-3)), name
    assert list(run.history["loss"]) == pytest.approx(expected["loss"], rel=1e-4)


@pytest.mark.data
@pytest.mark.slow
def test_every_published_evaluation_cache_is_found_under_the_current_key():
    """The evaluation key is stable: each published run's full-test clean evaluation (every notebook
    computes one per model it uses) is found in ``models/`` by the key the current code computes."""
    from rnorm.experiments.common import evaluation_path, full_test_accuracy_args
    root = Path(__file__).resolve().parent.parent / "models"
    evaluated = [d for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("eval-*.csv"))]
    assert len(evaluated) >= 30
    sets = {}
    for folder in evaluated:
        cfg = json.loads((folder / "config.json").read_text())
        if cfg["dataset"] not in sets:
            sets[cfg["dataset"]] = full_test_accuracy_args(cfg["dataset"])
        x, y, args = sets[cfg["dataset"]]
        run = SimpleNamespace(config=load_config(folder), path=folder)
        assert evaluation_path(run, x, y, **args).is_file(), folder.name


def load_config(folder: Path):
    from rnorm.runs import RunConfig
    cfg = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert folder.name == cfg.folder_name(), "a published run's key or folder name changed"
    return cfg


def test_every_published_run_keeps_its_key_and_folder_name():
    root = Path(__file__).resolve().parent.parent / "models"
    folders = [d for d in sorted(root.iterdir()) if (d / "config.json").is_file()]
    assert len(folders) >= 48
    for folder in folders:
        load_config(folder)
