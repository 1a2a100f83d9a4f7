"""Tests of rnorm.hardware: precision and memory layout chosen by the machine, not hard-coded."""
from __future__ import annotations

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


def test_layout_rule_contiguous_on_cpu_channels_last_on_cuda_or_when_asked():
    from rnorm.models import resnet18
    safe = resnet18(width=16)
    assert hw.resolve_channels_last("auto", "cpu", safe) is False
    assert hw.resolve_channels_last("auto", "cuda", safe) is True
    assert hw.resolve_channels_last(True, "cpu", safe) is True
    assert hw.resolve_channels_last(False, "cpu", safe) is False
    assert hw.resolve_channels_last(False, "cuda", safe) is False


def test_layout_rule_never_picks_channels_last_for_the_onednn_6035_shape():
    """1x1 stride-2 convolutions with fewer than 8 input channels (ResNet-20 width 4's shortcuts)."""
    from rnorm.models import resnet20
    narrow, wide = resnet20(width=4), resnet20(width=8)
    bad = hw.unsafe_for_channels_last(narrow)
    assert bad and all(narrow.get_submodule(n).in_channels < 8 for n in bad)
    assert hw.unsafe_for_channels_last(wide) == []
    with pytest.warns(RuntimeWarning, match=r"oneDNN issue 6035"):
        assert hw.resolve_channels_last(True, "cpu", narrow) is False
    assert hw.resolve_channels_last(True, "cpu", wide) is True
    assert hw.resolve_channels_last(True, "cuda", narrow) is True  # cuDNN has no such bug


def test_a_hand_built_layer_of_that_shape_is_named():
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1, stride=2), torch.nn.Conv2d(8, 8, 1, stride=2),
                              torch.nn.Conv2d(4, 8, 3, stride=2), torch.nn.Conv2d(4, 8, 1, stride=1))
    assert hw.unsafe_for_channels_last(net) == ["0"]


@pytest.mark.parametrize("bad", ["yes", 1, None, "True"])
def test_layout_must_be_true_false_or_auto(bad):
    with pytest.raises(ConfigError, match="channels_last"):
        hw.check_layout(bad)
