"""Every notebook runs end to end at smoke scale; books build with warnings as errors; `rnorm book` is incremental."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from rnorm import book, cli
from rnorm.experiments import REGISTRY

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


@pytest.fixture
def smoke_runs(smoke_book, monkeypatch):
    monkeypatch.setenv("RNORM_RUNS", str(smoke_book[0].parent / "runs"))
    return smoke_book[0]


@pytest.mark.slow
@needs_data
def test_every_notebook_runs_and_writes_results(smoke_book):
    root, record = smoke_book
    for nb in REGISTRY:
        executed = nbformat.read(root / "executed" / f"{nb}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb}: {errors[:1]}"
    for nb, entry in REGISTRY.items():
        res = root / "results" / nb
        prov = json.loads((res / "provenance.json").read_text())
        assert prov["key"] == book.notebook_key(nb, book.load_profile("smoke")["notebooks"][nb])
        assert prov["versions"]["torch"] and prov["wall_seconds"] > 0
        assert (res / "summary.json").is_file() and (res / "summary.csv").is_file()
        if not entry.trains:
            continue
        assert prov["profile"] == "smoke" and prov["parameters"]["width"] == 4
        figures = sorted(res.glob("*.pdf"))
        assert figures, f"{nb} wrote no figure"
        for pdf in figures:  # every figure in three formats beside the CSV it was drawn from
            for ext in (".svg", ".png", ".csv"):
                assert pdf.with_suffix(ext).is_file(), pdf.with_suffix(ext)
    import pandas as pd
    from rnorm.experiments import ebn
    acc = pd.read_csv(root / "results" / "04_easy_batchnorm" / "accuracy.csv")
    apgd = acc[acc["attack"] == "apgd"]  # APGD-CE: the main branch of the compared recipes and the baseline only
    assert set(apgd["recipe"]) == set(acc["recipe"]) & set(ebn.APGD_RECIPES)
    assert not apgd.empty
    assert set(apgd["branch"]) == {"main"} and set(apgd["share"]) == {"none"}
    ledger = (root / "results" / "05_claims_ledger" / "ledger.csv").read_text()
    assert all(c in ledger for c in ("C1", "C2", "C3", "C4", "C5"))
    assert set(record["seconds"]) >= set(REGISTRY) | {"pretrain"}


@pytest.mark.slow
@needs_data
def test_rerun_reuses_cached_training(smoke_runs, monkeypatch):
    import rnorm.train as train_mod

    def boom(*a, **k):
        raise AssertionError("a cached run was trained again")
    monkeypatch.setattr(train_mod, "step_metrics", boom)
    from rnorm.experiments import planned_runs
    from rnorm.runs import train
    prof = book.load_profile("smoke")
    for nb in REGISTRY:
        for cfg in planned_runs(nb, prof["notebooks"][nb]):
            train(cfg, progress=False)


@pytest.mark.slow
@needs_data
def test_book_is_incremental_like_make(smoke_runs, tmp_path, monkeypatch):
    """Nothing changed: nothing runs. One notebook's parameter changed: that notebook and the ledger re-run."""
    root = smoke_runs
    assert book.run_book("smoke", build=False, out_dir=root, device="cpu")["executed"] == []
    profiles = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles", profiles)
    text = (profiles / "smoke.yaml").read_text()
    (profiles / "smoke.yaml").write_text(text.replace(
        "  02_stats_swap:\n", "  02_stats_swap:\n    adv_fraction: 0.5\n", 1))
    monkeypatch.setenv("RNORM_PROFILES", str(profiles))
    why = book.staleness(book.load_profile("smoke"), out_dir=root)
    assert list(why) == ["02_stats_swap", "05_claims_ledger"]
    # run_notebook recorded the key's inputs, so the reason is exact
    assert len(why["02_stats_swap"]) == 1 and re.fullmatch(r"parameters changed: adv_fraction \S+ -> 0\.5",
                                                           why["02_stats_swap"][0])
    record = book.run_book("smoke", build=False, out_dir=root, device="cpu")
    assert record["executed"] == ["02_stats_swap", "05_claims_ledger"]
    assert book.run_book("smoke", build=False, out_dir=root, device="cpu")["executed"] == []
    # a study changed and re-run on its own leaves the ledger reading old results: the ledger is stale then
    text = (profiles / "smoke.yaml").read_text()
    (profiles / "smoke.yaml").write_text(text.replace("  03_robustnorm:\n", "  03_robustnorm:\n    include_nonorm: false\n", 1))
    book.run_book("smoke", build=False, out_dir=root, device="cpu", notebooks=["03_robustnorm"])
    assert book.stale_notebooks(book.load_profile("smoke"), out_dir=root) == ["05_claims_ledger"]


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@needs_data
def test_rnorm_run_without_a_profile_leaves_the_published_book_alone(smoke_runs, capsys):
    before = _tree_digest(REPO / "book")
    scratch = REPO / "_scratch" / "smoke"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        assert cli.main(["run", "03_robustnorm", "--device", "cpu"]) == 0
        assert (scratch / "executed" / "03_robustnorm.ipynb").is_file()
        assert json.loads((scratch / "results" / "03_robustnorm" / "provenance.json").read_text())["profile"] == "smoke"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert _tree_digest(REPO / "book") == before
    assert cli.main(["run", "03_robustnorm", "-p", "profile", "cpu"]) == 2  # not a parameter: cannot be faked
    assert "has no parameter 'profile'" in capsys.readouterr().err


