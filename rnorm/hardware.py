"""What the machine can do, decided by detection and measurement, never hard-coded.

* :func:`resolve_precision` turns ``"auto"`` into ``"bf16"`` (autocast) where bf16 arithmetic is
  native -- CUDA, or a CPU with AVX512-BF16 or AMX -- and into ``"fp32"`` elsewhere. On a CPU
  without native bf16, PyTorch emulates it and a training step is about 10x slower than fp32
  (measured on an AVX2-only AMD EPYC: 25 vs 317 img/s), so ``auto`` never picks it there.
* :func:`resolve_channels_last` chooses the memory layout by a rule, never by timing (a timing run
  inside a training or test process can hang or corrupt memory, below): ``"auto"`` is channels_last
  on CUDA and contiguous on CPU; ``True`` (asked for, e.g. by a profile) is channels_last on CPU too,
  except for a network with a layer of the shape that oneDNN mis-computes (:func:`unsafe_for_channels_last`),
  which stays contiguous, with a warning. The layout changes no result beyond float rounding, so it is
  a run-time choice recorded in ``environment.json``, not part of a run's key.

  Why channels_last stays available on CPU: it trained the profiles' width-16 ResNets 1.22x faster
  than contiguous (benchmark 9, an Intel Xeon capped at AVX2, fp32), 1.34x (an AMD EPYC with AVX2
  only, fp32) and 1.24x (an AMD EPYC with AVX-512 BF16, bf16; README, "Memory layout"). Why it is not the CPU default: oneDNN issue
  6035 -- with AVX2 kernels, the backward-weights pass of a 1x1 stride-2 convolution in nhwc with fewer
  than 8 input channels hangs, segfaults or returns wrong weight gradients without an error; ResNet-20
  width 4 has such shortcuts. ``tests/test_layout_gradients.py`` checks, in a child process with a
  timeout, that both layouts give the same weight gradients for every network the CPU profiles train.
* :func:`resolve_device` turns ``"auto"`` into cuda where it is available, else cpu, and checks
  a named device exists (re-exported by :mod:`rnorm.runs`).
* :func:`environment` is the one record of the machine written beside runs, results and
  benchmarks.
"""
from __future__ import annotations

import os
import platform
import socket
import warnings

import torch

from ._validate import ConfigError, check_choice, suggest

PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto", True, False)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; otherwise ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise ConfigError(f"device={device!r} must be a string: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, _, idx = text.partition(":")
    allowed = ("auto", "cpu", "cuda", "mps")
    if base not in allowed[1:] or (idx and (not idx.isdigit() or base != "cuda")):
        raise ConfigError(f"device={device!r} is not allowed; choose 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
                          + suggest(base, allowed))
    if base == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} requested but CUDA is not available; use 'cpu' or 'auto'.")
        if idx and int(idx) >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present.")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device={device!r} requested but MPS is not available; use 'cpu' or 'auto'.")
    return torch.device(text)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``path`` (empty where it cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags=None) -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16).

    ``flags`` defaults to :func:`cpu_flags`; where /proc/cpuinfo is missing, torch's own CPU
    capability (``torch.backends.cpu.get_cpu_capability()``, "AVX512_BF16"/"AMX..." on such CPUs
    in recent builds) is consulted.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    if any(f in flags for f in BF16_FLAGS):
        return True
    if flags:
        return False
    try:
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        return False
    return "BF16" in cap or "AMX" in cap


def resolve_precision(precision: str = "auto", device=None, *, flags=None) -> str:
    """``"fp32"`` or ``"bf16"`` for a requested precision (``auto``, ``fp32``, ``bf16``) on ``device``.

    ``auto``: bf16 on CUDA and on CPUs with native bf16 (:func:`native_bf16`), fp32 otherwise.
    ``device`` None means the default device (CUDA when available). An explicit ``bf16`` is kept
    even where it is emulated: the user asked for it.
    """
    check_choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        return "bf16"
    return "bf16" if native_bf16(flags) else "fp32"


def check_layout(value) -> object:
    """``channels_last`` must be True, False or ``"auto"``."""
    if value not in LAYOUTS or (not isinstance(value, bool) and value != "auto"):
        raise ConfigError(f"channels_last={value!r} is not allowed; use True, False or 'auto'.")
    return value


#: The input channels below which oneDNN's AVX2 nhwc 1x1 stride-2 backward is wrong (issue 6035).
ONEDNN_6035_MIN_CHANNELS = 8


def unsafe_for_channels_last(model: torch.nn.Module) -> list[str]:
    """The names of ``model``'s convolutions of the shape oneDNN issue 6035 mis-computes in channels_last
    on CPU: a 1x1 kernel, a stride above 1 and fewer than :data:`ONEDNN_6035_MIN_CHANNELS` input channels.
    Applied on every CPU, not only on AVX2 ones: the rule must not depend on what a machine happens to be."""
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and max(m.stride) > 1
            and m.in_channels < ONEDNN_6035_MIN_CHANNELS]


def resolve_channels_last(value="auto", device="cpu", model: torch.nn.Module | None = None) -> bool:
    """The memory layout to train ``model`` in on ``device``, by rule (module docstring), never timed.

    ``"auto"``: True on CUDA, False on CPU. ``True``: True, except on CPU for a model with a layer that
    :func:`unsafe_for_channels_last` names (then False, with a warning naming the layers). ``False``:
    False. ``model`` None counts as a model without such layers.
    """
    check_layout(value)
    on_cuda = torch.device(device).type == "cuda"
    if value == "auto":
        return on_cuda
    if not value or on_cuda:
        return value
    unsafe = unsafe_for_channels_last(model) if model is not None else []
    if unsafe:
        warnings.warn(f"channels_last=True is not used for this network on CPU: its layers {', '.join(unsafe[:4])}"
                      f"{' ...' if len(unsafe) > 4 else ''} are 1x1 stride-2 convolutions with fewer than "
                      f"{ONEDNN_6035_MIN_CHANNELS} input channels, whose channels_last backward oneDNN computes "
                      f"wrongly or not at all on AVX2 CPUs (oneDNN issue 6035); training contiguous instead.",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def environment(device=None, **extra) -> dict:
    """The one record of what computed something: versions, host, CPU and its flags, device, threads."""
    from . import __version__
    flags = cpu_flags()
    env = {
        "rnorm_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "native_bf16": native_bf16(flags),
        "avx512f": "avx512f" in flags,
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        device = torch.device(device)
        env["device"] = str(device)
        if device.type == "cuda":
            env["cuda_device"] = torch.cuda.get_device_name(device)
            env["cuda_version"] = torch.version.cuda
    env.update(extra)
    return env
