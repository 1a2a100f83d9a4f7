"""Executing one notebook with papermill (:func:`run_notebook`): where its outputs go
(:func:`default_out_dir`), what its key was computed from (:data:`~rnorm.book.keys.KEY_FILE`), and the
parameter cells collapsed in the rendered book."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .._io import atomic_write_text
from .._validate import as_sequence
from ..experiments import get
from .checks import preflight
from .checkout import project_root
from .keys import KEY_FILE, _hash_inputs, key_inputs, notebook_source, recorded_key
from .profiles import PUBLISHED_PROFILE, matching_profile
from .training import restore_evaluations


def default_out_dir(notebook: str, params: dict) -> Path:
    """``book/`` for the published profile's exact parameters, else ``_scratch/<profile or custom>/``."""
    prof = matching_profile(notebook, params)
    repo = project_root()
    return repo / "book" if prof == PUBLISHED_PROFILE else repo / "_scratch" / (prof or "custom")


def run_notebook(notebook: str, params: dict, *, out_dir: Path | None = None, log_output: bool = False) -> Path:
    """Execute ``notebooks/<notebook>.md`` (read with jupytext) with papermill into ``<out_dir>/executed/``.

    ``out_dir`` defaults to :func:`default_out_dir`. The executed notebook is written atomically. A study's
    evaluations published in the archive are first copied beside its finished runs
    (:func:`restore_evaluations`), so the notebook reads them instead of computing them again.
    """
    import jupytext
    import papermill as pm

    entry = get(notebook)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(notebook, params)
    src = notebook_source(entry.name)
    repo = project_root()
    preflight(entry.name, params, out_dir)
    if entry.trains:  # the evaluations published beside its finished runs are read, not computed again
        from ..experiments import planned_runs
        restored = restore_evaluations(planned_runs(entry.name, params))
        if restored:
            print(f"{entry.name}: restored {restored} published evaluation(s) into RNORM_RUNS", flush=True)
    executed = out_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    target = executed / f"{entry.name}.ipynb"
    tmp_src = executed / f".{entry.name}.source.ipynb"
    tmp = executed / f".{entry.name}.tmp.ipynb"
    params = dict(params)
    if params.get("results_dir") is None:
        results = (out_dir / "results").resolve()
        try:  # relative to the repository when inside it, so provenance holds no machine paths
            params["results_dir"] = str(results.relative_to(repo))
        except ValueError:
            params["results_dir"] = str(results)
    inputs = key_inputs(entry.name, params)  # before the run: what this execution's key is computed from
    jupytext.write(jupytext.read(src), tmp_src, fmt="ipynb")
    try:
        pm.execute_notebook(str(tmp_src), str(tmp), parameters=params, cwd=str(repo), kernel_name="python3",
                            progress_bar=False, log_output=log_output, report_mode=False)
        _hide_parameter_cells(tmp)
        os.replace(tmp, target)
    finally:
        for f in (tmp_src, tmp):
            f.unlink(missing_ok=True)
    res = repo / params["results_dir"] / entry.name
    if res.is_dir():  # lets `rnorm book --dry-run` say later what changed since this execution
        _write_key_inputs(res, inputs)
    return target


def _write_key_inputs(res: Path, inputs: dict) -> None:
    atomic_write_text(res / KEY_FILE, json.dumps({"key": _hash_inputs(inputs), **inputs}, indent=1,
                                                  sort_keys=True) + "\n")


def record_missing_key_inputs(profile: dict, notebooks, out_dir) -> list[str]:
    """Write :data:`KEY_FILE` for up-to-date notebooks executed before it existed: their recorded key
    equals the key of today's inputs, so today's inputs are the ones it was computed from. Returns
    the notebooks it was written for."""
    written = []
    for nb in as_sequence("notebooks", notebooks, nonempty=False):
        res = Path(out_dir) / "results" / nb
        inputs = key_inputs(nb, profile["notebooks"][nb])
        if not (res / KEY_FILE).is_file() and recorded_key(nb, out_dir) == _hash_inputs(inputs):
            try:
                _write_key_inputs(res, inputs)
            except OSError:  # a read-only copy of the book: the reasons stay less precise, nothing else
                continue
            written.append(nb)
    return written


def _hide_parameter_cells(path: Path) -> None:
    """Collapse the parameters and injected-parameters cells in the rendered book (still one click away)."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "hide-cell" not in tags:
            cell.metadata["tags"] = tags + ["hide-cell"]
    nbformat.write(nb, path)
