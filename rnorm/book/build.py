"""The whole book (:func:`run_book`): the stale notebooks of a profile re-executed after training what they
need, then ``jupyter-book build`` (:func:`build_book`); :func:`describe_book_plan` says what it would do."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .._io import atomic_write_text
from ..experiments import REGISTRY, execution_order, get
from .checks import preflight
from .checkout import project_root
from .execute import record_missing_key_inputs, run_notebook
from .keys import check_sources
from .profiles import load_profile, notebook_params
from .staleness import staleness
from .training import planned_configs, pretrain, run_state


def build_book(*, warnings_as_errors: bool = True, builder: str = "html") -> Path:
    """``jupyter-book build`` of the checkout the working directory is in (``_config.yml``, ``_toc.yml``;
    :func:`project_root`) into its ``_build/``."""
    import subprocess
    repo = project_root(code=False)  # rendering runs none of the package's code
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(repo), "--builder", builder]
    if warnings_as_errors:
        cmd += ["--warningiserror", "--keep-going"]
    subprocess.run(cmd, check=True)
    return repo / "_build" / builder


def describe_book_plan(profile_name: str, *, notebooks=None, out_dir=None, rerun: bool = False) -> str:
    """What :func:`run_book` would do, as text, doing none of it (``rnorm book --dry-run``): each
    notebook current or to be executed and why, then the training runs the executed studies need
    and where each stands (:func:`run_state`). Nothing is executed, trained or written to the book;
    like ``rnorm plan``, planning may copy published runs that it reads (chapter 3's learning-rate
    sweep, whose results name the later runs) from the archive into ``RNORM_RUNS``."""
    from ..runs import archive_roots, runs_root
    profile = load_profile(profile_name)
    out_dir = Path(out_dir or project_root() / "book")
    chosen = execution_order(notebooks or REGISTRY)
    check_sources(chosen)
    stale = {nb: ["--rerun"] for nb in chosen} if rerun else staleness(profile, chosen, out_dir)
    lines = [f"profile {profile['name']!r}, executed notebooks in {out_dir}:"]
    for nb in chosen:
        lines.append(f"  {nb:24s} " + ("execute: " + "; ".join(stale[nb]) if nb in stale else "up to date"))
    studies = [nb for nb in stale if get(nb).trains]
    configs = planned_configs(profile, studies)  # like `rnorm plan`: may copy published runs the plan reads
    states = [(cfg, run_state(cfg)) for cfg in configs]
    todo = [(cfg, st) for cfg, st in states if st not in ("finished", "published")]
    counts = {k: sum(st == k for _, st in states) for k in ("finished", "published")}
    if not stale:
        lines.append("nothing to execute; `rnorm book` only builds the HTML.")
    elif not configs:
        lines.append("the notebooks to execute train nothing.")
    else:
        archive = ", ".join(str(r) for r in archive_roots()) or "no archive"
        lines.append(f"{len(configs)} training run(s) needed as of now: {counts['finished']} finished in {runs_root()}, "
                     f"{counts['published']} published in {archive}, {len(todo)} to train or resume"
                     + (":" if todo else "."))
        width = max(len(cfg.folder_name()) for cfg, _ in todo) if todo else 0
        for cfg, st in todo:
            lines.append(f"  {cfg.folder_name():{width}s}  {st}")
        if todo:
            lines.append("(models/*/history.csv records what each published run took.)")
    return "\n".join(lines)


def run_book(profile_name: str, *, jobs=None, build: bool = True, notebooks=None,
             device: str = "auto", out_dir=None, rerun: bool = False, executor: str = "local",
             address: str | None = None) -> dict:
    """Bring the profile's executed notebooks up to date, then build the book.

    Re-executes the notebooks whose key changed or whose outputs are missing (all of them with
    ``rerun``), after training only the runs those need. ``out_dir`` (default ``book/``: naming a
    profile here is an explicit request to build the book from it) receives ``executed/`` and
    ``results/``; the HTML build always renders the repository's ``book/``. Returns a record with
    the notebooks executed and the seconds per step.
    """
    profile = load_profile(profile_name)
    out_dir = Path(out_dir or project_root() / "book")
    chosen = execution_order(notebooks or REGISTRY)
    check_sources(chosen)  # before anything runs, as the parameters and sizes are (preflight, below)
    why = {nb: ["--rerun"] for nb in chosen} if rerun else staleness(profile, chosen, out_dir)
    todo = list(why)
    record_missing_key_inputs(profile, [nb for nb in chosen if nb not in why], out_dir)
    record = {"profile": profile["name"], "jobs": jobs or profile["jobs"], "executed": todo, "seconds": {},
              "cpu_count": os.cpu_count()}
    t0 = time.time()
    if not todo:
        print(f"every notebook of profile {profile['name']!r} is up to date in {out_dir}; nothing to execute.")
    else:
        _train_for(profile, why, record, jobs=jobs, device=device, out_dir=out_dir, executor=executor,
                   address=address)
        _execute(profile, todo, record, device=device, out_dir=out_dir)
    record["seconds"]["total_before_build"] = round(time.time() - t0, 1)
    if build:
        t = time.time()
        build_book()
        record["seconds"]["build"] = round(time.time() - t, 1)
    return record


def _params(profile: dict, nb: str, device: str) -> dict:
    """A notebook's parameters under the profile, on ``device`` where it trains."""
    return notebook_params(profile, nb, {"device": device} if get(nb).trains else {})


def _train_for(profile: dict, why: dict, record: dict, *, jobs, device, out_dir, executor, address) -> None:
    """Check every notebook to execute (:func:`preflight`: every mistake that can be caught before training is
    caught here), then train the runs the studies among them need; records the seconds and layouts."""
    t0 = time.time()
    todo = list(why)
    for nb in todo:
        preflight(nb, _params(profile, nb, device), out_dir)
    print("executing " + "; ".join(f"{nb} ({', '.join(why[nb])})" for nb in todo), flush=True)
    layouts: list = []
    pretrain(profile, jobs=jobs, device=device, notebooks=[nb for nb in todo if get(nb).trains],
             executor=executor, address=address, layouts=layouts)
    record["seconds"]["pretrain"] = round(time.time() - t0, 1)
    record["layouts"] = [lay.describe() for lay in layouts]


def _execute(profile: dict, todo: list, record: dict, *, device, out_dir) -> None:
    """Execute the studies among ``todo`` in parallel (up to the profile's jobs), write the timings file the
    ledger reads, then execute the notebooks that read the studies' results; records each one's seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from ..layout import available_cores
    timings = record["seconds"]

    def one(nb):
        t = time.time()
        print(f"running {nb} ...", flush=True)
        run_notebook(nb, _params(profile, nb, device), out_dir=out_dir)
        print(f"finished {nb} in {time.time() - t:.0f} s", flush=True)
        return nb, round(time.time() - t, 1)

    studies = [nb for nb in todo if get(nb).trains]
    parallel = record["jobs"] if record["jobs"] != "auto" else available_cores()
    with ThreadPoolExecutor(max(1, min(parallel, len(studies) or 1))) as pool:
        for nb, seconds in pool.map(one, studies):
            timings[nb] = seconds
    timings_file = out_dir / "results" / f"timings-{profile['name']}.json"
    if studies:
        timings_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(timings_file, json.dumps(record, indent=2) + "\n")  # the ledger reads it
    for nb in todo:
        if not get(nb).trains:
            timings[nb] = one(nb)[1]
