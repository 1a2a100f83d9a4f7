"""Profiles -> papermill runs -> Jupyter Book build.

A *profile* (``profiles/<name>.yaml``) fixes the parameters of every notebook for one scale of
the study: ``smoke`` (CI), ``cpu`` (the published build) and ``paper`` (the papers' scale, for a
GPU). :func:`load_profile` validates it completely before anything runs. :func:`run_book` trains
every run the profile needs up front (in parallel single-thread workers when ``jobs > 1``; the
runs cache makes the notebooks reuse them), executes each notebook with papermill into
``book/executed/`` and builds the HTML book.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

from ._io import atomic_write_text
from ._validate import ConfigError, check_int, suggest
from .experiments import LEDGER_NOTEBOOK, NOTEBOOKS

REPO = Path(__file__).resolve().parent.parent
PROFILE_KEYS = ("description", "jobs", "defaults", "notebooks")
ALL_NOTEBOOKS = tuple(NOTEBOOKS) + (LEDGER_NOTEBOOK,)


def profiles_dir() -> Path:
    return Path(os.environ.get("RNORM_PROFILES", REPO / "profiles"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str) -> dict:
    """Read and validate a profile; returns ``{"name", "description", "jobs", "notebooks": {nb: params}}``.

    Every notebook's parameters are checked by its parameter class; unknown keys, notebooks or
    profiles raise :class:`ConfigError` naming them.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        names = available_profiles()
        raise ConfigError(f"profile={name_or_path!r} not found (looked for {path}); available profiles: "
                          f"{', '.join(names) or 'none'}." + suggest(str(name_or_path), names))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"profile file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile file {path} must hold a mapping with keys {', '.join(PROFILE_KEYS)}.")
    for k in raw:
        if k not in PROFILE_KEYS:
            raise ConfigError(f"profile file {path} has an unknown key {k!r}; allowed keys: "
                              f"{', '.join(PROFILE_KEYS)}." + suggest(k, PROFILE_KEYS))
    defaults = raw.get("defaults") or {}
    per_nb = raw.get("notebooks") or {}
    for nb in per_nb:
        if nb not in NOTEBOOKS:
            raise ConfigError(f"profile file {path} names an unknown notebook {nb!r}; notebooks: "
                              f"{', '.join(NOTEBOOKS)}." + suggest(nb, NOTEBOOKS))
    for k in defaults:
        if not any(k in cls.field_names() for cls, _ in NOTEBOOKS.values()):
            raise ConfigError(f"profile file {path}: default {k!r} is a parameter of no notebook.")
    notebooks = {}
    for nb, (cls, _) in NOTEBOOKS.items():
        params = {k: v for k, v in defaults.items() if k in cls.field_names()}
        params.update(per_nb.get(nb) or {})
        params["profile"] = path.stem
        try:
            cls.from_dict(params)
        except ConfigError as e:
            raise ConfigError(f"profile {path.stem!r}, notebook {nb!r}: {e}") from None
        notebooks[nb] = params
    jobs = check_int("jobs", raw.get("jobs", 1), min_value=1)
    return {"name": path.stem, "path": str(path), "description": raw.get("description", ""), "jobs": jobs,
            "threads": defaults.get("threads"), "notebooks": notebooks}


