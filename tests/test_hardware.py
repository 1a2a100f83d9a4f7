"""Tests of rnorm.hardware: precision and memory layout chosen by the machine, not hard-coded."""
from __future__ import annotations

import json

import pytest
import torch

from rnorm import hardware as hw
from rnorm._validate import ConfigError


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma"}, "fp32"),                        # AVX2 only: bf16 would be emulated (~10x slower)
    ({"avx2", "avx512f"}, "fp32"),                    # AVX-512 without its bf16 extension
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ({"avx2", "amx_bf16", "amx_tile"}, "bf16"),
])
def test_auto_precision_follows_the_cpu_flags(flags, expected):
    assert hw.resolve_precision("auto", "cpu", flags=flags) == expected


def test_explicit_precision_is_kept_and_cuda_resolves_to_bf16():
    assert hw.resolve_precision("fp32", "cpu", flags={"avx512_bf16"}) == "fp32"
    assert hw.resolve_precision("bf16", "cpu", flags={"avx2"}) == "bf16"
    assert hw.resolve_precision("auto", "cuda", flags={"avx2"}) == "bf16"
    with pytest.raises(ConfigError, match="precision='fp16'.*'auto'"):
        hw.resolve_precision("fp16")


def test_native_bf16_reads_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert hw.cpu_flags(str(f)) >= {"avx2", "avx512_bf16"}
    assert hw.native_bf16(hw.cpu_flags(str(f)))
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert not hw.native_bf16(hw.cpu_flags(str(f)))


def test_runconfig_key_holds_the_resolved_precision(monkeypatch):
    from rnorm.runs import RunConfig
    monkeypatch.setattr(hw, "native_bf16", lambda flags=None: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = RunConfig(precision="auto")
    assert cfg.precision == "fp32" and cfg.key() == RunConfig(precision="fp32").key()
    monkeypatch.setattr(hw, "native_bf16", lambda flags=None: True)
    assert RunConfig(precision="auto").key() == RunConfig(precision="bf16").key() != cfg.key()


def test_auto_layout_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RNORM_CACHE", str(tmp_path))
    calls = []

    def fake(make_model, shape, channels_last, precision, device, reps=3):
        calls.append(channels_last)
        return 1.0 if channels_last else 2.0  # channels_last twice as fast
    monkeypatch.setattr(hw, "_time_layout", fake)
    assert hw.resolve_channels_last("auto", "cpu", "fp32") is True
    n = len(calls)
    assert n == 4 and calls.count(True) == 2
    assert hw.resolve_channels_last("auto", "cpu", "fp32") is True and len(calls) == n  # from the cache
    saved = json.loads((tmp_path / "hardware.json").read_text())
    assert any(v["channels_last"] is True for v in saved.values())
    monkeypatch.setattr(hw, "_time_layout", lambda m, s, cl, p, d, reps=3: 1.0)  # a tie keeps the default layout
    assert hw.resolve_channels_last("auto", "cpu", "fp32", model_id="other") is False
    assert hw.resolve_channels_last(True) is True and hw.resolve_channels_last(False) is False


@pytest.mark.parametrize("bad", ["yes", 1, None, "True"])
def test_layout_must_be_true_false_or_auto(bad):
    with pytest.raises(ConfigError, match="channels_last"):
        hw.check_layout(bad)