def _papermill(tmp_path, *params):
    out = tmp_path / "out.ipynb"
    args = [x for kv in params for x in kv]
    proc = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "02_stats_swap.ipynb"), str(out),
                           *args, "-p", "results_dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    return proc, nbformat.read(out, as_version=4)


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("param,value,message", [
    ("dataset", "mnist", "dataset='mnist'"),
    ("epsilon", "0.5", "has no parameter 'epsilon'"),  # a typo of `epsilons` must not run the defaults
])
def test_plain_papermill_bad_parameter_stops_at_the_setup_cell(tmp_path, param, value, message):
    proc, nb = _papermill(tmp_path, ("-p", param, value))
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    failed = [c for c in nb.cells if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "from_namespace" in failed[0].source  # the setup cell right after the parameters


def _build(src: Path, executed: Path, results: Path) -> Path:
    """Build the book from `executed`/`results` in a copy of the chapters; returns the HTML folder."""
    exe = Path(sys.executable).with_name("jupyter-book")
    shutil.copytree(REPO / "book", src / "book", ignore=shutil.ignore_patterns("executed", "results"))
    hidden = shutil.ignore_patterns(".*")  # files of a notebook being executed right now
    shutil.copytree(executed, src / "book" / "executed", ignore=hidden)
    shutil.copytree(results, src / "book" / "results", ignore=hidden)
    shutil.copytree(REPO / "benchmarks" / "results", src / "benchmarks" / "results")  # the Performance page includes it
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / f, src / f)
    proc = subprocess.run([str(exe), "build", str(src), "--warningiserror", "--keep-going"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return src / "_build" / "html"


def figures_on_page(html: str) -> list[str]:
    """The images of a chapter's HTML page (numbered figures and bare cell outputs alike)."""
    return re.findall(r'<img[^>]+src="([^"]+)"', html)


@pytest.mark.slow
@needs_data
def test_smoke_book_builds_each_figure_once_with_other_parameters(smoke_runs, tmp_path):
    """A -W book from the new sources, after 03 re-ran with one other power and no no-norm model: every
    image on a chapter page is a numbered figure, shown once."""
    root = smoke_runs
    params = book.notebook_params(book.load_profile("smoke"), "03_robustnorm",
                                  {"powers": [0.5], "include_nonorm": False, "device": "cpu"})
    book.run_notebook("03_robustnorm", params, out_dir=root)
    html = _build(tmp_path / "src", root / "executed", root / "results")
    for nb in REGISTRY:
        page = (html / "book" / "executed" / f"{nb}.html").read_text()
        images = figures_on_page(page)
        numbered = re.findall(r'<figure[^>]*id="fig-', page)
        assert len(images) == len(numbered), f"{nb}: {len(images)} images, {len(numbered)} numbered figures"
        assert len(images) == len(set(images)), f"{nb} shows a figure twice"
    assert "RobustNorm p=0.5" in (html / "book" / "executed" / "03_robustnorm.html").read_text()


@pytest.mark.slow
def test_committed_book_builds_without_warnings(tmp_path):
    """The committed executed notebooks and chapters render with `jupyter-book build -W`."""
    html = _build(tmp_path / "src", REPO / "book" / "executed", REPO / "book" / "results")
    assert "verdict" in (html / "book" / "executed" / "05_claims_ledger.html").read_text()
    intro = (html / "book" / "intro.html").read_text()
    assert any(word in intro for word in ("reproduced", "partly", "not run", "inconclusive")), \
        "no verdict pasted into the introduction"
