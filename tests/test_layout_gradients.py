"""Both memory layouts give the same weight gradients for every network the CPU profiles train.

This is the check that catches oneDNN issue 6035's silent case (wrong weight gradients of a 1x1
stride-2 convolution in channels_last with fewer than 8 input channels, on AVX2 kernels) on whatever
CPU runs the suite: each network runs in a child process with a timeout (``_layout_grads_child.py``),
so a kernel that hangs or crashes fails its test instead of the suite. Networks for which the layout
rule (:func:`rnorm.hardware.resolve_channels_last`) never picks channels_last on CPU are checked to be
refused instead. ``ONEDNN_MAX_CPU_ISA=AVX2`` in the environment makes any CPU compute as an AVX2 one
(the child inherits it). The GPU profiles (``gpu``, ``paper``) train on CUDA, where the rule is
channels_last for every network and oneDNN is not involved.

Same means: per parameter, the channels_last gradient's relative L2 error against a float64 reference
is below 5 % (or below 5x the contiguous fp32 gradient's, where that is larger). Measured here for the
profiles' networks (batch 8, where BatchNorm amplifies rounding): channels_last 0.3-0.9 % with both
AVX-512 and AVX2 kernels; contiguous 1e-6 (AVX-512) to 2 % (AVX2). The bug gives gradients of the
wrong size or sign, an error of order 1.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnorm import book, hardware
from rnorm.runs import build_model

CHILD = Path(__file__).with_name("_layout_grads_child.py")
PROFILES = ("smoke", "cpu")  # the profiles that train on CPU
#: The child's limit, for every network together: a healthy forward + backward of 8 images takes well
#: under a second each.
CHILD_TIMEOUT = 300
ERROR_FACTOR, ERROR_FLOOR = 5.0, 0.05


def profile_networks() -> list:
    """One config per distinct network shape the profiles train: arch, width, norm (and its power),
    input channels and size (CIFAR-10 and its JPEG copy share them); multibn with both branches."""
    from rnorm.experiments import planned_runs
    seen = {}
    for name in PROFILES:  # the notebooks' planned runs (no data read: book.planned_configs checks sizes)
        prof = book.load_profile(name)
        for cfg in (c for nb, params in prof["notebooks"].items() for c in planned_runs(nb, params)):
            from rnorm.data import info
            d = info(cfg.dataset)
            p = cfg.norm_p if cfg.norm == "robustnorm" else None
            key = (cfg.arch, cfg.width, cfg.norm, p, d.in_channels, d.image_size)
            recipe = "advprop_ebn" if cfg.norm == "multibn" else "standard"
            seen.setdefault(key, dict(arch=cfg.arch, width=cfg.width, norm=cfg.norm, norm_p=p, recipe=recipe,
                                      dataset=cfg.dataset))
    return [seen[k] for k in sorted(seen, key=str)]


NETWORKS = profile_networks()


def _id(spec: dict) -> str:
    p = f"p{spec['norm_p']:g}" if spec["norm_p"] else ""
    return f"{spec['arch']}w{spec['width']}-{spec['norm']}{p}-{spec['dataset']}"


def test_the_profiles_train_the_networks_this_checks():
    names = {_id(s) for s in NETWORKS}
    assert any(n.startswith("resnet18w16-multibn-fashion_mnist") for n in names)  # chapter 4 on the CPU
    assert any(n.startswith("resnet20w16-robustnormp0.2") for n in names)         # chapter 3


def _model(spec: dict):
    """The (untrained) network of a spec, as the child builds it."""
    from rnorm.runs import RunConfig
    return build_model(RunConfig(dataset=spec["dataset"], arch=spec["arch"], width=spec["width"], norm=spec["norm"],
                                 norm_p=spec["norm_p"] or 0.2, recipe=spec["recipe"], precision="fp32"))


def _safe(spec: dict) -> bool:
    return not hardware.unsafe_for_channels_last(_model(spec))


@pytest.fixture(scope="module")
def child_results() -> tuple[dict, str]:
    """Every rule-safe network through one child: ``({id: result}, what ended the child)``. A network
    whose line never came is the one the child hung or crashed on."""
    specs = [{**s, "id": _id(s)} for s in NETWORKS if _safe(s)]
    try:
        proc = subprocess.run([sys.executable, str(CHILD), json.dumps(specs)], capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT)
        out, end = proc.stdout, f"exit code {proc.returncode}: {proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        end = f"a hang: no progress within {CHILD_TIMEOUT} s"
    results = {r["id"]: r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    return results, end


@pytest.mark.slow
@pytest.mark.parametrize("spec", NETWORKS, ids=_id)
def test_channels_last_gives_the_contiguous_weight_gradients(spec, child_results):
    if not _safe(spec):
        with pytest.warns(RuntimeWarning, match="6035"):
            assert hardware.resolve_channels_last(True, "cpu", _model(spec)) is False
        return
    results, end = child_results
    assert _id(spec) in results, f"{_id(spec)}: the child process ended before this network, with {end}"
    res = results[_id(spec)]
    wrong = {n: (cl, plain) for n, (cl, plain) in res["params"].items()
             if not cl <= ERROR_FACTOR * plain + ERROR_FLOOR}
    assert not wrong, (f"{_id(spec)} ({res['cpu_capability']}): channels_last weight gradients are wrong "
                       f"(relative error vs float64 of channels_last, of contiguous): {wrong}")
