"""Worker process of the process-scaling benchmark (``python -m benchmarks._worker``).

Sets its torch thread count, loads the data and warms up, prints ``ready``, waits for a line on
stdin (the parent releases all workers at once), trains ``--jobs`` epochs of the standard recipe
one after the other, each on a fresh model, and prints one JSON line with wall-clock start/end
(``time.time()``, comparable across processes) and the images trained.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--images", type=int, required=True)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from benchmarks import workload

    x, y, source = workload.images("train", a.images)
    cfg = workload.config(width=a.width, batch_size=a.batch, recipe="standard", subset=a.images)
    workload.warm(cfg, x, y)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    seconds = []
    for _ in range(a.jobs):
        row, _ = workload.train_epoch(cfg, x, y)
        seconds.append(row["epoch_seconds"])
    end = time.time()
    print(json.dumps({"start": start, "end": end, "images": a.jobs * int(y.shape[0]), "threads": a.threads,
                      "epoch_seconds": seconds, "data": source}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
