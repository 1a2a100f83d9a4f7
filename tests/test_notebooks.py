"""Every notebook runs end to end at smoke scale; the committed book renders with warnings as errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from rnorm import book
from rnorm.experiments import LEDGER_NOTEBOOK, NOTEBOOKS

REPO = book.REPO
needs_data = pytest.mark.skipif(
    not (Path(os.environ.get("RNORM_DATA", "data")) / "FashionMNIST" / "raw").is_dir(),
    reason="needs FashionMNIST under RNORM_DATA")


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Run the whole smoke profile once (training, every notebook, the ledger) into a temporary folder."""
    out = tmp_path_factory.mktemp("smoke")
    old = os.environ.get("RNORM_RUNS")
    os.environ["RNORM_RUNS"] = str(out / "runs")
    try:
        record = book.run_book("smoke", build=False, out_dir=out / "book", device="cpu")
    finally:
        if old is None:
            os.environ.pop("RNORM_RUNS", None)
        else:
            os.environ["RNORM_RUNS"] = old
    return out / "book", record


@pytest.mark.slow
@needs_data
def test_every_notebook_runs_and_writes_results(smoke_book):
    root, record = smoke_book
    for nb in list(NOTEBOOKS) + [LEDGER_NOTEBOOK]:
        executed = nbformat.read(root / "executed" / f"{nb}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb}: {errors[:1]}"
    for nb in NOTEBOOKS:
        res = root / "results" / nb
        prov = json.loads((res / "provenance.json").read_text())
        assert prov["profile"] == "smoke" and prov["parameters"]["width"] == 4
        assert prov["versions"]["torch"] and prov["wall_seconds"] > 0
        assert (res / "summary.json").is_file()
        figures = sorted(res.glob("*.pdf"))
        assert figures, f"{nb} wrote no figure"
        for pdf in figures:  # every figure in three formats beside the CSV it was drawn from
            for ext in (".svg", ".png", ".csv"):
                assert pdf.with_suffix(ext).is_file(), pdf.with_suffix(ext)
    ledger = (root / "results" / LEDGER_NOTEBOOK / "ledger.csv").read_text()
    assert all(c in ledger for c in ("C1", "C2", "C3", "C4", "C5"))
    assert set(record["seconds"]) >= set(NOTEBOOKS) | {"pretrain", LEDGER_NOTEBOOK}


@pytest.mark.slow
@needs_data
def test_rerun_reuses_cached_training(smoke_book, monkeypatch):
    root, _ = smoke_book
    monkeypatch.setenv("RNORM_RUNS", str(root.parent / "runs"))
    import rnorm.train as train_mod

    def boom(*a, **k):
        raise AssertionError("a cached run was trained again")
    monkeypatch.setattr(train_mod, "train_step", boom)
    from rnorm.experiments import planned_runs
    from rnorm.runs import train
    prof = book.load_profile("smoke")
    for nb in NOTEBOOKS:
        for cfg in planned_runs(nb, prof["notebooks"][nb]):
            train(cfg, progress=False)


@pytest.mark.slow
@needs_data
def test_plain_papermill_bad_parameter_stops_at_parameters_cell(tmp_path):
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "02_stats_swap.ipynb"), str(out),
                           "-p", "dataset", "mnist", "-p", "results_dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    assert "dataset='mnist'" in proc.stderr + proc.stdout
    nb = nbformat.read(out, as_version=4)
    failed = [c for c in nb.cells if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "from_namespace" in failed[0].source  # the setup cell right after the parameters


@pytest.mark.slow
def test_committed_book_builds_without_warnings(tmp_path):
    """The committed executed notebooks and chapters render with `jupyter-book build -W`."""
    exe = Path(sys.executable).with_name("jupyter-book")
    src = tmp_path / "src"
    shutil.copytree(REPO / "book", src / "book")
    shutil.copytree(REPO / "benchmarks" / "results", src / "benchmarks" / "results")  # the Performance page includes it
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / f, src / f)
    proc = subprocess.run([str(exe), "build", str(src), "--warningiserror", "--keep-going"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = (src / "_build" / "html" / "book" / "executed" / "05_claims_ledger.html").read_text()
    assert "verdict" in html
    intro = (src / "_build" / "html" / "book" / "intro.html").read_text()
    for word in ("reproduced", "partly", "not run"):
        if word in intro:
            break
    else:
        pytest.fail("no verdict pasted into the introduction")