def parse_cli_value(text: str):
    """A ``-p name value`` value, read as YAML (``"[0.01, 0.03]"`` is a list, ``8/255`` a string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"-p value {text!r} is not valid YAML ({e.problem}); write lists like "
                          f"\"[0.01, 0.03]\" and strings like 8/255.") from None


def notebook_params(profile: dict, notebook: str, overrides: dict | None = None) -> dict:
    """The validated parameters of ``notebook`` under ``profile`` with ``overrides`` applied."""
    if notebook not in NOTEBOOKS:
        raise ConfigError(f"notebook={notebook!r} is not one of {', '.join(ALL_NOTEBOOKS)}." + suggest(notebook, ALL_NOTEBOOKS))
    params = dict(profile["notebooks"][notebook])
    params.update(overrides or {})
    cls, _ = NOTEBOOKS[notebook]
    cls.from_dict(params)
    return params


def pretrain(profile: dict, *, jobs: int | None = None, device: str = "auto", notebooks=None) -> list:
    """Train every run the profile's notebooks need, longest first, in ``jobs`` worker processes.

    Each worker uses one thread (on small models two 1-thread processes beat one 2-thread process;
    see the benchmarks). Finished runs are cached, so the notebooks then only load them.
    """
    from .experiments import planned_runs
    configs = []
    for nb in notebooks or NOTEBOOKS:
        for cfg in planned_runs(nb, profile["notebooks"][nb]):
            if cfg not in configs:
                configs.append(cfg)
    configs.sort(key=_cost, reverse=True)
    jobs = jobs or profile["jobs"]
    if jobs <= 1 or len(configs) <= 1:
        from .runs import train
        for i, cfg in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {cfg.name()}", flush=True)
            train(cfg, device=device, progress=False, threads=profile.get("threads"))
        return configs
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs, initializer=_worker_init) as pool:
        for i, name in enumerate(pool.imap_unordered(_train_one, [(c, device) for c in configs]), 1):
            print(f"[{i}/{len(configs)}] trained {name}", flush=True)
    return configs


def _planned(profile: dict, notebook: str) -> list:
    from .experiments import planned_runs
    return planned_runs(notebook, profile["notebooks"][notebook])


def _worker_init():
    import torch
    torch.set_num_threads(1)


def _train_one(args):
    from .runs import train
    cfg, device = args
    train(cfg, device=device, progress=False, threads=1)
    return cfg.name()


_RECIPE_COST = {"standard": 1.0, "pgd_at": 1.0, "advprop": 2.0, "ebn": 2.0, "advprop_ebn": 3.0}
_ARCH_COST = {"resnet20": 0.6, "resnet18": 1.0, "resnet50": 2.5}


def _cost(cfg) -> float:
    """A rough relative cost of a run, to schedule the longest first."""
    steps = 0 if cfg.recipe == "standard" else cfg.train_steps * (1 if cfg.recipe != "advprop_ebn" else 2)
    n = cfg.train_subset or 60000
    return n * cfg.epochs * (_RECIPE_COST[cfg.recipe] + 0.7 * steps) * _ARCH_COST.get(cfg.arch, 1.0) * (cfg.width / 16) ** 2


def run_notebook(notebook: str, params: dict, *, out_dir: Path | None = None, log_output: bool = False) -> Path:
    """Execute ``notebooks/<notebook>.ipynb`` with papermill into ``<out_dir>/executed/``."""
    import papermill as pm
    out_dir = Path(out_dir or REPO / "book")
    executed = out_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    src = REPO / "notebooks" / f"{notebook}.ipynb"
    if not src.is_file():
        raise ConfigError(f"notebook={notebook!r}: no file {src}; notebooks: {', '.join(ALL_NOTEBOOKS)}.")
    target = executed / f"{notebook}.ipynb"
    tmp = executed / f".{notebook}.tmp.ipynb"
    params = dict(params)
    if params.get("results_dir") is None:
        results = (out_dir / "results").resolve()
        try:  # relative to the repository when inside it, so provenance holds no machine paths
            params["results_dir"] = str(results.relative_to(REPO))
        except ValueError:
            params["results_dir"] = str(results)
    pm.execute_notebook(str(src), str(tmp), parameters=params, cwd=str(REPO), kernel_name="python3",
                        progress_bar=False, log_output=log_output, report_mode=False)
    _hide_parameter_cells(tmp)
    os.replace(tmp, target)
    return target


def _hide_parameter_cells(path: Path) -> None:
    """Collapse the parameters and injected-parameters cells in the rendered book (still one click away)."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "hide-cell" not in tags:
            cell.metadata["tags"] = tags + ["hide-cell"]
    nbformat.write(nb, path)


def build_book(*, warnings_as_errors: bool = True, builder: str = "html") -> Path:
    """``jupyter-book build`` of the repository root (``_config.yml``, ``_toc.yml``) into ``_build/``."""
    import subprocess
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(REPO), "--builder", builder]
    if warnings_as_errors:
        cmd += ["--warningiserror", "--keep-going"]
    subprocess.run(cmd, check=True)
    return REPO / "_build" / builder


def run_book(profile_name: str, *, jobs: int | None = None, build: bool = True, notebooks=None,
             device: str = "auto", out_dir=None) -> dict:
    """Pre-train, execute every notebook of the profile (then the claims ledger) and build the book.

    ``out_dir`` (default ``book/``) receives ``executed/`` and ``results/``; the HTML build always
    renders the repository's ``book/``.
    """
    profile = load_profile(profile_name)
    out_dir = Path(out_dir or REPO / "book")
    chosen = list(notebooks or NOTEBOOKS)
    timings = {}
    t0 = time.time()
    pretrain(profile, jobs=jobs, device=device, notebooks=chosen)
    timings["pretrain"] = round(time.time() - t0, 1)
    # The notebooks only evaluate (training is cached), and each is independent of the others:
    # run `jobs` of them at once (each kernel uses the profile's `threads`).
    from concurrent.futures import ThreadPoolExecutor

    def one(nb):
        t = time.time()
        print(f"running {nb} ...", flush=True)
        run_notebook(nb, notebook_params(profile, nb, {"device": device}), out_dir=out_dir)
        print(f"finished {nb} in {time.time() - t:.0f} s", flush=True)
        return nb, round(time.time() - t, 1)

    t_nb = time.time()
    longest_first = sorted(chosen, key=lambda nb: -sum(_cost(c) for c in _planned(profile, nb)))
    with ThreadPoolExecutor(max(1, jobs or profile["jobs"])) as pool:
        for nb, seconds in pool.map(one, longest_first):
            timings[nb] = seconds
    timings["notebooks_wall"] = round(time.time() - t_nb, 1)
    record = {"profile": profile["name"], "jobs": jobs or profile["jobs"], "seconds": timings,
              "cpu_count": os.cpu_count()}
    timings_file = out_dir / "results" / f"timings-{profile['name']}.json"
    atomic_write_text(timings_file, json.dumps(record, indent=2) + "\n")  # the ledger reads it
    t = time.time()
    run_notebook(LEDGER_NOTEBOOK, {"profile": profile["name"]}, out_dir=out_dir)
    timings[LEDGER_NOTEBOOK] = round(time.time() - t, 1)
    timings["total_before_build"] = round(time.time() - t0, 1)
    atomic_write_text(timings_file, json.dumps(record, indent=2) + "\n")
    if build:
        build_book()
    return record
