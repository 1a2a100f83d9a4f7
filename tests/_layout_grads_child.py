"""Child process of ``test_layout_gradients.py``: one network's weight gradients in both memory layouts.

``python tests/_layout_grads_child.py '<json list of specs>'`` builds, for each spec in turn, the network (arch, width, norm,
norm_p, branches, dataset) with a fixed seed, runs one fp32 forward + backward on a fixed random batch
in float64 (the reference), in fp32 contiguous and in fp32 channels_last (model and input converted, as
rnorm.runs.train does), and prints one JSON line per spec as soon as it is done: its id and, per
parameter, the relative L2 error against the reference of the channels_last and of the contiguous
gradient.
One child serves all networks (one start-up); it runs in a child so that a kernel that hangs or corrupts memory (oneDNN issue 6035) fails one test
with a timeout or an exit code instead of taking the test process down.
"""
import json
import sys

import torch


def grads(spec: dict, channels_last: bool, dtype=torch.float32) -> dict:
    from rnorm.runs import RunConfig, build_model
    from rnorm.data import info
    cfg = RunConfig(dataset=spec["dataset"], arch=spec["arch"], width=spec["width"], norm=spec["norm"],
                    norm_p=spec.get("norm_p") or 0.2, recipe=spec["recipe"], precision="fp32")
    torch.manual_seed(0)
    model = build_model(cfg).train().to(dtype)
    d = info(cfg.dataset)
    x = torch.rand(spec.get("batch", 8), d.in_channels, d.image_size, d.image_size,
                   generator=torch.Generator().manual_seed(1)).to(dtype)
    y = torch.arange(x.shape[0]) % d.num_classes
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(model(x).float(), y).backward()
    return {n: p.grad.detach().double().contiguous() for n, p in model.named_parameters() if p.grad is not None}


def main() -> int:
    torch.set_num_threads(1)
    for spec in json.loads(sys.argv[1]):
        ref, a, b = grads(spec, False, torch.float64), grads(spec, False), grads(spec, True)
        out = {n: [float((b[n] - ref[n]).norm() / ref[n].norm()), float((a[n] - ref[n]).norm() / ref[n].norm())]
               for n in ref if float(ref[n].norm()) > 0}
        print(json.dumps({"id": spec["id"], "params": out,
                          "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
