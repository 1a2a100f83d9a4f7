"""What the machine can do, decided by detection and measurement, never hard-coded.

* :func:`resolve_precision` turns ``"auto"`` into ``"bf16"`` (autocast) where bf16 arithmetic is
  native -- CUDA, or a CPU with AVX512-BF16 or AMX -- and into ``"fp32"`` elsewhere. On a CPU
  without native bf16, PyTorch emulates it and a training step is about 10x slower than fp32
  (measured on an AVX2-only AMD EPYC: 25 vs 317 img/s), so ``auto`` never picks it there.
* :func:`resolve_channels_last` turns ``"auto"`` into True or False by timing a small
  convolution stack in both memory layouts, once per machine, precision and torch version; the
  answer is cached in ``~/.cache/rnorm/hardware.json`` (``$RNORM_CACHE`` overrides the folder) so
  every run on the machine makes the same choice. The layout changes no result beyond float
  rounding, so it is a run-time choice recorded in ``environment.json``, not part of a run's key.
* :func:`environment` is the one record of the machine written beside runs, results and
  benchmarks.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

import torch

from ._validate import ConfigError, check_choice

PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto", True, False)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def cache_file() -> Path:
    base = os.environ.get("RNORM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rnorm")
    return Path(base) / "hardware.json"


def _small_net() -> torch.nn.Module:
    return torch.nn.Sequential(*[m for _ in range(3) for m in (torch.nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                                               torch.nn.BatchNorm2d(16), torch.nn.ReLU())])


def _time_layout(make_model, input_shape, channels_last: bool, precision: str, device: torch.device,
                 reps: int = 3) -> float:
    """Best seconds of ``reps`` forward+backward passes of ``make_model()`` on a random batch."""
    torch.manual_seed(0)
    net = make_model().to(device).train()
    x = torch.rand(*input_shape, device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
           else torch.autocast(device.type, enabled=False))
    best = float("inf")
    for i in range(reps + 1):
        t = time.perf_counter()
        with ctx:
            net(x).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up oneDNN / cuDNN
            best = min(best, time.perf_counter() - t)
    return best


def resolve_channels_last(value="auto", device="cpu", precision: str = "fp32", *, make_model=None,
                          input_shape=(64, 16, 32, 32), model_id: str = "conv3x16") -> bool:
    """True/False as given; ``"auto"``: the faster memory layout, measured once and cached.

    ``make_model`` builds the network to time (the model about to be trained; default a small
    conv stack) on a random batch of ``input_shape``; ``model_id`` names it in the cache. Both
    layouts are timed interleaved, twice each (best of 3 passes each time); channels_last is
    chosen only when it is at least 3 % faster. The cache key is the CPU model (or CUDA device
    name), torch version, device type, resolved precision, thread count and ``model_id``.
    """
    check_layout(value)
    if value != "auto":
        return value
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    make_model = make_model or _small_net
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    key = (f"{hw}|torch {torch.__version__}|{device.type}|{precision}|threads {torch.get_num_threads()}|"
           f"{model_id}|{tuple(input_shape)}")
    f = cache_file()
    try:
        known = json.loads(f.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and isinstance(known[key].get("channels_last"), bool):
        return known[key]["channels_last"]
    plain, cl = [], []
    for _ in range(2):
        plain.append(_time_layout(make_model, input_shape, False, precision, device))
        cl.append(_time_layout(make_model, input_shape, True, precision, device))
    choice = min(cl) < 0.97 * min(plain)
    known[key] = {"channels_last": choice, "seconds_contiguous": min(plain), "seconds_channels_last": min(cl),
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        from ._io import atomic_write_text
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(f, json.dumps(known, indent=2) + "\n")
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return choice


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
