"""Worker process of the ISA-capped precision benchmark (``python -m benchmarks._isa_worker``).

The parent starts it with the CPU's instruction set capped for PyTorch's kernels --
``ONEDNN_MAX_CPU_ISA`` (oneDNN: convolutions, matmuls) and ``ATEN_CPU_CAPABILITY`` (ATen's own
vectorized kernels) -- so that on a CPU with AVX-512 and native bf16 it computes as a CPU
without them would: bf16 autocast falls back to emulation there, which is the case
``precision: auto`` exists for. The cap does not change ``/proc/cpuinfo``, which
:func:`rnorm.hardware.native_bf16` reads, so this worker also hides from :mod:`rnorm.hardware`
every flag that such a CPU lacks (``--hide``: flag prefixes).

It then resolves ``precision: auto`` and the ``cpu`` profile's ``channels_last`` (``--channels-last``)
exactly as :func:`rnorm.runs.train` does for that profile's standard FashionMNIST run (a rule, no
timing), and times one epoch of that resolved configuration
against plain fp32 (contiguous layout, no autocast) and against forced bf16 + channels-last,
interleaved, on process CPU time (one thread). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json

from . import timing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, required=True, help="images per timed epoch (fp32 and auto)")
    ap.add_argument("--bf16-images", type=int, required=True, help="images per timed bf16 epoch (emulated: slow)")
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels-last", default="auto", help="the layout the profile asks for: true, false or auto")
    ap.add_argument("--hide", nargs="*", default=["avx512", "amx", "avx_vnni"],
                    help="prefixes of the CPU flags to hide from rnorm.hardware")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from rnorm import hardware, runs

    real = hardware.cpu_flags()
    hidden = frozenset(f for f in real if not f.startswith(tuple(a.hide)))
    hardware.cpu_flags = lambda path="/proc/cpuinfo": hidden  # what a CPU without those flags reports
    precision = hardware.resolve_precision("auto", "cpu")

    from . import workload

    x, y, source = workload.images("train", a.images)
    xb, yb = x[: a.bf16_images], y[: a.bf16_images]

    def config(images, **kw):
        return workload.config(width=a.width, batch_size=a.batch, recipe="standard", subset=images, **kw)

    auto = config(a.images, precision="auto")  # resolved at construction, as in a run's config
    asked = {"true": True, "false": False}.get(a.channels_last.lower(), a.channels_last)
    auto.channels_last = channels_last = runs._layout(auto.cfg, asked, torch.device("cpu"))
    contenders = {
        "auto": (auto, x, y),
        "fp32": (config(a.images, precision="fp32", channels_last=False), x, y),
        "bf16_cl": (config(a.bf16_images, precision="bf16", channels_last=True), xb, yb),
    }
    for cfg, cx, cy in contenders.values():
        workload.warm(cfg, cx, cy)
    timed = timing.interleave({k: (lambda c=c, cx=cx, cy=cy: workload.train_epoch(c, cx, cy))
                               for k, (c, cx, cy) in contenders.items()}, rounds=a.rounds, warmup=0)
    n = {k: int(cy.shape[0]) for k, (_, _, cy) in contenders.items()}
    ips = {k: [n[k] / s for s in v] for k, v in timed["cpu_seconds"].items()}
    print(json.dumps({
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "flags_hidden": sorted(real - hidden), "native_bf16_seen": hardware.native_bf16(),
        "precision_resolved": precision, "config_precision": contenders["auto"][0].precision,
        "channels_last_resolved": bool(channels_last),
        "images_per_s": ips, "cpu_seconds": timed["cpu_seconds"], "seconds": timed["seconds"],
        "cpu_util": timed["cpu_util"], "images": n, "data": source}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
