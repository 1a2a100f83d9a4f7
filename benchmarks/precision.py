"""The precision benchmarks: robust accuracy when the evaluation attack runs in bf16 rather than fp32,
and (benchmark 9) what ``precision: auto`` gives on a CPU without native bf16, emulated by capping
PyTorch's kernels at AVX2 in a worker process."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn

from . import timing, workload
from .common import accuracy, entry, trained_model
from .settings import Settings


# ---------------------------------------------------------------------------------- bf16 eval
class _Bf16(nn.Module):
    """Runs the wrapped model under bf16 autocast on channels-last inputs; returns fp32 logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


def bf16_eval_attack(s: Settings, ctx: dict) -> dict:
    """Robust accuracy under PGD with the model in bf16 (autocast, channels-last) vs fp32."""
    from rnorm.attacks import make_attack, format_eps

    model = trained_model(s, ctx)
    x, y = ctx["test"]
    fp32 = model.eval()
    bf16 = _Bf16(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    rows = []
    for eps in s.eval_eps:
        row = {"eps": format_eps(eps)}
        for name, m in (("fp32", fp32), ("bf16", bf16)):
            atk = make_attack("pgd", m, eps, steps=s.eval_steps)
            t0 = time.perf_counter()
            correct = 0
            for i in range(0, y.shape[0], s.eval_batch):
                torch.manual_seed(1000 + i)
                adv = atk(x[i:i + s.eval_batch], y[i:i + s.eval_batch])
                with torch.no_grad():
                    correct += int((m(adv).argmax(1) == y[i:i + s.eval_batch]).sum())
            row[f"robust_acc_{name}_pct"] = 100.0 * correct / y.shape[0]
            row[f"seconds_{name}"] = time.perf_counter() - t0
        row["diff_points"] = row["robust_acc_bf16_pct"] - row["robust_acc_fp32_pct"]
        rows.append(row)
    clean = {"fp32": accuracy(fp32, x, y, s.eval_batch), "bf16": accuracy(bf16, x, y, s.eval_batch)}
    worst = max(abs(r["diff_points"]) for r in rows)
    return entry(worst, "max |robust acc bf16 - fp32| (points)", "<= 0.5 points", worst <= 0.5,
                  per_eps=rows, clean_acc_pct=clean, attack=f"PGD-{s.eval_steps}, alpha 2.5*eps/steps, random start",
                  test_images=int(y.shape[0]), model=ctx["model_info"],
                  robust_acc_fp32_pct=rows[-1]["robust_acc_fp32_pct"], robust_acc_bf16_pct=rows[-1]["robust_acc_bf16_pct"],
                  headline_eps=rows[-1]["eps"])


# ---------------------------------------------------------------------------------- 9
#: The cap: the instruction set of a CPU with AVX2 but neither AVX-512 nor native bf16 (such as AMD Zen 3).
ISA_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def precision_auto_isa_capped(s: Settings, ctx: dict) -> dict:
    """``precision: auto`` on a CPU without native bf16, emulated here by capping PyTorch's kernels at
    AVX2 (:data:`ISA_CAP`, see :mod:`benchmarks._isa_worker`): what ``auto`` resolves to, and the
    throughput of the ``cpu`` profile's resolved standard run against plain fp32 (target: within 10 %)
    and against forced bf16 + channels-last (the profile's former fixed choice). On a CPU that has
    only AVX2 anyway, the cap changes nothing and this is the machine's own measurement."""
    cmd = [sys.executable, "-m", "benchmarks._isa_worker", "--images", str(s.isa_images),
           "--bf16-images", str(s.isa_bf16_images), "--rounds", str(s.isa_rounds), "--width", str(s.width),
           "--batch", str(s.recipe_batch), "--channels-last", str(workload.cpu_profile_channels_last())]
    with tempfile.TemporaryDirectory() as cache:  # nothing of the capped run enters the real cache
        env = dict(os.environ, RNORM_CACHE=cache, OMP_NUM_THREADS="1", **ISA_CAP)
        proc = subprocess.run(cmd, cwd=workload.ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"ISA-capped worker exited with {proc.returncode}: {proc.stderr[-2000:]}")
    w = json.loads(proc.stdout.strip().splitlines()[-1])
    ips = w["images_per_s"]
    r = {**timing.summarize([a / b for a, b in zip(ips["auto"], ips["fp32"])]), "clock": "cpu"}
    bf = timing.summarize([a / b for a, b in zip(ips["bf16_cl"], ips["fp32"])])
    capped = w["cpu_capability"].upper() == "AVX2"
    return entry(r["median"], "throughput ratio auto (resolved) / plain fp32, ISA capped at AVX2", ">= 0.90",
                  bool(r["median"] >= 0.90 and w["precision_resolved"] == "fp32"), ratio=r, bf16_over_fp32=bf,
                  images_per_s={k: timing.median(v) for k, v in ips.items()}, cap=ISA_CAP, cap_in_effect=capped,
                  **{k: w[k] for k in ("cpu_capability", "flags_hidden", "native_bf16_seen", "precision_resolved",
                                       "config_precision", "channels_last_resolved", "images", "data", "cpu_util")},
                  job=f"standard recipe, resnet18 w{s.width}, batch {s.recipe_batch}, 1 thread, one epoch per round")
