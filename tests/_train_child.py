"""Child process for tests/test_runs.py: train (or load) one run and report on stdout.

    python tests/_train_child.py RUNS_DIR CONFIG_JSON [--sleep-after-checkpoint S] [--threads N]

Prints one JSON line: ``{"steps": <training steps taken in this process>, "digest": <sha256 of the
final weights>, "path": ..., "pid": ...}``. With ``--sleep-after-checkpoint`` the process sleeps
S seconds after writing its first checkpoint (so a test can kill it between epochs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from rnorm import runs, train as T  # noqa: E402


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs_dir")
    ap.add_argument("config")
    ap.add_argument("--sleep-after-checkpoint", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    calls = {"n": 0}
    real_step = T.step_metrics  # the step run_epoch calls

    def counting_step(*args, **kw):
        calls["n"] += 1
        return real_step(*args, **kw)

    T.step_metrics = counting_step
    if a.sleep_after_checkpoint:
        real_save = runs.save_checkpoint

        def slow_save(path, blob):
            real_save(path, blob)
            print(json.dumps({"checkpoint": int(blob["epoch"])}), flush=True)
            time.sleep(a.sleep_after_checkpoint)

        runs.save_checkpoint = slow_save

    cfg = runs.RunConfig.from_dict(json.loads(a.config))
    run = runs.train(cfg, runs_dir=a.runs_dir, device="cpu", progress=False, threads=a.threads)
    print(json.dumps({"steps": calls["n"], "digest": digest(run.state_dict()), "path": str(run.path),
                      "pid": os.getpid(), "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
