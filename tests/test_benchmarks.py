"""The benchmark suite: its quick mode writes a complete, well-formed result; its helpers are right.

This checks the *shape* of the results (every benchmark present with a finite numeric value,
the markdown table written), not that anything is fast.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import reference, suite, timing  # noqa: E402
from rnorm.hardware import cpu_flags  # noqa: E402


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "RNORM_CACHE": str(out / "cache")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"quick benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, files
    return out, files[0], json.loads(files[0].read_text())


def test_quick_mode_writes_every_benchmark_with_numbers(quick_result):
    _, path, res = quick_result
    assert res["mode"] == "quick"
    assert path.name == f"{res['environment']['date'][:10]}-{res['machine']}.json"
    assert set(res["benchmarks"]) == set(suite.BENCHMARKS)
    for name, entry in res["benchmarks"].items():
        assert "error" not in entry, (name, entry.get("traceback"))
        assert _number(entry["value"]), (name, entry["value"])
        assert isinstance(entry["unit"], str) and entry["unit"]
        assert entry["met"] in (True, False, None)
        assert (entry["target"] is None) == (entry["met"] is None), name
    b = res["benchmarks"]
    assert _number(b["robustnorm_vs_bn"]["before_change"]["time_ratio"]["median"])
    assert {k: _number(v["median"]) for k, v in b["robustnorm_vs_bn"]["resnet20_time_ratio"].items()} == \
        {"robustnorm_p0.2": True, "robustnorm_p1": True}
    assert _number(b["bf16_eval_attack"]["robust_acc_fp32_pct"])
    assert _number(b["bf16_eval_attack"]["robust_acc_bf16_pct"])
    assert b["pgd_wrapper_vs_torchattacks"]["max_abs_diff_adv_images"] == 0.0
    for recipe in suite.RECIPE_NAMES:
        d = b["recipe_throughput"]["recipes"][recipe]
        for p in ("fp32", "bf16_cl"):
            assert _number(d[p]["images_per_s"]) and _number(d[p]["fraction_of_peak"])
    isa = b["precision_auto_isa_capped"]  # a CPU without native bf16, emulated: auto must give fp32
    assert isa["precision_resolved"] == isa["config_precision"] == "fp32" and isa["native_bf16_seen"] is False
    assert not any(f.startswith(("avx512", "amx")) for f in set(cpu_flags()) - set(isa["flags_hidden"]))
    if "avx2" in cpu_flags():
        assert isa["cap_in_effect"] and isa["cpu_capability"] == "AVX2"
    assert all(_number(v) and v > 0 for v in isa["images_per_s"].values())
    for k in ("torch_version", "threads", "cpu_model", "date", "loadavg_before", "loaded_before"):
        assert k in res["environment"], k


def test_quick_mode_writes_the_markdown_table(quick_result):
    out, path, res = quick_result
    md = path.with_suffix(".md")
    assert md.exists() and (out / "latest.md").exists()
    text = md.read_text()
    assert (out / "latest.md").read_text() == text
    assert "| benchmark | measured | target | met? |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) - 1 >= len(suite.BENCHMARKS)


def test_reference_network_computes_the_same_function():
    from rnorm.models import resnet18

    torch.manual_seed(0)
    ours, ref = resnet18(width=4, norm="bn"), reference.torchvision_resnet18(width=4)
    assert not any(isinstance(m, type(ours.net.bn1)) for m in ref.modules())  # plain nn.BatchNorm2d
    reference.copy_rnorm_weights(ours, ref)
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(ref.eval()(x), ours.eval()(x), rtol=0, atol=1e-6)


def test_earlier_robustnorm_gives_the_same_values_and_gradients():
    from rnorm.norms import RobustNorm2d

    m = RobustNorm2d(5).double()
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    x = (torch.randn(4, 5, 6, 6, dtype=torch.float64) * 2).round()  # ties at the max and min
    g = torch.randn_like(x)
    out = []
    for before in (False, True):
        xx = x.clone().requires_grad_()
        mm = RobustNorm2d(5).double()
        mm.load_state_dict(m.state_dict())
        if before:
            with reference.robustnorm_before():
                y = mm(xx)
        else:
            y = mm(xx)
        out.append((y, *torch.autograd.grad(y, (xx, mm.weight, mm.bias), g), mm.running_range.clone()))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_ratio_summary_and_line_fit():
    s = timing.summarize([1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["rounds"] == 4
    timed = {"seconds": {"a": [1.0, 2.0], "b": [2.0, 2.0]}}
    assert timing.ratio(timed, "b", "a")["per_round"] == [2.0, 1.0]
    slope, intercept, r2 = suite._linfit([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.0) and r2 == pytest.approx(1.0)


@pytest.mark.parametrize("outcome, expected", [
    (subprocess.CompletedProcess([], -7, "", "Fatal Python error: Bus error"), "unusable: .*ended with killed by SIGBUS"),
    (subprocess.CompletedProcess([], -11, "", ""), "killed by SIGSEGV"),
    (subprocess.TimeoutExpired([], 600), r"unusable: no result within 600 s"),
    (subprocess.CompletedProcess([], 0, 'noise\n{"value": 1.5, "unit": "x"}\n', ""), None),
])
def test_a_benchmark_child_that_crashes_or_hangs_is_unusable_not_a_result(monkeypatch, outcome, expected):
    import benchmarks

    def fake_run(cmd, **kw):
        assert "--child" in cmd and kw["timeout"] == benchmarks.CHILD_LIMIT["quick"]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    monkeypatch.setattr(subprocess, "run", fake_run)
    entry = benchmarks.run_in_child("matmul_peak", quick=True, threads=1)
    if expected is None:
        assert entry == {"value": 1.5, "unit": "x"}
    else:
        import re
        assert entry["unusable"] is True and re.search(expected, entry["error"]), entry
