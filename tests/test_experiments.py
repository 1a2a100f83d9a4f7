"""Notebook parameters, profiles, the CLI's error handling and the claims ledger's rules."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

import rnorm
from _book_patch import patch_book
from rnorm import book, cli
from rnorm._validate import ConfigError
from rnorm.experiments import REGISTRY, planned_runs
from rnorm.experiments.ebn import EBNParams
from rnorm.experiments.robustnorm import RobustNormParams
from rnorm.experiments.shift import ShiftParams
from rnorm.experiments.stats_swap import StatsSwapParams

REPO = book.REPO



# --- notebooks: MyST sources paired with output-free .ipynb, parameters cells written for people ----

def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0].source


@pytest.mark.parametrize("name", list(REGISTRY))
def test_md_and_ipynb_pair_is_in_sync(name):
    """The .ipynb papermill runs holds exactly the cells of the .md a person edits, and no outputs."""
    import jupytext
    md = jupytext.read(REPO / "notebooks" / f"{name}.md")
    ipynb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    assert md.metadata["jupytext"]["formats"] == "ipynb,md:myst"
    assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in md.cells] == \
           [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in ipynb.cells], \
        f"{name}.ipynb differs from {name}.md: run `jupytext --sync notebooks/{name}.md`"
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in ipynb.cells if c.cell_type == "code"), "templates must be stripped"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_parameters_cell_is_generated_from_the_model(name):
    """One source per parameter: the cell is exactly what the params model generates (its defaults and
    descriptions); every line typed and commented; running it gives the model's defaults; papermill
    parses each line."""
    from papermill.translators import PythonTranslator
    import jupytext
    from rnorm.experiments.params import parameters_cell
    cls = REGISTRY[name].params
    source = _parameters_cell(jupytext.read(REPO / "notebooks" / f"{name}.md"))
    assert source == parameters_cell(cls), \
        f"the parameters cell of {name}.md is not generated from {cls.__name__}: run `make parameters`"
    ns: dict = {}
    exec(source, {"Optional": object, "Union": object}, ns)
    defaults = {n: f.get_default(call_default_factory=True) for n, f in cls.__pydantic_fields__.items()}
    got = {k: (tuple(v) if isinstance(v, list) else v) for k, v in ns.items() if not k.startswith("__")}
    assert got == defaults
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == len(defaults)
    for ln in lines:
        assert re.match(r"^\w+: [\"']?[\w\[\], ]+[\"']? = .+  # \S.*$", ln), f"untyped or uncommented: {ln}"
    parsed = PythonTranslator.inspect(nbformat.v4.new_code_cell(source))
    assert [p.name for p in parsed] == list(got), "papermill --help-notebook cannot read every line"
    assert all(p.help for p in parsed)


def test_a_default_and_its_description_live_in_the_model_only():
    """Changing a default in the model changes the generated cell (and nothing else restates it)."""
    from rnorm.experiments.params import parameters_cell
    cell = parameters_cell(StatsSwapParams)
    assert "sweep_batch_sizes: list = [8, 32, 128]  # inference batch sizes of the batch-size sweep" in cell
    assert StatsSwapParams().sweep_batch_sizes == (8, 32, 128)
    from rnorm.experiments.claims import HEADLINE_P
    assert RobustNormParams().powers[0] == HEADLINE_P and f"the ledger judges {HEADLINE_P:g}" in \
        parameters_cell(RobustNormParams)


def test_params_are_frozen_hashable_and_raise_config_errors_only():
    """The params models stay immutable, hashable and equal under a rebuild; pydantic's own errors never
    escape: every bad value is a ConfigError naming the parameter."""
    p = StatsSwapParams(seeds=[0, 1], sweep_batch_sizes=[8, 16])
    assert p.seeds == (0, 1) and hash(p) == hash(dataclasses.replace(p)) and p == dataclasses.replace(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.width = 4
    for bad, name in [({"epochs": "3"}, "epochs"), ({"width": True}, "width"), ({"lr": float("nan")}, "lr"),
                      ({"seeds": [0, "x"]}, "seeds"), ({"threads": 0}, "threads"), ({"seeds": {0, 1}}, "seeds")]:
        with pytest.raises(ConfigError, match=name):
            StatsSwapParams(**bad)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_unknown_name_in_the_notebook_namespace_is_refused(name):
    cls = REGISTRY[name].params
    with pytest.raises(ConfigError, match="has no parameter 'epsilon'"):
        cls.from_namespace({"epsilon": 0.5, "In": [], "get_ipython": print})
    cls.from_namespace({"In": [], "_": 3, "module": json})  # IPython's own names and modules are fine


def test_one_name_for_one_concept():
    """epsilons everywhere; the three batch sizes have three names; no notebook has 'eps' or 'batch_size'."""
    for entry in REGISTRY.values():
        fields = set(entry.params.field_names())
        assert not fields & {"eps", "batch_size", "eval_batch", "batch_sizes", "subset", "profile"}, entry.name
        if entry.trains:
            assert "epsilons" in fields and "train_batch_size" in fields and "train_subset" in fields
    assert "sweep_batch_sizes" in StatsSwapParams.field_names() and "eval_batch_size" in StatsSwapParams.field_names()
    from rnorm.runs import RunConfig
    assert "train_subset" in {f.name for f in dataclasses.fields(RunConfig)}


# --- bad notebook parameters: one clear error naming the parameter ---------------------------

BAD_PARAMS = [
    (ShiftParams, {"dataset": "fasion_mnist"}, "dataset", "fashion_mnist"),
    (ShiftParams, {"arch": "resnet19"}, "arch", "resnet18"),
    (ShiftParams, {"epsilons": ["-1/255"]}, "epsilons", None),
    (ShiftParams, {"epsilons": [1.5]}, "epsilons", None),
    (ShiftParams, {"epsilons": ["abc"]}, "epsilons", None),
    (ShiftParams, {"attacks": ["pgdd"]}, "attacks", "pgd"),
    (ShiftParams, {"epochs": 0}, "epochs", None),
    (ShiftParams, {"width": -4}, "width", None),
    (ShiftParams, {"controls": ["noise_gauss"]}, "controls", None),
    (StatsSwapParams, {"sweep_seeds": [5]}, "sweep_seeds", None),
    (RobustNormParams, {"stats_modes": ["batch"]}, "stats_modes", None),
    (ShiftParams, {"precision": "fp16"}, "precision", None),
    (ShiftParams, {"device": "gpu"}, "device", None),
    (StatsSwapParams, {"sweep_batch_sizes": [0, 8]}, "sweep_batch_sizes", None),
    (StatsSwapParams, {"sweep_batch_sizes": [8, 4096]}, "sweep_batch_sizes", None),
    (StatsSwapParams, {"sweep_batch_sizes": [8, 8]}, "sweep_batch_sizes", None),
    (StatsSwapParams, {"include_nonorm": "nope"}, "include_nonorm", None),
    (StatsSwapParams, {"progress": "yes"}, "progress", None),
    (StatsSwapParams, {"seeds": [0, 0]}, "seeds", None),
    (StatsSwapParams, {"eval_batch_size": 500}, "eval_batch_size", None),
    (StatsSwapParams, {"adv_fraction": 0}, "adv_fraction", None),
    (StatsSwapParams, {"pgd_steps": 0}, "pgd_steps", None),
    (StatsSwapParams, {"epsilons": []}, "epsilons", None),
    (StatsSwapParams, {"train_batch_size": 0}, "train_batch_size", None),
    (StatsSwapParams, {"epochs": 1.5}, "epochs", None),
    (RobustNormParams, {"powers": [0.0]}, "powers", None),
    (RobustNormParams, {"powers": [-1]}, "powers", None),
    (RobustNormParams, {"powers": []}, "powers", None),
    (RobustNormParams, {"include_nonorm": "False"}, "include_nonorm", None),
    (RobustNormParams, {"stats_modes": ["batchh"]}, "stats_modes", "batch"),
    (RobustNormParams, {"train_subset": 0}, "train_subset", None),
    (RobustNormParams, {"lr": 0}, "lr", None),
    (EBNParams, {"recipes": ["advprob"]}, "recipes", "advprop"),
    (EBNParams, {"datasets": ["cifar100"]}, "datasets", None),
    (EBNParams, {"archs": ["vgg16"]}, "archs", None),
    (EBNParams, {"train_eps": "9/0"}, "eps", None),
    (EBNParams, {"train_steps": -1}, "train_steps", None),
    (EBNParams, {"test_n": 0}, "test_n", None),
    (EBNParams, {"loss_weighting": "avg"}, "loss_weighting", "mean"),
    (EBNParams, {"ablation": 1}, "ablation", None),
    (EBNParams, {"channels_last": "yes"}, "channels_last", None),
    (EBNParams, {"epochs_by_dataset": {"cifar10_jpg": 30}}, "epochs_by_dataset", "cifar10_jpeg"),
    (EBNParams, {"epochs_by_dataset": {"cifar10_jpeg": 0}}, "epochs_by_dataset[cifar10_jpeg]", None),
    (EBNParams, {"epochs_by_dataset": {"cifar10_jpeg": 2}, "epochs": 3, "warmup_epochs": 2},
     "epochs_by_dataset[cifar10_jpeg]", None),
    (EBNParams, {"epochs_by_dataset": [30]}, "epochs_by_dataset", None),
]


@pytest.mark.parametrize("cls,bad,param,suggestion", BAD_PARAMS)
def test_bad_notebook_parameter(cls, bad, param, suggestion):
    with pytest.raises(ConfigError) as info:
        cls(**bad)
    msg = str(info.value)
    assert param in msg
    if suggestion:
        assert f"Did you mean {suggestion!r}" in msg or suggestion in msg


def test_unknown_parameter_key_suggests():
    with pytest.raises(ConfigError, match="datset.*Did you mean 'dataset'"):
        ShiftParams.from_dict({"datset": "fashion_mnist"})


def test_from_namespace_reads_the_fields():
    p = StatsSwapParams.from_namespace({"dataset": "fashion_mnist", "test_n": 64, "eval_batch_size": 32,
                                        "sweep_batch_sizes": [8, 16], "json": json})
    assert p.test_n == 64 and p.sweep_batch_sizes == (8, 16)


# --- planned runs -----------------------------------------------------------------------------

def test_planned_runs_share_models_across_notebooks():
    shift = planned_runs("01_distribution_shift", {})
    swap = planned_runs("02_stats_swap", {})
    assert shift[0] in swap  # the BN model of notebook 01 is reused by notebook 02
    ebn = planned_runs("04_easy_batchnorm", {"seeds": [0, 1]})
    recipes = sorted({c.recipe for c in ebn})
    assert recipes == ["advprop", "advprop_ebn", "ebn", "standard"]
    assert {c.share for c in ebn if c.recipe == "ebn"} == {"none", "affine", "stats"}
    assert all(c.norm == "multibn" for c in ebn if c.recipe != "standard")


# --- profiles -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu", "paper"])
def test_shipped_profiles_are_valid(name):
    prof = book.load_profile(name)
    assert set(prof["notebooks"]) == set(REGISTRY)


def test_unknown_profile(tmp_path):
    with pytest.raises(ConfigError, match="profile='cpux'.*Did you mean 'cpu'"):
        book.load_profile("cpux")


def test_profile_yaml_merge_keys_may_be_overridden_but_keys_not_repeated(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("defaults: &base {epochs: 1}\nnotebooks:\n  02_stats_swap:\n    <<: *base\n    epochs: 2\n")
    assert book.load_profile(str(f))["notebooks"]["02_stats_swap"]["epochs"] == 2


@pytest.mark.parametrize("text,match", [
    ("jobz: 2\n", "unknown key 'jobz'"),
    ("notebooks:\n  02_stat_swap: {}\n", "unknown notebook '02_stat_swap'"),
    ("notebooks:\n  02_stats_swap: {test_nn: 3}\n", "test_nn"),
    ("defaults: {widht: 3}\n", "widht"),
    ("notebooks:\n  03_robustnorm: {powers: [0]}\n", "powers"),
    ("jobs: 0\n", "jobs"),
    ("- a\n- b\n", "mapping"),
    # empty, or a value that is not a mapping: refused naming the file and the keys a profile needs
    ("", r"mine\.yaml is empty; a profile is a mapping with at least one of the keys defaults or notebooks"),
    ("# only a comment\n", r"mine\.yaml is empty; .*defaults or notebooks"),
    ("0\n", r"mine\.yaml holds 0 \(of type int\), not a mapping; .*defaults or notebooks"),
    ("[]\n", r"mine\.yaml holds \[\] \(of type list\), not a mapping"),
    ("{}\n", r"mine\.yaml sets no parameter \(an empty mapping\); .*defaults or notebooks"),
    ("description: mine\njobs: 1\n", r"mine\.yaml sets no parameter \(it has only 'description', 'jobs'\)"),
    ("a: [\n", "not valid YAML"),
    # a key given twice: plain YAML would keep the second silently, and an edit above it would change nothing
    ("notebooks:\n  02_stats_swap:\n    test_n: 32\n    epochs: 1\n    test_n: 64\n",
     r"key 'test_n' is given twice \(lines 3 and 5\)"),
    ("notebooks:\n  02_stats_swap: {test_n: 32}\n  02_stats_swap: {}\n", "key '02_stats_swap' is given twice"),
])
def test_bad_profile_files(tmp_path, text, match):
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        book.load_profile(str(f))


def test_cli_reports_user_errors_without_traceback(capsys):
    assert cli.main(["run", "02_stats_swap", "--profile", "smoke", "-p", "dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "dataset='mnist'" in err and "Traceback" not in err
    assert cli.main(["run", "02_stats_swp", "--profile", "smoke"]) == 2
    assert "Did you mean '02_stats_swap'" in capsys.readouterr().err
    assert cli.main(["run", "02_stats_swap", "--profile", "smoke", "-p", "epsilons", "[0.1,"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert cli.main(["book", "--profile", "nope"]) == 2
    assert cli.main(["run", "05_claims_ledger", "--profile", "smoke", "-p", "x", "1"]) == 2


def test_cli_plan_lists_runs_and_where_each_stands(capsys, tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("RNORM_DATA", str(data_root))  # the plan checks its sizes against the data
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")  # no published runs: every run reads "to train"
    assert cli.main(["plan", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "to train" in out
    total = int(out.strip().splitlines()[-1].split()[0])
    assert out.strip().splitlines()[-1] == f"{total} runs: {total} to train"
    # --only and --match select as `rnorm train` does; -p changes the plan of the one notebook named
    assert cli.main(["plan", "--profile", "smoke", "--only", "04_easy_batchnorm", "--match", "ebn"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[:-1]
    assert rows and all(r.startswith("04_easy_batchnorm") and "ebn" in r.split()[1] for r in rows)
    assert cli.main(["plan", "--profile", "smoke", "--only", "04_easy_batchnorm", "-p", "seeds", "[0, 1, 2, 3]"]) == 0
    assert "-s3-" in capsys.readouterr().out
    # a run with a checkpoint reads as part-trained, and is counted so
    from rnorm.experiments import planned_runs
    from rnorm import book
    cfg = planned_runs("04_easy_batchnorm", book.load_profile("smoke")["notebooks"]["04_easy_batchnorm"])[0]
    run = tmp_path / "runs" / cfg.folder_name()
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    assert cli.main(["plan", "--profile", "smoke", "--only", "04_easy_batchnorm", "--match", cfg.folder_name()]) == 0
    out = capsys.readouterr().out
    assert f"trained 1 of {cfg.epochs} epochs" in out and out.strip().endswith("1 runs: 1 partly trained")
    assert cli.main(["plan", "--profile", "smoke", "--match", "no-such-run"]) == 2
    assert "--match 'no-such-run' is in none" in capsys.readouterr().err


def test_unwritable_results_folder_fails_before_any_work(tmp_path):
    from rnorm.provenance import ResultsDir
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="not writable.*results_dir"):
        ResultsDir("02_stats_swap", blocker / "results")


def _result(notebook="02_stats_swap", value=1):
    import pandas as pd
    from rnorm.experiments.stats_swap import StatsSwapParams
    from rnorm.results import StudyResult
    return StudyResult(notebook, StatsSwapParams(), {"t": pd.DataFrame({"a": [value, 2]})},
                       pd.DataFrame({"mean": [0.5]}), {"x": value}, [], "cpu")


def test_results_are_saved_all_at_once_with_complete_provenance(tmp_path):
    from rnorm.provenance import ResultsDir
    path = ResultsDir("02_stats_swap", tmp_path).save(_result())
    assert sorted(p.name for p in path.iterdir()) == ["provenance.json", "summary.csv", "summary.json", "t.csv"]
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["parameters"]["test_n"] == 128 and prov["versions"]["torch"] and prov["key"]
    assert prov["profile"] is None  # the class defaults are no profile's parameters
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_failure_part_way_leaves_the_old_results_whole(tmp_path, monkeypatch):
    import rnorm.plots
    from rnorm.provenance import ResultsDir
    out = ResultsDir("02_stats_swap", tmp_path)
    out.save(_result(value=1))
    before = {p.name: p.read_bytes() for p in out.path.iterdir()}
    bad = _result(value=7)
    bad.figures["fig"] = (object(), None)
    monkeypatch.setattr(rnorm.plots, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError, match="No space"):
        out.save(bad)
    assert {p.name: p.read_bytes() for p in out.path.iterdir()} == before  # nothing new beside the old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluation_is_cached_by_its_inputs(tmp_path, monkeypatch):
    import types

    import pandas as pd
    import torch

    import rnorm.evaluate as ev
    from rnorm.experiments.common import cached_evaluate
    from rnorm.models import resnet20

    torch.manual_seed(0)
    model = resnet20(width=4, in_channels=1, mean=(0.5,), std=(0.5,)).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    run = types.SimpleNamespace(path=tmp_path, config=types.SimpleNamespace(key=lambda: "abc"))
    kw = dict(attacks=("clean", "fgsm"), eps=(8 / 255,), stats=("population", "batch"), batch_sizes=(8,), device="cpu")
    first = cached_evaluate(run, model, x, y, **kw)
    assert len(list(tmp_path.glob("eval-*.csv"))) == 1
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
    again = cached_evaluate(run, model, x, y, **{**kw, "device": "auto"})  # device is not part of the key
    pd.testing.assert_frame_equal(first.reset_index(drop=True), again, check_dtype=False)
    with pytest.raises(AssertionError, match="not cached"):  # other images: another key
        cached_evaluate(run, model, x.flip(0), y, **kw)
    with pytest.raises(AssertionError, match="not cached"):  # other arguments: another key
        cached_evaluate(run, model, x, y, **{**kw, "eps": (4 / 255,)})


def _provenance(folder: Path, nb: str, profile: str, key: str | None = "current") -> None:
    """A provenance.json as ``rnorm run`` writes it for ``profile``; ``key="current"``: the key that
    profile gives the notebook now."""
    if key == "current":
        key = book.notebook_key(nb, book.notebook_params(book.load_profile(profile), nb))
    (folder / nb).mkdir(exist_ok=True)
    (folder / nb / "provenance.json").write_text(json.dumps({"profile": profile, "key": key, "parameters": {}}))


def _stale(folder: Path) -> dict:
    """What the pipeline hands the ledger: the results under ``folder`` that their profile would not give now."""
    from rnorm.experiments.ledger import provenances
    return book.stale_studies(provenances(folder))


def test_ledger_refuses_results_of_different_profiles(tmp_path):
    from rnorm.experiments.ledger import LedgerParams, run
    _provenance(tmp_path, "02_stats_swap", "cpu")
    _provenance(tmp_path, "03_robustnorm", "smoke")
    with pytest.raises(ConfigError, match=r"different profiles.*02_stats_swap/provenance.json: cpu.*"
                                          r"03_robustnorm/provenance.json: smoke"):
        run(LedgerParams(results_dir=str(tmp_path)), stale=_stale(tmp_path))
    _provenance(tmp_path, "03_robustnorm", "cpu")
    assert run(LedgerParams(results_dir=str(tmp_path)), stale=_stale(tmp_path)).headline["profile"] == "cpu"


@pytest.mark.parametrize("key", [None, "0123456789abcdef"])
def test_ledger_leaves_out_results_the_profile_would_not_give_now(tmp_path, key):
    """Results of an earlier build (no key) or of other code/parameters (another key) under a
    profile's name do not test the claim as the book now states it: their claims are "not run",
    with the reason, and they neither block the ledger (another profile) nor enter its scale table."""
    from rnorm.experiments.ledger import LedgerParams, run
    _provenance(tmp_path, "02_stats_swap", "cpu")
    _provenance(tmp_path, "03_robustnorm", "smoke", key=key)
    models = pd.DataFrame({"norm": ["bn"], "seed": [0], "clean_full": [0.99]})
    models.to_csv(tmp_path / "03_robustnorm" / "models.csv", index=False)
    res = run(LedgerParams(results_dir=str(tmp_path)), stale=_stale(tmp_path))  # no "different profiles": 03 is left out
    assert res.headline["profile"] == "cpu" and res.headline["stale"] == ["03_robustnorm"]
    row = res.frames["ledger"].set_index("claim").loc["C3"]
    assert row["verdict"] == "not run"
    assert "03_robustnorm's committed results" in row["why"] and "rnorm book --profile smoke" in row["why"]
    assert ("earlier build" in row["why"]) == (key is None) and (key or "earlier build") in row["why"]
    assert list(res.frames["scale"]["notebook"]) == ["02_stats_swap"]
    assert res.headline["inputs"]["03_robustnorm"] is None
    from rnorm.experiments.verdicts import Results  # the rules never see a skipped study's frames
    assert Results(tmp_path).frame("03_robustnorm", "models") is not None
    assert Results(tmp_path, skip={"03_robustnorm"}).frame("03_robustnorm", "models") is None


def test_matching_profile_is_derived_from_the_parameters():
    prof = book.load_profile("smoke")["notebooks"]["02_stats_swap"]
    assert book.matching_profile("02_stats_swap", prof) == "smoke"
    assert book.matching_profile("02_stats_swap", {**prof, "device": "cpu", "threads": 2}) == "smoke"  # run-time
    assert book.matching_profile("02_stats_swap", {**prof, "test_n": 32}) is None
    cpu = book.load_profile("cpu")["notebooks"]["03_robustnorm"]
    assert book.default_out_dir("03_robustnorm", cpu) == REPO / "book"
    assert book.default_out_dir("03_robustnorm", {**cpu, "pgd_steps": 3}) == REPO / "_scratch" / "custom"


def test_notebook_key_follows_source_parameters_and_code_but_not_docstrings(tmp_path, monkeypatch):
    prof = book.load_profile("smoke")["notebooks"]["02_stats_swap"]
    k = book.notebook_key("02_stats_swap", prof)
    assert k == book.notebook_key("02_stats_swap", {**prof, "device": "cpu"})
    assert k != book.notebook_key("02_stats_swap", {**prof, "test_n": 32})
    deps = book.code_version(book._notebook_code("02_stats_swap"))
    assert {"rnorm.evaluate", "rnorm.experiments.stats_swap", "rnorm.plots", "rnorm.train"} <= set(deps)
    assert "rnorm.cli" not in deps
    import ast
    a = book._code_fingerprint(ast.parse('def f():\n    """doc"""\n    return 1  # comment\n'))
    b = book._code_fingerprint(ast.parse('def f():\n    """other doc"""\n    return 1\n'))
    c = book._code_fingerprint(ast.parse('def f():\n    return 2\n'))
    assert a == b != c


def _executed_copy(out_dir: Path, nb: str, inputs: dict | None, params: dict, *, key_file: bool = True) -> None:
    """A hand-made executed copy of ``nb`` whose key was computed from ``inputs`` (None: no key)."""
    (out_dir / "executed").mkdir(parents=True, exist_ok=True)
    (out_dir / "executed" / f"{nb}.ipynb").write_text("{}")
    res = out_dir / "results" / nb
    res.mkdir(parents=True, exist_ok=True)
    prov = {"parameters": params, **({"key": book._hash_inputs(inputs)} if inputs else {})}
    (res / "provenance.json").write_text(json.dumps(prov))
    if inputs and key_file:
        (res / book.KEY_FILE).write_text(json.dumps({"key": book._hash_inputs(inputs), **inputs}))


def test_why_stale_names_the_source_the_parameters_and_the_modules_that_changed(tmp_path):
    nb = "02_stats_swap"
    prof = book.load_profile("smoke")["notebooks"][nb]
    now = book.key_inputs(nb, prof)
    assert book._hash_inputs(now) == book.notebook_key(nb, prof)  # one computation behind both
    _executed_copy(tmp_path, nb, now, prof)
    assert book.why_stale(nb, prof, tmp_path) == []
    old = json.loads(json.dumps(now))
    old["source"] = "0" * 64
    old["params"]["test_n"] = 7
    old["code"]["rnorm.stats"] = "f" * 16
    old["code"]["rnorm.gone"] = "e" * 16
    _executed_copy(tmp_path, nb, old, prof)
    why = book.why_stale(nb, prof, tmp_path)
    assert why == ["its source notebooks/02_stats_swap.md changed",
                   f"parameters changed: test_n 7 -> {now['params']['test_n']!r}",
                   "code changed: rnorm.gone, rnorm.stats"]


def test_why_stale_says_what_an_older_executed_copy_can_tell(tmp_path):
    nb = "02_stats_swap"
    prof = book.load_profile("smoke")["notebooks"][nb]
    assert book.why_stale(nb, prof, tmp_path) == [f"no executed copy in {tmp_path / 'executed'}"]
    _executed_copy(tmp_path, nb, None, prof)
    assert "records no key" in book.why_stale(nb, prof, tmp_path)[0]
    other = json.loads(json.dumps(book.key_inputs(nb, prof)))
    other["code"]["rnorm.stats"] = "f" * 16
    resolved = json.loads(json.dumps(book.result_params(nb, prof)))  # as provenance.json records them
    # parameters from provenance only; test_n=7 is no longer valid with eval_batch_size 32 and is shown as recorded
    _executed_copy(tmp_path, nb, other, {**resolved, "test_n": 7, "device": "cpu"}, key_file=False)
    why = book.why_stale(nb, prof, tmp_path)
    assert why[0] == f"parameters changed: test_n 7 -> {prof['test_n']!r}"
    assert "may also have changed" in why[1] and len(why) == 2  # its key was not of today's code either
    # the parameters alone explain the key: they are the whole reason
    then = {**json.loads(json.dumps(book.key_inputs(nb, prof))), "params": {**resolved, "test_n": 48}}
    _executed_copy(tmp_path, nb, then, {**resolved, "test_n": 48}, key_file=False)
    assert book.why_stale(nb, prof, tmp_path) == [f"parameters changed: test_n 48 -> {prof['test_n']!r}"]
    _executed_copy(tmp_path, nb, other, resolved, key_file=False)
    assert "which of them is not known" in book.why_stale(nb, prof, tmp_path)[0]
    # an up-to-date copy without key.json gets one (its key proves today's inputs are its own); a stale one not
    profile = book.load_profile("smoke")
    assert book.record_missing_key_inputs(profile, [nb], tmp_path) == []
    _executed_copy(tmp_path, nb, book.key_inputs(nb, prof), resolved, key_file=False)
    assert book.record_missing_key_inputs(profile, [nb], tmp_path) == [nb]
    assert json.loads((tmp_path / "results" / nb / book.KEY_FILE).read_text())["key"] == book.notebook_key(nb, prof)


def test_staleness_passes_on_to_the_notebooks_that_read_a_stale_one(tmp_path):
    prof = book.load_profile("smoke")
    for nb in REGISTRY:
        params = prof["notebooks"][nb]
        _executed_copy(tmp_path, nb, book.key_inputs(nb, params), params)
    led = tmp_path / "results" / "05_claims_ledger" / "summary.json"
    led.write_text(json.dumps({"inputs": {nb: book.recorded_key(nb, tmp_path) for nb in REGISTRY
                                          if nb != "05_claims_ledger"}}))
    assert book.staleness(prof, out_dir=tmp_path) == {}
    (tmp_path / "executed" / "03_robustnorm.ipynb").unlink()
    why = book.staleness(prof, out_dir=tmp_path)
    assert list(why) == ["03_robustnorm", "05_claims_ledger"] == book.stale_notebooks(prof, out_dir=tmp_path)
    assert why["05_claims_ledger"] == ["it reads 03_robustnorm, which is stale"]
    led.unlink()
    assert book.staleness(prof, out_dir=tmp_path)["05_claims_ledger"] == ["it reads 03_robustnorm, which is stale"]
    _executed_copy(tmp_path, "03_robustnorm", book.key_inputs("03_robustnorm", prof["notebooks"]["03_robustnorm"]),
                   prof["notebooks"]["03_robustnorm"])
    assert book.staleness(prof, out_dir=tmp_path) == {"05_claims_ledger": ["it recorded no inputs (summary.json)"]}


def test_book_dry_run_reports_and_changes_nothing(tmp_path, monkeypatch, capsys, data_root):
    monkeypatch.setenv("RNORM_DATA", str(data_root))
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    out = tmp_path / "book"
    assert cli.main(["book", "--profile", "smoke", "--dry-run", "--only", "02_stats_swap", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "02_stats_swap            execute: no executed copy" in text
    cfgs = book.planned_configs(book.load_profile("smoke"), ["02_stats_swap"])
    assert f"{len(cfgs)} training run(s) needed as of now: 0 finished" in text and cfgs[0].folder_name() in text
    assert not out.exists() and not (tmp_path / "runs").exists()


def _checkout(folder: Path, package: bool = True) -> Path:
    """A project checkout in ``folder``: the book's configuration, notebooks and profiles copied, and
    (``package``) its ``rnorm`` the package under test, linked."""
    import shutil
    folder.mkdir(parents=True)
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / f, folder / f)
    for d in ("notebooks", "profiles"):
        shutil.copytree(REPO / d, folder / d)
    if package:
        (folder / "rnorm").symlink_to(Path(rnorm.__file__).resolve().parent, target_is_directory=True)
    return folder


def _nothing_may_run(monkeypatch, *also):
    """Training, executing a notebook, building the HTML (and ``also``, names in rnorm.book) fail the test."""
    def boom(*a, **k):
        raise AssertionError("something ran after a check that should have stopped it")
    for name in ("build_book", "restore_evaluations", *also):
        patch_book(monkeypatch, name, boom)
    import papermill
    import rnorm.executors
    monkeypatch.setattr(rnorm.executors, "run_all", boom)
    monkeypatch.setattr(papermill, "execute_notebook", boom)


@pytest.mark.parametrize("missing,pair", [(".ipynb", ".md"), (".md", ".ipynb")])
def test_book_and_run_refuse_a_missing_notebook_file_naming_it_before_anything_runs(
        tmp_path, monkeypatch, capsys, data_root, missing, pair):
    monkeypatch.setenv("RNORM_DATA", str(data_root))
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    root = _checkout(tmp_path / "checkout")
    monkeypatch.chdir(root)
    gone = root / "notebooks" / f"02_stats_swap{missing}"
    gone.unlink()
    _nothing_may_run(monkeypatch, "pretrain", "preflight")  # the files are checked first of all
    out = tmp_path / "out"
    for argv in (["book", "--profile", "smoke", "--dry-run", "--only", "02_stats_swap", "--out-dir", str(out)],
                 ["book", "--profile", "smoke", "--dry-run", "--out-dir", str(out)],
                 ["book", "--profile", "smoke", "--no-build", "--only", "02_stats_swap", "--out-dir", str(out)],
                 ["run", "02_stats_swap", "--profile", "smoke", "--out-dir", str(out)]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{gone} is missing" in err and "Traceback" not in err, err
        assert f"jupytext --sync {root / 'notebooks' / f'02_stats_swap{pair}'}" in err, err
    assert not out.exists() and not (tmp_path / "runs").exists()
    (root / "notebooks" / f"02_stats_swap{pair}").unlink()  # both gone: restore them from git
    assert cli.main(["book", "--profile", "smoke", "--dry-run", "--only", "02_stats_swap"]) == 2
    assert "are missing; restore them with `git checkout --" in capsys.readouterr().err


def test_plan_train_and_book_apply_the_preflights_size_checks(tmp_path, monkeypatch, capsys, data_root):
    """A size the data cannot give is refused by every command that plans runs, naming the value, before
    anything is trained or executed (one check: book.check_sizes, in preflight and planned_configs)."""
    from rnorm import data
    monkeypatch.setenv("RNORM_DATA", str(data_root))
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    n = data.load("fashion_mnist", "train")[1].shape[0]
    too_many = ["--only", "02_stats_swap", "-p", "train_subset", str(n + 1)]
    want = (f"notebook '02_stats_swap': train_subset={n + 1} is larger than the 'fashion_mnist' train split "
            f"({n} images); allowed: up to {n}.")
    _nothing_may_run(monkeypatch)
    for argv in (["plan", "--profile", "smoke", *too_many], ["train", "--profile", "smoke", "--jobs", "1", *too_many]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, err
    prof = tmp_path / "big.yaml"
    prof.write_text((REPO / "profiles" / "smoke.yaml").read_text().replace(
        "  02_stats_swap:\n", f"  02_stats_swap:\n    train_subset: {n + 1}\n", 1))
    for extra in (["--dry-run"], ["--no-build"]):
        assert cli.main(["book", "--profile", str(prof), "--only", "02_stats_swap", "--out-dir",
                         str(tmp_path / "out"), *extra]) == 2
        assert want in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/*")) and not (tmp_path / "out").exists()  # (preflight made runs/ writable)
    # the limit itself is allowed, and the test split is checked as well
    assert cli.main(["plan", "--profile", "smoke", "--only", "02_stats_swap", "-p", "train_subset", str(n)]) == 0
    n_test = data.load("fashion_mnist", "test")[1].shape[0]
    assert cli.main(["plan", "--profile", "smoke", "--only", "02_stats_swap", "-p", "test_n", str(n_test + 1)]) == 2
    assert f"test_n={n_test + 1} is larger than the 'fashion_mnist' test split" in capsys.readouterr().err


def test_build_and_book_work_on_the_checkout_they_are_run_in(tmp_path, monkeypatch, capsys):
    """Not on the checkout the package is installed from (a shared .venv used to render the wrong one)."""
    import subprocess
    import sys
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    other = _checkout(tmp_path / "other")
    monkeypatch.chdir(other / "notebooks")  # anywhere inside it
    assert book.project_root() == other and book.REPO == other
    assert cli.main(["build"]) == 0
    assert calls[-1][1:3] == ["build", str(other)]
    assert book.notebook_source("02_stats_swap") == other / "notebooks" / "02_stats_swap.md"
    assert book.default_out_dir("02_stats_swap", {}) == other / "_scratch" / "custom"
    # outside any checkout: one clear line, exit status 2
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    monkeypatch.chdir(nowhere)
    for argv in (["build"], ["book", "--profile", "smoke", "--dry-run"], ["plan", "--profile", "smoke"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{nowhere} is not inside an rnorm checkout" in err and "_config.yml, _toc.yml, notebooks/" in err
    assert len(calls) == 1
    # a checkout whose rnorm is not the package running: it renders, but refuses to run mixed code
    bare = _checkout(tmp_path / "bare", package=False)
    monkeypatch.chdir(bare)
    assert cli.main(["build"]) == 0 and calls[-1][2] == str(bare)
    for argv in (["book", "--profile", "smoke", "--dry-run"], ["plan", "--profile", "smoke"],
                 ["run", "02_stats_swap"], ["train", "--profile", "smoke"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"this checkout is {bare}, but the rnorm package running is {Path(rnorm.__file__).parent}" in err
    # the library needs no checkout: importing it, or the pipeline module, works anywhere
    proc = subprocess.__dict__["Popen"]  # the real one (run is patched above)
    child = proc([sys.executable, "-c", "import rnorm.norms, rnorm.book; print(rnorm.book.find_root())"],
                 cwd=nowhere, stdout=-1, stderr=-1, text=True,
                 env={**__import__("os").environ, "PYTHONPATH": str(Path(rnorm.__file__).resolve().parents[1])})
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and out.strip() == "None", err


def test_run_state_reads_where_a_run_stands_without_touching_it(tmp_path, monkeypatch):
    from rnorm.runs import RunConfig
    cfg = RunConfig(dataset="fashion_mnist", arch="resnet20", width=4, epochs=3)
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", str(tmp_path / "models"))
    assert book.run_state(cfg) == "to train"
    run = tmp_path / "runs" / cfg.folder_name()
    run.mkdir(parents=True)
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n")
    assert book.run_state(cfg) == "to train"  # a history without a checkpoint cannot be resumed
    (run / "checkpoint.pt").write_bytes(b"")
    assert book.run_state(cfg) == "trained 2 of 3 epochs"
    pub = tmp_path / "models" / cfg.folder_name()
    pub.mkdir(parents=True)
    (pub / "model.pt").write_bytes(b"")
    assert book.run_state(cfg) == "trained 2 of 3 epochs"  # a checkpoint is resumed, not replaced by the archive
    (run / "checkpoint.pt").unlink()
    assert book.run_state(cfg) == "published"
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "model.pt").write_bytes(b"")
    (run / "done").write_text("")
    assert book.run_state(cfg) == "finished"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "done", "history.csv", "model.pt"]


def test_accuracy_table_keeps_the_order_of_the_rows_and_shows_mean_and_sd():
    import pandas as pd
    from rnorm.experiments.common import accuracy_table
    acc = pd.DataFrame({"recipe": ["standard", "standard", "advprop", "advprop"] * 2,
                        "attack": ["clean"] * 4 + ["pgd"] * 4, "eps": [0.0] * 4 + [8 / 255] * 4,
                        "accuracy": [0.8, 0.9, 0.7, 0.7, 0.1, 0.3, 0.2, 0.2], "seed": [0, 1] * 4})
    t = accuracy_table(acc, ["recipe"], labelled=("recipe",))
    assert list(t.columns) == ["recipe", "clean", "PGD 8/255"]
    assert t["recipe"].tolist() == ["standard", "AdvProp"]  # as the rows come, not alphabetical
    assert t.iloc[0]["clean"] == "85.0 ± 7.1" and t.iloc[1]["PGD 8/255"] == "20.0 ± 0.0"


def test_train_command_trains_the_sweep_then_the_chosen_runs(tmp_path, monkeypatch, data_root):
    """03's RobustNorm runs can only be named once its learning-rate sweep is trained: `rnorm train`
    trains in rounds, so one call leaves every run the notebook needs in the cache."""
    from rnorm.experiments import robustnorm
    from rnorm.runs import find_run
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path))
    prof = book.load_profile("smoke")
    params = RobustNormParams.from_dict(prof["notebooks"]["03_robustnorm"])
    assert robustnorm.chosen_lrs(params) is None  # nothing trained: the chosen runs cannot be named yet
    assert not any(c.norm == "robustnorm" and c.holdout == 0 for c in robustnorm.runs(params))
    assert cli.main(["train", "--profile", "smoke", "--only", "03_robustnorm", "--jobs", "1"]) == 0
    chosen = robustnorm.chosen_lrs(params)
    assert set(chosen) == {"bn"} | {f"robustnorm p={q:g}" for q in params.powers}
    assert set(chosen.values()) <= set(params.sweep_lrs)
    for cfg in robustnorm.runs(params):
        assert find_run(cfg) is not None, cfg.name()
    best = {}
    for cfg in robustnorm.sweep_runs(params):  # the choice is the best final held-out accuracy, ties to the smaller
        name = "bn" if cfg.norm == "bn" else f"robustnorm p={cfg.norm_p:g}"
        val = find_run(cfg).history["val_acc"].iloc[-1]
        if name not in best or val > best[name][0] or (val == best[name][0] and cfg.lr < best[name][1]):
            best[name] = (val, cfg.lr)
    assert chosen == {name: lr for name, (v, lr) in best.items()}
    main = [c for c in robustnorm.runs(params) if c.holdout == 0]  # the study's models train at the chosen rates
    assert {c.lr for c in main if c.norm == "bn"} == {chosen["bn"]}
    assert {c.lr for c in main if c.norm == "none"} == {params.lr}
    for q in params.powers:
        assert {c.lr for c in main if c.norm == "robustnorm" and c.norm_p == q} == {chosen[f"robustnorm p={q:g}"]}

    # published into an archive, the runs serve a fresh runs folder without training
    archive = tmp_path.parent / f"{tmp_path.name}-archive"
    assert cli.main(["publish", "--profile", "smoke", "--only", "03_robustnorm", "--archive", str(archive)]) == 0
    names = sorted(p.name for p in archive.iterdir() if p.is_dir())
    assert names == sorted(c.folder_name() for c in robustnorm.runs(params))
    assert all(not (archive / n / "checkpoint.pt").exists() for n in names)
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path.parent / f"{tmp_path.name}-fresh"))
    monkeypatch.setenv("RNORM_ARCHIVE", str(archive))
    monkeypatch.setattr("rnorm.runs._train_locked", lambda *a, **k: pytest.fail("trained instead of restoring"))
    assert robustnorm.chosen_lrs(params) == chosen
    for cfg in robustnorm.runs(params):
        assert find_run(cfg) is not None, cfg.name()


def test_ebn_epochs_per_dataset_reach_the_runs_and_the_texts():
    from rnorm.experiments import ebn, ledger
    p = EBNParams(datasets=["fashion_mnist", "cifar10_jpeg"], recipes=["standard", "ebn"], epochs=15,
                  epochs_by_dataset={"cifar10_jpeg": 30, "cifar10": 40}, ablation=True)
    by_dataset = {(c.dataset, c.recipe, c.share): c.epochs for c in ebn.runs(p)}
    assert by_dataset == {("fashion_mnist", "standard", "none"): 15, ("fashion_mnist", "ebn", "none"): 15,
                          ("fashion_mnist", "ebn", "affine"): 15, ("fashion_mnist", "ebn", "stats"): 15,
                          ("cifar10_jpeg", "standard", "none"): 30, ("cifar10_jpeg", "ebn", "none"): 30}
    # a run's key is its settings: the same run as one planned with epochs 30 outright
    alone = EBNParams(datasets=["cifar10_jpeg"], recipes=["standard"], epochs=30, ablation=False)
    assert ebn.runs(alone)[0].key() == [c for c in ebn.runs(p) if c.dataset == "cifar10_jpeg"][0].key()
    assert ebn.epochs_text(p) == "15 epoch(s) on FashionMNIST, 30 on CIFAR-10 (lossy JPEG copy)"
    assert ebn.epochs_text(EBNParams(epochs=15, epochs_by_dataset={"cifar10_jpeg": 30})) == "15 epoch(s)"
    # held immutable and hashable, only for the build's datasets whose epochs differ
    assert p.epochs_by_dataset == (("cifar10_jpeg", 30),) and hash(p) == hash(dataclasses.replace(p))
    assert p.as_dict()["epochs_by_dataset"] == {"cifar10_jpeg": 30}
    assert EBNParams(epochs=15, epochs_by_dataset={"cifar10_jpeg": 30}).as_dict()["epochs_by_dataset"] == {}
    assert ledger._epochs(p.as_dict()) == "15 (cifar10_jpeg: 30)"
    assert ledger._epochs(alone.as_dict()) == 30
    assert ledger._epochs({**alone.as_dict(), "epochs_by_dataset": {"cifar10_jpeg": 25}}) == "cifar10_jpeg: 25"


def test_ebn_apgd_attacks_the_main_branch_of_the_compared_recipes_and_the_pgd_at_baseline(monkeypatch):
    import torch
    from rnorm.experiments import ebn
    calls = []

    def fake_evaluate(run, model, x, y, *, attacks, **kw):
        calls.append((run.recipe, run.share, attacks, kw.get("branches", ("main",))))
        return pd.DataFrame({"attack": list(attacks)})

    class FakeRun:
        def __init__(self, cfg):
            self.recipe, self.share = cfg.recipe, cfg.share

        def model(self, device):
            return None

    monkeypatch.setattr(ebn, "cached_evaluate", fake_evaluate)
    p = EBNParams(recipes=["standard", "pgd_at", "advprop", "ebn", "advprop_ebn"], ablation=True, test_n=128,
                  apgd_n=64, eval_batch_size=64)
    x, y = torch.zeros(128, 1, 28, 28), torch.zeros(128, dtype=torch.long)
    for cfg in ebn.runs(p):
        ebn.evaluate_run(p, cfg, FakeRun(cfg), "cpu", {cfg.dataset: (x, y)}, {cfg.dataset: (x, y)})
    apgd = {(r, s): b for r, s, attacks, b in calls if attacks == ("apgd",)}
    assert set(apgd) == {("standard", "none"), ("pgd_at", "none"), ("advprop", "none"), ("ebn", "none")}
    assert set(apgd.values()) == {("main",)}


def test_ebn_training_attack_steps_eps_over_steps_unless_given():
    from rnorm.experiments import ebn
    p = EBNParams(train_eps="2/255", train_steps=1, recipes=["standard", "advprop"], ablation=False)
    adv = [c for c in ebn.runs(p) if c.recipe == "advprop"]
    assert adv and all(abs(c.train_alpha - 2 / 255) < 1e-12 for c in adv)
    p2 = EBNParams(train_eps="4/255", train_steps=2, train_alpha="1/255", recipes=["advprop"], ablation=False)
    assert all(abs(c.train_alpha - 1 / 255) < 1e-12 for c in ebn.runs(p2))
    assert abs(ebn.train_alpha(EBNParams(train_eps="4/255", train_steps=2)) - 2 / 255) < 1e-12
    for bad in ("0", "-1/255", "two", "2"):
        with pytest.raises(ConfigError, match=rf"train_alpha='{re.escape(bad)}' is not allowed; allowed: None"):
            EBNParams(train_alpha=bad)


def test_robustnorm_sweep_picks_the_best_rate_ties_to_the_smaller_and_nan_last():
    from rnorm.experiments import robustnorm
    assert robustnorm.pick_lr({0.05: 0.70, 0.1: 0.75, 0.2: 0.74}) == 0.1
    assert robustnorm.pick_lr({0.2: 0.75, 0.1: 0.75, 0.05: 0.60}) == 0.1  # tie: the smaller rate
    assert robustnorm.pick_lr({0.05: 0.30, 0.1: float("nan")}) == 0.05  # diverged: ranks last
    p = RobustNormParams(sweep_lrs=[0.05, 0.1, 0.2], powers=[0.2, 1.0])
    sweep = pd.DataFrame([dict(epoch=e, norm=n, norm_p=q, lr=lr, val_acc=v * e / 2) for n, q, accs in
                          (("robustnorm", 0.2, {0.05: 0.70, 0.1: 0.73, 0.2: 0.75}),
                           ("robustnorm", 1.0, {0.05: 0.67, 0.1: 0.69, 0.2: 0.69}),
                           ("bn", 0.0, {0.05: 0.80, 0.1: 0.79, 0.2: float("nan")}))
                          for lr, v in accs.items() for e in (1, 2)])
    t = robustnorm.sweep_table(p, sweep).set_index(["norm", "norm_p", "lr"])
    rn = t.loc["robustnorm"]
    assert rn.loc[(0.2, 0.2), "chosen"] and rn.loc[(0.2, 0.2), "at_grid_edge"]  # the largest rate: not bracketed
    assert rn.loc[(1.0, 0.1), "chosen"] and not rn.loc[(1.0, 0.1), "at_grid_edge"] and not rn.loc[(1.0, 0.2), "chosen"]
    assert rn.loc[(0.2, 0.2), "val_acc"] == pytest.approx(0.75)  # the final epoch's accuracy
    bn = t.loc["bn"].loc[0.0]
    assert bn.loc[0.05, "chosen"] and bn.loc[0.05, "at_grid_edge"]  # the smallest rate; the diverged one ranks last
    grid = robustnorm.sweep_grid(robustnorm.sweep_table(p, sweep)).set_index("model")
    assert grid.loc["BatchNorm", "lr 0.2"] == "–" and grid.loc["BatchNorm", "lr 0.05"] == "80.0 (chosen)"
    assert grid.loc["RobustNorm p=1", "lr 0.1"] == "69.0 (chosen)" and grid.loc["RobustNorm p=1", "lr 0.2"] == "69.0"
    with pytest.raises(ConfigError, match=r"sweep_lrs=\[0.1, 0.1\] repeats a value"):
        RobustNormParams(sweep_lrs=[0.1, 0.1])


def test_matched_trend_measures_robustnorm_against_the_line_through_the_others():
    """Reference points on robust = -0.5 + 1.0 * clean exactly; RobustNorm 4 points above it on every seed
    (with a little seed noise) and inside their clean range -> residual +0.04 with a CI above 0."""
    from rnorm.experiments import robustnorm
    rows = []
    for s, (cb, cn, cr, noise) in enumerate([(0.90, 0.80, 0.85, 0.002), (0.91, 0.81, 0.86, -0.001),
                                             (0.89, 0.82, 0.84, 0.0)]):
        rows += [dict(norm="bn", norm_p=float("nan"), seed=s, clean_full=cb, pgd=cb - 0.5),
                 dict(norm="none", norm_p=float("nan"), seed=s, clean_full=cn, pgd=cn - 0.5),
                 dict(norm="robustnorm", norm_p=0.2, seed=s, clean_full=cr, pgd=cr - 0.5 + 0.04 + noise)]
    (a, b), t = robustnorm.matched_trend(pd.DataFrame(rows))
    assert a == pytest.approx(-0.5) and b == pytest.approx(1.0)
    r = t.iloc[0]
    assert r["residual"] == pytest.approx(0.04 + 0.001 / 3) and r["low"] > 0 and r["inside"] and r["n_seeds"] == 3
    assert robustnorm.matched_trend(pd.DataFrame(rows[:1]))[0] is None  # one reference point: no line


def _ebn_acc(values: dict, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Main-branch rows: {recipe: (clean, pgd at 2/255)} with a small seed effect shared by every recipe."""
    rows = []
    for s in seeds:
        for recipe, (clean, pgd) in values.items():
            for attack, eps, v in (("clean", 0.0, clean), ("pgd", 2 / 255, pgd)):
                rows.append(dict(dataset="fashion_mnist", arch="resnet18", recipe=recipe, share="none", seed=s,
                                 branch="main", attack=attack, eps=eps, accuracy=v + 0.002 * s))
    return pd.DataFrame(rows)


def _ebn_models(recipes, standard_clean: float = 0.93, seeds=(0, 1, 2)) -> pd.DataFrame:
    """A models frame: every recipe's models; standard training at ``standard_clean`` on the full test set."""
    return pd.DataFrame([dict(dataset="fashion_mnist", arch="resnet18", norm="bn" if r in ("standard", "pgd_at")
                              else "multibn", recipe=r, share="none", seed=s, width=16,
                              clean_full=standard_clean if r == "standard" else 0.93)
                         for r in recipes for s in seeds])


def _chapter_text(notebook: str, ns: dict, first: str, stop: str | None = None) -> str:
    """The markdown a chapter's prose cells display, executed on synthetic frames: the code cells of
    ``notebooks/<notebook>.md`` from the first whose source holds ``first`` up to (not with) the first
    holding ``stop`` (only that one cell without ``stop``), in the namespace ``ns`` (the frames, ``P``...)."""
    import jupytext
    from IPython.display import Markdown
    from rnorm import plots, stats
    from rnorm.experiments import ebn, protocol, robustnorm
    cells = [c.source for c in jupytext.read(Path(rnorm.__file__).resolve().parents[1] / "notebooks"
                                             / f"{notebook}.md").cells if c.cell_type == "code"]
    start = next(i for i, c in enumerate(cells) if first in c)
    end = next(i for i, c in enumerate(cells) if i > start and stop in c) if stop else start + 1
    shown = []
    ns = {"ebn": ebn, "robustnorm": robustnorm, "plots": plots, "stats": stats, "protocol": protocol,
          "Markdown": Markdown,
          "display": lambda m: shown.append(m.data), **ns}
    for source in cells[start:end]:
        exec(source, ns)
    return "\n\n".join(shown)


def _ebn_text(acc: pd.DataFrame, models, clean_full=None, history=None, loss_weighting: str = "mean") -> str:
    """Chapter 4's "What this shows" prose (every cell before the verdicts'), on synthetic frames."""
    frames = {"models": models, "clean_full": acc.iloc[:0] if clean_full is None else clean_full,
              "history": pd.DataFrame() if history is None else history}
    return _chapter_text("04_easy_batchnorm", {"acc": acc, "res": type("R", (), {"frames": frames}),
                                               "P": EBNParams(loss_weighting=loss_weighting)},
                         "ebn.versus_frame(", 'verdicts.findings("C4"')


def test_ebn_ranking_says_plainly_when_ebn_is_last_and_by_how_much():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.93, 0.70), "advprop": (0.935, 0.76), "ebn": (0.94, 0.59)})
    models = _ebn_models(["standard", "advprop", "ebn"])
    rank = ebn.ranking_frame(acc, models=models)
    # PGD: AdvProp 76.2 > standard 70.2 > EBN 59.2 (means over seeds 0-2 of v + 0.002 s), each step a constant
    # paired difference (a CI that excludes 0); EBN alone lowest of 3
    pgd = rank[rank["attack"] == "pgd"]
    assert list(pgd["recipe"]) == ["advprop", "standard", "ebn"] and list(pgd["position"]) == [0, 1, 2]
    assert list(pgd["sign"]) == ["", ">", ">"] and pgd["mean"].tolist() == pytest.approx([0.762, 0.702, 0.592])
    assert list(pgd["alone_lowest"]) == [False, False, True] and set(pgd["attack_name"]) == {"PGD 2/255"}
    # clean: EBN 94.2 > AdvProp 93.7 > standard 93.2; EBN is not lowest there
    clean = rank[rank["attack"] == "clean"]
    assert list(clean["recipe"]) == ["ebn", "advprop", "standard"] and list(clean["sign"]) == ["", ">", ">"]
    assert clean["mean"].tolist() == pytest.approx([0.942, 0.937, 0.932])
    assert not clean.loc[clean["recipe"] == "ebn", "alone_lowest"].item() and rank["judged"].all()
    vs = ebn.versus_frame(acc, models=models).set_index(["reference", "attack"])
    assert vs.loc[("advprop", "pgd"), ["estimate", "low", "high"]].tolist() == pytest.approx([-0.17] * 3)
    assert vs.loc[("advprop", "pgd"), "category"] == "lower" and vs.loc[("advprop", "clean"), "category"] == "higher"
    assert vs.loc[("advprop", "clean"), "estimate"] == pytest.approx(0.005) and vs["n_seeds"].eq(3).all()
    # the chapter's words on these frames
    text = _ebn_text(acc, models)
    pgd_line = [line for line in text.splitlines() if line.startswith("- PGD accuracy at 2/255")][0]
    assert "AdvProp 76.2 % > standard 70.2 % > EBN 59.2 %" in pgd_line and "EBN has the lowest mean of the 3 recipes" in pgd_line
    assert "EBN minus AdvProp -17.0 points [95 % CI -17.0, -17.0]" in pgd_line and "(lower)" in pgd_line
    clean_line = [line for line in text.splitlines() if line.startswith("- clean accuracy")][0]
    assert "lowest mean" not in clean_line and "(higher)" in clean_line
    assert "EBN 94.2 % > AdvProp 93.7 % > standard 93.2 %" in clean_line
    # neighbours whose paired CI holds 0 are "≈", not ">", whatever their means
    close = acc.copy()
    close.loc[(close["recipe"] == "standard") & (close["attack"] == "clean"), "accuracy"] = [0.945, 0.93, 0.94]
    clean = ebn.ranking_frame(close, models=models).query("attack == 'clean'")
    # standard (93.83) vs EBN (94.2): per seed -0.5, -1.2, -0.4 points, CI holds 0; AdvProp 93.7 vs standard alike
    assert list(clean["recipe"]) == ["ebn", "standard", "advprop"] and list(clean["sign"]) == ["", "≈", "≈"]
    assert clean["mean"].tolist() == pytest.approx([0.942, 0.93833333, 0.937])
    line = [x for x in _ebn_text(close, models).splitlines() if x.startswith("- clean accuracy")][0]
    assert "EBN 94.2 % ≈ standard 93.8 % ≈ AdvProp 93.7 %" in line


def test_ebn_headline_says_where_ebn_ranks_and_gives_words_only_where_the_ci_excludes_zero():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.93, 0.70), "advprop": (0.935, 0.76), "ebn": (0.931, 0.59)})
    # EBN's clean accuracy by seed against standard: -0.3 / +0.2 / +0.7 points, against AdvProp -0.8 / -0.3 / +0.2:
    # both CIs hold 0 (mean +0.2, sd 0.5, half-width 4.303 * 0.5 / sqrt(3) = 1.24 points)
    clean_ebn = (acc["recipe"] == "ebn") & (acc["attack"] == "clean")
    acc.loc[clean_ebn, "accuracy"] = [0.927, 0.934, 0.941]
    models = _ebn_models(["standard", "advprop", "ebn"])
    (h,) = ebn.headline_frame(acc, models=models).itertuples()
    assert (h.refs, h.attack, h.attack_name, h.place, h.n_recipes) == ("standard,advprop", "pgd", "PGD 2/255", "least", 3)
    assert h.eps == pytest.approx(2 / 255) and h.ebn_mean == pytest.approx(0.592)
    vs = ebn.versus_frame(acc, models=models).set_index(["reference", "attack"])
    assert vs.loc[("standard", "pgd"), "estimate"] == pytest.approx(-0.11) and vs.loc[("standard", "pgd"), "category"] == "lower"
    assert vs.loc[("standard", "clean"), ["estimate", "low", "high"]].tolist() == pytest.approx([0.002, -0.010422, 0.014422], abs=1e-6)
    assert vs.loc[("advprop", "clean"), ["estimate", "low", "high"]].tolist() == pytest.approx([-0.003, -0.015422, 0.009422], abs=1e-6)
    assert set(vs.loc[(slice(None), "clean"), "category"]) == {"none"}
    text = _ebn_text(acc, models).split("\n\n")[0]
    assert text.startswith("**In short (FashionMNIST / ResNet-18, main branch, used at inference):** under PGD 2/255 alone "
                           "(PGD only: the ledger's verdicts take, per image, the worse of PGD-20 and APGD-CE where "
                           "run, which can only be lower), EBN is the least robust of the 3 recipes (59.2 %): -11.0 points [95 % CI -11.0, -11.0]")
    assert "against standard training (lower), -17.0 points" in text and "against AdvProp (lower)." in text
    clean = text.split("On clean accuracy (test subset): ")[1]
    assert "+0.2 points [95 % CI -1.0, +1.4] (paired over 3 seeds) against standard training (no difference shown)" \
        in clean and "-0.3 points [95 % CI -1.5, +0.9] (paired over 3 seeds) against AdvProp (no difference shown)" in clean
    # not judged (standard below its floor) or no EBN: no lead at all
    assert ebn.headline_frame(acc, models=_ebn_models(["standard", "advprop", "ebn"], standard_clean=0.5)).empty
    assert ebn.headline_frame(acc[acc["recipe"] != "ebn"], models=models).empty
    # EBN level with standard training under PGD (a CI that holds 0): no place among the recipes is claimed
    level = _ebn_acc({"standard": (0.93, 0.70), "advprop": (0.935, 0.76), "ebn": (0.931, 0.70)})
    level.loc[(level["recipe"] == "ebn") & (level["attack"] == "pgd"), "accuracy"] = [0.69, 0.71, 0.70]
    (h,) = ebn.headline_frame(level, models=models).itertuples()
    assert h.place == "" and h.ebn_mean == pytest.approx(0.70)
    vs = ebn.versus_frame(level, models=models).set_index(["reference", "attack"])
    assert vs.loc[("standard", "pgd"), "category"] == "none" and vs.loc[("advprop", "pgd"), "category"] == "lower"
    text = _ebn_text(level, models).split("\n\n")[0]
    assert "APGD-CE where run, which can only be lower), EBN scores 70.0 %: " in text and "least" not in text and "most" not in text
    assert "against standard training (no difference shown)" in text.split("On clean")[0]
    # every PGD accuracy at the floor: no robust lead either
    floor = acc.assign(accuracy=np.where(acc["attack"] == "pgd", 0.0, acc["accuracy"]))
    assert ebn.headline_frame(floor, models=models).empty


def test_ebn_tables_take_clean_accuracy_from_the_full_test_set():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.50, 0.30), "ebn": (0.50, 0.20)})
    full = acc[acc["attack"] == "clean"].assign(accuracy=0.9, n=10000)
    shown = ebn.with_full_clean(acc, full)
    assert (shown.loc[shown["attack"] == "clean", "accuracy"] == 0.9).all() and len(shown) == len(acc)
    assert (shown.loc[shown["attack"] == "pgd", "accuracy"] == acc.loc[acc["attack"] == "pgd", "accuracy"].values).all()
    assert "90.0" in ebn.main_table(shown).to_string() and ebn.with_full_clean(acc, None) is acc


def test_ebn_ablation_findings_pair_shared_against_separate_branches():
    from rnorm.experiments import ebn
    base = _ebn_acc({"ebn": (0.94, 0.60)})
    affine = _ebn_acc({"ebn": (0.94, 0.50)}).assign(share="affine")
    models = _ebn_models(["standard", "ebn"])

    def rows(frame):
        return frame.set_index(["share", "reference", "attack"])

    one = rows(ebn.ablation_frame(pd.concat([base, affine], ignore_index=True), models=models))
    assert one.loc[("affine", "none", "clean"), "estimate"] == pytest.approx(0.0)
    assert one.loc[("affine", "none", "clean"), "category"] == "none"
    assert one.loc[("affine", "none", "pgd"), ["estimate", "low", "high"]].tolist() == pytest.approx([-0.10] * 3)
    assert one.loc[("affine", "none", "pgd"), "category"] == "lower" and one.loc[("affine", "none", "pgd"), "attack_name"] == "PGD 2/255"
    assert "stats" not in one.index.get_level_values("reference")  # only one of the two ablations trained
    assert ebn.ablation_frame(base, models=models).empty
    # both trained: shared γ/β against shared statistics, paired, which is the comparison Zhang et al. argue about
    stats = _ebn_acc({"ebn": (0.94, 0.58)}).assign(share="stats")
    both = rows(ebn.ablation_frame(pd.concat([base, affine, stats], ignore_index=True), models=models))
    assert both.loc[("affine", "stats", "pgd"), ["estimate", "low", "high"]].tolist() == pytest.approx([-0.08] * 3)
    assert both.loc[("affine", "stats", "pgd"), "category"] == "lower" and both.loc[("affine", "stats", "clean"), "category"] == "none"
    assert both.loc[("stats", "none", "pgd"), "estimate"] == pytest.approx(-0.02) and both["n_seeds"].eq(3).all()
    text = _ebn_text(pd.concat([base, affine, stats], ignore_index=True), models)
    line = [x for x in text.splitlines() if "shared γ/β minus shared statistics" in x][0]
    assert "PGD 2/255 -8.0 points [95 % CI -8.0, -8.0]" in line and "(lower)" in line and "Zhang et al." in line
    assert "It is below 0 in PGD 2/255, the direction they argue for; no difference is shown in clean accuracy" in line
    assert "a check of the direction, not a test of their account" in line
    assert "shared statistics: clean 0.0 points" in text and "PGD 2/255 -2.0 points" in text
    # not judged (standard training below its floor): the numbers, without a direction
    low = _ebn_models(["standard", "ebn"], standard_clean=0.5)
    unjudged = rows(ebn.ablation_frame(pd.concat([base, affine, stats], ignore_index=True), models=low))
    assert unjudged["category"].isna().all() and not unjudged["judged"].any()
    assert unjudged.loc[("affine", "stats", "pgd"), "estimate"] == pytest.approx(-0.08)
    text = _ebn_text(pd.concat([base, affine, stats], ignore_index=True), low)
    line = [x for x in text.splitlines() if "shared γ/β minus shared statistics" in x][0]
    assert "-8.0 points" in line and "(lower)" not in line and "they argue for" not in line
    # the opposite direction is kept as plainly
    stats_lower = _ebn_acc({"ebn": (0.94, 0.45)}).assign(share="stats")
    other = rows(ebn.ablation_frame(pd.concat([base, affine, stats_lower], ignore_index=True), models=models))
    assert other.loc[("affine", "stats", "pgd"), "estimate"] == pytest.approx(0.05)
    assert other.loc[("affine", "stats", "pgd"), "category"] == "higher"
    text = _ebn_text(pd.concat([base, affine, stats_lower], ignore_index=True), models)
    assert "It is above 0, against their view, in PGD 2/255; no difference is shown in clean accuracy" in text and "they argue for" not in text


def test_ebn_direction_category_covers_every_case_by_hand():
    from rnorm import stats
    from rnorm.experiments import ebn
    a, b = [0.50, 0.52, 0.54], [0.60, 0.61, 0.65]  # differences 0.10, 0.09, 0.11: CI well above 0
    e = stats.paired_seeds(a, b)
    assert ebn.category(e, a, b, "pgd", True) == "higher"
    assert ebn.category(stats.paired_seeds(b, a), b, a, "pgd", True) == "lower"
    noisy = [0.50, 0.53, 0.53]  # differences 0.0, -0.01, +0.01 to [0.50, 0.52, 0.54]: a narrow CI that spans 0
    assert ebn.category(stats.paired_seeds(noisy, [0.50, 0.52, 0.54]), noisy, [0.50, 0.52, 0.54], "clean", True) == "none"
    assert ebn.category(e, a, b, "pgd", False) is None  # not judged: no direction at all
    two = stats.paired_seeds(a[:2], b[:2])  # fewer than 3 seeds: no CI
    assert ebn.category(two, a[:2], b[:2], "pgd", True) == "no CI" and ebn.category(None, a, b, "pgd", True) == "no CI"
    zeros, tiny = [0.0, 0.0, 0.0], [0.004, 0.006, 0.005]  # every robust accuracy at the floor
    assert ebn.category(stats.paired_seeds(zeros, tiny), zeros, tiny, "pgd", True) == "floor"
    assert ebn.category(stats.paired_seeds(zeros, tiny), zeros, tiny, "clean", True) == "higher"  # no floor on clean
    # the words follow the category, and say nothing where there is no direction to give
    words = ("up", "down", "flat")
    assert ebn.direction_words(ebn.category(e, a, b, "pgd", True), words) == " (up)"
    assert ebn.direction_words(ebn.category(stats.paired_seeds(b, a), b, a, "pgd", True), words) == " (down)"
    assert ebn.direction_words("none", words) == " (flat)"
    assert ebn.direction_words(ebn.category(e, a, b, "pgd", False), words) == ""
    assert ebn.direction_words("no CI", words) == "" and ebn.direction_words(float("nan"), words) == ""  # NaN: a frame's None
    assert "floor" in ebn.direction_words(ebn.category(stats.paired_seeds(zeros, tiny), zeros, tiny, "pgd", True), words)
    # a CI that holds 0 and is wider than the protocol's 20 points cannot tell a difference from none
    spread = [0.30, 0.80, 0.50]  # differences from a: -0.20, +0.28, -0.04: mean 0.013, CI about ±0.61
    wide = stats.paired_seeds(a, spread)
    assert wide.low < 0 < wide.high and wide.high - wide.low > 0.20
    assert ebn.category(wide, a, spread, "pgd", True) == "wide"
    assert ebn.direction_words("wide", words) == " (CI wider than 20 points: too wide to tell)"


def test_ebn_slice_loss_findings_by_hand():
    from rnorm.experiments import ebn
    losses = {0: ((0.6, 0.3), (0.2, 0.02), (0.1, 0.02)),  # (clean, easy) per epoch; easy/clean 0.5, 0.1, 0.2
              1: ((0.8, 0.32), (0.4, 0.04), (0.3, 0.03))}  # 0.4, 0.1, 0.1
    rows = []
    for seed, per_epoch in losses.items():
        for epoch, (main, aux) in enumerate(per_epoch, start=1):
            common = dict(dataset="fashion_mnist", arch="resnet18", seed=seed, epoch=epoch, loss_main=main)
            rows.append(dict(common, recipe="ebn", share="none", loss_easy=aux))
            rows.append(dict(common, recipe="advprop", share="none", loss_adv=2 * main))
            rows.append(dict(common, recipe="ebn", share="affine", loss_main=9.0, loss_easy=9.0))  # left out
    h = pd.DataFrame(rows)
    s = ebn.slice_loss_frame(h).set_index(["recipe", "slice"])
    # first epoch: clean (0.6 + 0.8) / 2, easy (0.3 + 0.32) / 2; last: (0.1 + 0.3) / 2, (0.02 + 0.03) / 2;
    # median ratio per seed 0.2 and 0.1, mean 15 %
    assert sorted(s.index) == [("advprop", "adv"), ("advprop", "main"), ("ebn", "easy"), ("ebn", "main")]
    assert s.loc[("ebn", "main"), ["first", "last"]].tolist() == pytest.approx([0.7, 0.2])
    assert np.isnan(s.loc[("ebn", "main"), "ratio"])
    assert s.loc[("ebn", "easy"), ["first", "last", "ratio"]].tolist() == pytest.approx([0.31, 0.025, 0.15])
    assert s.loc[("advprop", "adv"), ["first", "last", "ratio"]].tolist() == pytest.approx([1.4, 0.4, 2.0])
    assert s["n_seeds"].eq(2).all() and s["epochs_min"].eq(3).all() and s["epochs_max"].eq(3).all()
    assert not (s[["first", "last"]] == 9.0).any().any()  # the sharing ablation is left out
    r = ebn.slice_readings(ebn.slice_loss_frame(h))
    assert r[["dataset", "easy_below", "apart"]].values.tolist() == [["fashion_mnist", True, True]]
    text = _ebn_text(_ebn_acc({"standard": (0.93, 0.70)}), _ebn_models(["standard"]), history=h)
    assert ("EBN (2 seeds, 3 epochs): clean slice 0.7 → 0.2; easy slice 0.31 → 0.025 (median over epochs 15 % "
            "of the clean slice's)") in text
    assert "adversarial slice 1.4 → 0.4 (median over epochs 200 % of the clean slice's)" in text
    assert "weight (½ for AdvProp and EBN" in text and "Here the easy slice's loss is below the clean slice's" in text
    assert "confounds EBN" in text and "AdvProp against standard training (C5)" in text
    assert "every term has weight 1" in _ebn_text(_ebn_acc({"standard": (0.93, 0.70)}), _ebn_models(["standard"]),
                                                  history=h, loss_weighting="sum")
    assert ebn.slice_loss_frame(h[h["recipe"] == "standard"]).empty
    assert ebn.slice_loss_frame(h.drop(columns="epoch")).empty and ebn.slice_loss_frame(None).empty
    one = ebn.slice_loss_frame(h[h["epoch"] == 1]).set_index(["recipe", "slice"])
    assert one.loc[("ebn", "easy"), "ratio"] == pytest.approx(0.45) and one["epochs_max"].eq(1).all()
    assert one.loc[("ebn", "easy"), "first"] == one.loc[("ebn", "easy"), "last"] == pytest.approx(0.31)
    uneven = ebn.slice_loss_frame(h[(h["seed"] == 0) | (h["epoch"] < 3)])  # seed 1 stopped after 2 epochs
    assert uneven["epochs_min"].eq(2).all() and uneven["epochs_max"].eq(3).all()
    # alike slices (easy at 80 %, adversarial at 120 % of the clean loss): no confound is argued from them
    alike = h.assign(loss_easy=h["loss_main"] * 0.8, loss_adv=h["loss_main"] * 1.2)
    a = ebn.slice_loss_frame(alike).set_index(["recipe", "slice"])
    assert a.loc[("ebn", "easy"), "ratio"] == pytest.approx(0.8) and a.loc[("advprop", "adv"), "ratio"] == pytest.approx(1.2)
    assert ebn.slice_readings(ebn.slice_loss_frame(alike))[["easy_below", "apart"]].values.tolist() == [[True, False]]
    # an easy slice harder than the clean one contradicts our reading
    harder = h.assign(loss_easy=h["loss_main"] * 1.1)
    assert ebn.slice_readings(ebn.slice_loss_frame(harder))["easy_below"].tolist() == [False]
    # decided per setting: a second setting whose slices are alike is apart from the first
    other = alike.assign(dataset="cifar10_jpeg")
    both = ebn.slice_readings(ebn.slice_loss_frame(pd.concat([h, other], ignore_index=True)))
    assert both[["dataset", "easy_below", "apart"]].values.tolist() == [["fashion_mnist", True, True],
                                                                       ["cifar10_jpeg", True, False]]
    text = _ebn_text(_ebn_acc({"standard": (0.93, 0.70)}), _ebn_models(["standard"]),
                     history=pd.concat([h, other], ignore_index=True))
    assert "In every setting the easy slice's loss is below the clean slice's" in text
    assert "In FashionMNIST / ResNet-18 the slices' losses differ enough" in text


def test_ebn_ablation_table_compares_the_three_sharings_on_the_attacks_all_three_had():
    from rnorm.experiments import ebn
    base = _ebn_acc({"ebn": (0.94, 0.60)})
    apgd = base[base["attack"] == "pgd"].assign(attack="apgd", accuracy=0.55)  # separate branches only
    shared = [_ebn_acc({"ebn": (0.93, v)}).assign(share=s) for s, v in (("affine", 0.50), ("stats", 0.58))]
    table = ebn.ablation_table(pd.concat([base, apgd, *shared], ignore_index=True))
    assert list(table["share"]) == ["none", "affine", "stats"]
    assert not [c for c in table.columns if "APGD" in str(c)] and len(table.columns) == 5
    assert ebn.ablation_table(pd.concat([base, apgd], ignore_index=True)).empty  # no ablation trained
    # a second setting with separate-branch EBN only (the ablation trains in one setting) has no row, and
    # adds no column of its own
    cifar = _ebn_acc({"ebn": (0.86, 0.20)}).assign(dataset="cifar10_jpeg", eps=lambda f: f["eps"] * 2)
    both = ebn.ablation_table(pd.concat([base, apgd, *shared, cifar], ignore_index=True))
    assert list(both["dataset"]) == ["FashionMNIST"] * 3 and len(both.columns) == 5
    assert set(ebn.ablation_frame(pd.concat([base, *shared, cifar], ignore_index=True), models=None)["dataset"]) \
        == {"fashion_mnist"}


def test_ebn_bars_give_an_attack_one_colour_in_every_panel_and_the_legend_every_attack():
    """Two settings evaluated at different ε: without the padding, the second panel's first level
    takes the first colour whatever it is, and its own levels miss the legend."""
    import matplotlib
    matplotlib.use("Agg")
    from rnorm import plots
    from rnorm.experiments import ebn
    rows = pd.DataFrame([dict(setting=s, recipe=r, attack=a, seed=k, accuracy=0.5)
                         for s, attacks in (("FashionMNIST", ["clean", "PGD 2/255", "PGD 0.1"]),
                                            ("CIFAR-10", ["PGD 2/255", "clean", "APGD-CE 8/255"]))
                         for r in ("standard", "EBN") for a in attacks for k in (0, 1)])
    padded = ebn.with_every_hue_level(rows, x="recipe", hue="attack", col="setting")
    order = ["clean", "PGD 2/255", "PGD 0.1", "APGD-CE 8/255"]
    for _, panel in padded.groupby("setting", sort=False):
        assert list(dict.fromkeys(panel["attack"])) == order and list(dict.fromkeys(panel["recipe"])) == ["standard", "EBN"]
    real = padded.dropna(subset=["accuracy"])
    assert len(real) == len(rows) and padded["accuracy"].isna().sum() == 2 * len(order)  # rows unchanged
    fig = plots.accuracy_bars(padded, x="recipe", hue="attack", col="setting")
    # seaborn draws one bar container per level, in the panel's level order; a level a panel lacks draws none
    colour = [{order[i]: c.patches[0].get_facecolor() for i, c in enumerate(ax.containers) if c.patches}
              for ax in fig.axes[:2]]
    assert set(colour[0]) == {"clean", "PGD 2/255", "PGD 0.1"} and set(colour[1]) == {"clean", "PGD 2/255", "APGD-CE 8/255"}
    assert colour[0]["clean"] == colour[1]["clean"] and colour[0]["PGD 2/255"] == colour[1]["PGD 2/255"]
    assert len({colour[0]["PGD 0.1"], colour[1]["APGD-CE 8/255"], colour[0]["clean"], colour[0]["PGD 2/255"]}) == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == order


def test_ebn_findings_end_each_settings_list_before_the_next_settings_heading():
    """Markdown reads a line right after a list item as part of that item: without a blank line, the
    second setting's heading would render inside the first setting's last bullet. The frames keep the
    settings apart, in order, each judged on its own."""
    from rnorm.experiments import ebn
    fm = _ebn_acc({"standard": (0.93, 0.70), "advprop": (0.95, 0.60), "ebn": (0.94, 0.50)})
    acc = pd.concat([fm, fm.assign(dataset="cifar10_jpeg")], ignore_index=True)
    models = _ebn_models(["standard", "advprop", "ebn"])
    models = pd.concat([models, models.assign(dataset="cifar10_jpeg", clean_full=0.86)], ignore_index=True)
    for frame in (ebn.ranking_frame(acc, models=models), ebn.branch_frame(acc, models=models)):
        assert list(dict.fromkeys(frame["dataset"])) == ["fashion_mnist", "cifar10_jpeg"]
        assert frame.groupby("dataset")["judged"].nunique().eq(1).all()  # one judgement per setting
    lines = _ebn_text(acc, models).splitlines()
    for name in ("main branch** (the branch used at inference", "difference from standard training"):
        heads = [i for i, x in enumerate(lines) if x.startswith("**") and name in x]
        assert len(heads) == 2 and lines[heads[1] - 1] == "" and lines[heads[1] - 2].startswith("- ")
        assert "CIFAR-10 (lossy JPEG copy)" in lines[heads[1]]


def test_ebn_ranking_ties_are_equal_and_never_make_ebn_last():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.93, 0.0), "advprop": (0.935, 0.0), "ebn": (0.94, 0.0)}, seeds=(0,))
    acc.loc[acc["attack"] == "pgd", "accuracy"] = 0.0
    pgd = ebn.ranking_frame(acc, models=_ebn_models(["standard", "advprop", "ebn"], seeds=(0,))).query("attack == 'pgd'")
    # one seed: no CI, so no sign but ","; a tie is no one's lowest
    assert list(pgd["recipe"]) == ["standard", "advprop", "ebn"] and list(pgd["sign"]) == ["", ",", ","]
    assert (pgd["mean"] == 0.0).all() and not pgd["alone_lowest"].any()
    three = _ebn_acc({"standard": (0.93, 0.0), "advprop": (0.935, 0.0), "ebn": (0.94, 0.0)})
    three.loc[three["attack"] == "pgd", "accuracy"] = 0.0
    pgd = ebn.ranking_frame(three, models=_ebn_models(["standard", "advprop", "ebn"])).query("attack == 'pgd'")
    assert list(pgd["sign"]) == ["", "≈", "≈"] and not pgd["alone_lowest"].any()  # all at the floor
    line = [x for x in _ebn_text(three, _ebn_models(["standard", "advprop", "ebn"])).splitlines()
            if x.startswith("- PGD")][0]
    assert "standard 0.0 % ≈ AdvProp 0.0 % ≈ EBN 0.0 %" in line and "lowest" not in line


def test_ebn_branch_findings_say_helps_and_hurts_only_where_the_ci_excludes_zero():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.93, 0.70), "advprop": (0.95, 0.60)})
    acc["params"] = np.where(acc["attack"] == "pgd", json.dumps({"steps": 20, "random_start": True}), "")
    models = _ebn_models(["standard", "advprop"])
    b = ebn.branch_frame(acc, models=models)
    assert b[["recipe", "branch", "attack", "attack_name", "category"]].values.tolist() == [
        ["advprop", "main", "clean", "clean", "higher"], ["advprop", "main", "pgd", "PGD-20 2/255", "lower"]]
    assert b["estimate"].tolist() == pytest.approx([0.02, -0.10]) and b["judged"].all() and not b["at_floor"].any()
    text = _ebn_text(acc, models)
    line = [x for x in text.splitlines() if x.startswith("- AdvProp, main branch")][0]
    assert "clean +2.0 points" in line and "(helps)" in line
    assert "PGD-20 2/255 -10.0 points" in line and "(hurts)" in line and "Not judged" not in text


def test_ebn_findings_give_no_direction_when_standard_training_is_below_its_floor():
    """The verdicts call such a setting inconclusive; the prose above them must not say "helps"."""
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.93, 0.70), "advprop": (0.95, 0.60), "ebn": (0.96, 0.50)})
    low = _ebn_models(["standard", "advprop", "ebn"], standard_clean=0.90)
    for frame in (ebn.branch_frame(acc, models=low), ebn.versus_frame(acc, models=low)):
        assert not frame["judged"].any() and frame["category"].isna().all()
        assert frame["why"].str.contains(r"below the convergence floor \(92.0 %").all()
        assert frame["why"].str.contains("BatchNorm seed 0 at 90.0 %").all()
        assert frame["estimate"].notna().all()  # the numbers are still there
    rank = ebn.ranking_frame(acc, models=low)
    assert not rank["judged"].any() and set(rank.loc[rank["position"] > 0, "sign"]) == {","}
    text = _ebn_text(acc, low)
    assert "Not judged: below the convergence floor (92.0 %" in text and "BatchNorm seed 0 at 90.0 %" in text
    assert not any(w in text for w in ("(helps)", "(hurts)", "(higher)", "(lower)", "no difference shown"))
    assert "+2.0 points" in text and "+1.0 points" in text  # the numbers are still shown
    assert ebn.ranking_frame(acc, models=None)["why"].str.contains("no full-test-set clean accuracy").all()
    assert "Not judged: no full-test-set clean accuracy" in _ebn_text(acc, None)


def test_ebn_findings_say_when_every_robust_accuracy_is_at_the_attack_floor():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.93, 0.004), "advprop": (0.95, 0.0)})
    acc.loc[acc["attack"] == "pgd", "accuracy"] = np.where(acc.loc[acc["attack"] == "pgd", "recipe"] == "standard",
                                                           0.008, 0.0)
    models = _ebn_models(["standard", "advprop"])
    pgd = ebn.branch_frame(acc, models=models).query("attack == 'pgd'").iloc[0]
    assert pgd["estimate"] == pytest.approx(-0.008) and pgd["at_floor"] and pgd["category"] == "floor"
    line = [x for x in _ebn_text(acc, models).splitlines() if x.startswith("- AdvProp")][0]
    assert "PGD 2/255 -0.8 points" in line and "(both at the attack's floor" in line and "(hurts)" not in line


def test_ebn_cost_table_gives_each_recipes_fastest_and_slowest_run():
    from rnorm.experiments import ebn
    h = pd.DataFrame([dict(dataset="fashion_mnist", arch="resnet18", recipe=r, share="none", seed=s, epoch=e,
                           epoch_seconds=secs + e, images_per_s=60000 / (secs + e))
                      for r, runs in {"standard": {0: 40, 1: 170}, "advprop": {0: 245}}.items()
                      for s, secs in runs.items() for e in (0, 2)])
    t = ebn.cost_table(h).set_index("recipe")
    assert t.loc["standard", "runs"] == 2 and t.loc["advprop", "runs"] == 1
    assert t.loc["standard", "epoch_seconds_min"] == 41 and t.loc["standard", "epoch_seconds_max"] == 171
    assert t.loc["advprop", "epoch_seconds_min"] == t.loc["advprop", "epoch_seconds_max"] == 246


def test_with_full_clean_keeps_subset_clean_rows_of_models_without_a_full_row_and_puts_clean_first():
    from rnorm.experiments import ebn
    acc = _ebn_acc({"standard": (0.50, 0.30), "ebn": (0.50, 0.20)})
    full = acc[(acc["attack"] == "clean") & (acc["recipe"] == "standard")].assign(accuracy=0.9)
    shown = ebn.with_full_clean(acc, full)
    assert shown.iloc[0]["attack"] == "clean" and len(shown) == len(acc)
    clean = shown[shown["attack"] == "clean"].groupby("recipe")["accuracy"].mean()
    assert clean["standard"] == pytest.approx(0.9) and clean["ebn"] == pytest.approx(0.502)


def test_train_match_trains_only_the_named_runs_and_refuses_a_text_that_names_none(tmp_path, monkeypatch,
                                                                                    data_root, capsys):
    from rnorm.experiments import ebn
    from rnorm.runs import find_run
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path))
    prof = book.load_profile("smoke")
    assert cli.main(["train", "--profile", "smoke", "--only", "04_easy_batchnorm", "--match", "nothing-like-this",
                     "--jobs", "1"]) == 2
    assert "--match 'nothing-like-this' is in none of the" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work
    assert cli.main(["train", "--profile", "smoke", "--only", "04_easy_batchnorm", "--match", "bn-standard-",
                     "--jobs", "1"]) == 0
    runs = ebn.runs(EBNParams.from_dict(prof["notebooks"]["04_easy_batchnorm"]))
    assert all((find_run(c) is not None) == (c.recipe == "standard") for c in runs)


def test_train_and_publish_take_one_notebooks_parameters_and_refuse_them_without_one(tmp_path, monkeypatch,
                                                                                     data_root, capsys):
    from rnorm.experiments import ebn
    from rnorm.runs import find_run
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RNORM_ARCHIVE", "")
    for cmd in ("train", "publish"):
        assert cli.main([cmd, "--profile", "smoke", "-p", "seeds", "[5]"]) == 2
        assert "--only must name exactly one (got no --only)" in capsys.readouterr().err
    assert cli.main(["train", "--profile", "smoke", "--only", "02_stats_swap", "03_robustnorm", "-p", "seeds",
                     "[5]"]) == 2
    assert "(got 02_stats_swap, 03_robustnorm)" in capsys.readouterr().err
    assert cli.main(["train", "--profile", "smoke", "--only", "04_easy_batchnorm", "-p", "seeds", "[5]", "-p",
                     "seeds", "[6]"]) == 2
    assert "-p seeds is given twice" in capsys.readouterr().err
    assert cli.main(["train", "--profile", "smoke", "--only", "04_easy_batchnorm", "-p", "sedes", "[5]"]) == 2
    assert "sedes" in capsys.readouterr().err and not (tmp_path / "runs").exists()  # refused before any work
    extra = ["--only", "04_easy_batchnorm", "-p", "seeds", "[5]", "-p", "recipes", "[standard]", "-p", "ablation",
             "false"]
    assert cli.main(["train", "--profile", "smoke", "--jobs", "1", *extra]) == 0
    prof = book.load_profile("smoke")["notebooks"]["04_easy_batchnorm"]
    (cfg,) = ebn.runs(EBNParams.from_dict({**prof, "seeds": [5], "recipes": ["standard"], "ablation": False}))
    assert cfg.seed == 5 and find_run(cfg) is not None
    assert cli.main(["publish", "--profile", "smoke", "--archive", str(tmp_path / "models"), *extra]) == 0
    assert (tmp_path / "models" / cfg.folder_name() / "model.pt").is_file()
    assert "done: 1 runs published, 0 neither finished nor published before" in capsys.readouterr().out


def test_robustnorm_observations_state_every_power_the_apgd_gap_and_epochs_to_target():
    """Synthetic CIFAR-10 JPEG ResNet-20 results with known answers: RobustNorm p=0.2 is 5 points more robust
    and 2 points less accurate than BatchNorm on every seed; APGD finds 3 points more than PGD against BatchNorm;
    BatchNorm reaches the speed target (82.1 %) at epoch 3, RobustNorm at epoch 4."""
    from rnorm import plots
    from rnorm.experiments import robustnorm
    p = RobustNormParams(dataset="cifar10_jpeg", powers=[0.2, 1.0], seeds=[0, 1, 2], epochs=5)
    acc, models, hist = [], [], []
    for s in (0, 1, 2):
        j = 0.01 * s
        for norm, q, pgd, clean, late in (("bn", float("nan"), 0.40, 0.87, 0), ("robustnorm", 0.2, 0.45, 0.85, 1),
                                          ("robustnorm", 1.0, 0.40, 0.80, 1), ("none", float("nan"), 0.38, 0.84, 0)):
            acc.append(dict(attack="pgd", eps=1 / 255, stats="population", accuracy=pgd + j, norm=norm, norm_p=q, seed=s))
            if norm == "bn":
                acc.append(dict(attack="apgd", eps=1 / 255, stats="population", accuracy=pgd + j - 0.03, norm=norm,
                                norm_p=q, seed=s))
            models.append(dict(norm=norm, norm_p=q, seed=s, clean_full=clean + j))
            hist += [dict(epoch=e, test_acc=[0.5, 0.7, 0.83, 0.85, 0.86][max(0, e - 1 - late)], norm=norm, norm_p=q,
                          seed=s) for e in range(1, 6)]
    frames = {"accuracy": pd.DataFrame(acc), "models": pd.DataFrame(models), "history": pd.DataFrame(hist)}
    eff = robustnorm.power_effects(p.powers, frames).set_index(["norm_p", "quantity"])
    # BatchNorm has no APGD-CE partner among the RobustNorm rows: clean and PGD only
    assert list(eff.index) == [(0.2, "clean"), (0.2, "pgd"), (1.0, "clean"), (1.0, "pgd")]
    assert eff.loc[(0.2, "clean"), ["estimate", "low", "high"]].tolist() == pytest.approx([-0.02] * 3)
    assert eff.loc[(0.2, "pgd"), "estimate"] == pytest.approx(0.05) and eff.loc[(1.0, "clean"), "estimate"] == pytest.approx(-0.07)
    assert eff.loc[(1.0, "pgd"), "estimate"] == pytest.approx(0.0, abs=1e-12) and eff["n_seeds"].eq(3).all()
    assert eff.loc[0.2, "judged"].all() and not eff.loc[1.0, "judged"].any()  # the ledger judges p=0.2 only
    gaps = robustnorm.apgd_gaps(frames["accuracy"])
    assert gaps[["norm", "n_seeds", "reading"]].values.tolist() == [["bn", 3, "overstates"]]
    assert gaps["gap"].iloc[0] == pytest.approx(3.0)
    assert robustnorm.apgd_gaps(frames["accuracy"].query("attack == 'pgd'")).empty
    speed = robustnorm.epochs_to_target(p.dataset, p.arch, frames["history"])
    assert speed["target"].iloc[0] == pytest.approx(0.821, abs=5e-4)
    per_model = {plots.model_label(n, q): list(g["epochs"]) for (n, q), g in
                 speed.groupby(["norm", "norm_p"], dropna=False, sort=False)}
    assert per_model["BatchNorm"] == [3, 3, 3] and per_model["RobustNorm p=0.2"] == [4, 4, 4]
    assert robustnorm.epochs_to_target(p.dataset, p.arch, None).empty
    # the chapter's words on these frames
    points = robustnorm.matched_clean(frames["models"], frames["accuracy"])
    text = _chapter_text("03_robustnorm", {"P": p, "res": type("R", (), {"frames": frames}), "acc": frames["accuracy"],
                                           "points": points, "label": plots.label(p.dataset)},
                         "robustnorm.power_effects(")
    p02 = [x for x in text.splitlines() if "RobustNorm p=0.2 minus BatchNorm" in x][0]
    assert "(the power the ledger judges)" in p02 and "clean accuracy -2.0 points" in p02
    assert "PGD-20 at 1/255 +5.0 points" in p02
    assert "(reported, not judged by a rule)" in [x for x in text.splitlines() if "p=1 minus" in x][0]
    assert "APGD-CE finds 3.0 points more than PGD-20 against BatchNorm" in text and "overstate" in text
    speed = [x for x in text.splitlines() if "Epochs to 82.1 %" in x][0]
    assert "BatchNorm 3, 3, 3" in speed and "RobustNorm p=0.2 4, 4, 4" in speed
    assert "lossy JPEG copy" in text


def test_robustnorm_matched_sides_place_each_power_against_the_line():
    from rnorm.experiments import robustnorm
    trend = pd.DataFrame(dict(norm_p=[0.2, 0.5, 1.0, 2.0], residual=[0.04, -0.03, 0.01, 0.02],
                              low=[0.01, -0.05, -0.02, float("nan")], high=[0.07, -0.01, 0.04, float("nan")],
                              n_seeds=[3, 3, 3, 2], inside=[True] * 4))
    assert robustnorm.matched_sides(trend)["side"].tolist() == ["above", "below", "on", "no CI"]


def test_ebn_precompute_evaluates_each_trained_run_once_over_its_shards_and_trains_nothing(monkeypatch, tmp_path):
    """The pre-computation makes run()'s own per-run calls (evaluate_run, and models_frame's full-test-set
    accuracy) for every trained run, split disjointly over the shards; untrained runs are skipped, a bad
    shard is refused before any work, and each run reports how many evaluations it computed now (new
    eval-*.csv files in its folder), 0 where all were cached."""
    import types

    import rnorm.runs
    from rnorm.experiments import ebn
    p = EBNParams.from_dict(book.load_profile("smoke")["notebooks"]["04_easy_batchnorm"])
    planned = ebn.runs(p)
    untrained = planned[1]
    folders = {}
    for i, c in enumerate(planned):
        folders[c] = tmp_path / f"run{i}"
        folders[c].mkdir()
    cached = planned[2]  # evaluated before: its evaluate_run finds its file and writes nothing
    (folders[cached] / "eval-old.csv").write_text("x\n")
    monkeypatch.setattr(rnorm.runs, "find_run", lambda cfg: None if cfg == untrained
                        else types.SimpleNamespace(name=f"run:{cfg.name()}", path=folders[cfg]))
    monkeypatch.setattr(ebn, "setup", lambda params: "cpu")
    monkeypatch.setattr(ebn, "test_subset", lambda dataset, n, seed=0: (dataset, n))
    seen = []

    def fake_evaluate_run(params, cfg, r, device, tests, full):
        seen.append((cfg, r))
        for k in range(0 if cfg == cached else 2):  # two evaluations computed now, as files in the run's folder
            (r.path / f"eval-new{k}.csv").write_text("x\n")
    monkeypatch.setattr(ebn, "evaluate_run", fake_evaluate_run)
    framed = []
    monkeypatch.setattr(ebn, "models_frame",
                        lambda trained, device, per_image=False: framed.append((dict(trained), per_image)))
    with pytest.raises(ConfigError, match="shard=2"):
        ebn.precompute_evaluations(p, shard=2, shards=2)
    assert seen == [] and framed == []
    logged = []
    done = [ebn.precompute_evaluations(p, shard=k, shards=2, log=logged.append) for k in (0, 1)]
    assert [c for c, _ in seen] == [c for i, c in enumerate(planned) if i % 2 == 0 and c != untrained] + \
        [c for i, c in enumerate(planned) if i % 2 == 1 and c != untrained]
    assert framed == [({c: r}, True) for c, r in seen]  # the same runs, one at a time, as run() frames them (with bits)
    assert all(r.name == f"run:{c.name()}" for c, r in seen)
    merged = {**done[0], **done[1]}
    assert merged == {c.name(): 0 if c == cached else 2 for c in planned if c != untrained}
    assert f"already evaluated (every evaluation cached): {cached.name()}" in logged
    assert f"not trained yet, skipped: {untrained.name()}" in logged
    assert f"evaluated: {planned[0].name()} (2 computed now)" in logged


def test_cli_evaluate_runs_the_notebooks_precomputation_with_its_overrides(monkeypatch, capsys):
    """`rnorm evaluate` validates before any work, restores the published evaluations of the notebook's planned
    runs, then calls its precompute_evaluations with the -p overrides and the shard given."""
    from rnorm.experiments import ebn
    calls = []
    patch_book(monkeypatch, "restore_evaluations", lambda configs, **k: calls.append(("restore", list(configs))))
    monkeypatch.setattr(ebn, "precompute_evaluations",
                        lambda p, shard, shards: calls.append(("eval", p, shard, shards)) or {"a": 3, "b": 0})
    for bad, why in ((["02_stats_swap"], "cannot compute its evaluations ahead; allowed: 04_easy_batchnorm"),
                     (["04_easy_batchnorm", "--shard", "2", "--shards", "2"], "--shard=2 is out of range"),
                     (["04_easy_batchnorm", "--shards", "0"], "--shards=0 is out of range"),
                     (["04_easy_batchnorm", "-p", "seedz", "[0]"], "seedz")):
        assert cli.main(["evaluate", *bad, "--profile", "smoke"]) == 2
        assert why in capsys.readouterr().err
    assert calls == []  # refused before any work
    assert cli.main(["evaluate", "04_easy_batchnorm", "--profile", "smoke", "-p", "seeds", "[0, 5]",
                     "--shard", "1", "--shards", "2"]) == 0
    (_, restored), (_, p, shard, shards) = calls
    assert p.seeds == (0, 5) and (shard, shards) == (1, 2)
    assert restored == ebn.runs(p) and any(c.seed == 5 for c in restored)
    assert "done: 2 trained runs evaluated (shard 1 of 2): 1 computed now, 1 found cached" in capsys.readouterr().out


def test_executing_a_study_first_restores_its_published_evaluations(tmp_path, monkeypatch, data_root):
    """``run_notebook`` (``rnorm run`` and ``rnorm book``) copies the evaluations published beside a study's
    runs into RNORM_RUNS before papermill starts, for exactly the runs the study plans; a notebook that
    trains nothing (the ledger) restores nothing."""
    import papermill

    from rnorm.experiments import planned_runs

    monkeypatch.setenv("RNORM_DATA", str(data_root))
    monkeypatch.setenv("RNORM_RUNS", str(tmp_path / "runs"))
    calls = []
    patch_book(monkeypatch, "restore_evaluations", lambda configs, archive=None: calls.append(list(configs)) or 0)

    class Executed(Exception):
        pass

    def execute(*a, **k):  # records how many restores had happened when papermill started
        raise Executed(len(calls))

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    params = book.notebook_params(book.load_profile("smoke"), "04_easy_batchnorm")
    with pytest.raises(Executed) as started:
        book.run_notebook("04_easy_batchnorm", params, out_dir=tmp_path / "out")
    assert started.value.args == (1,)  # restored before papermill started
    assert calls == [planned_runs("04_easy_batchnorm", params)] and calls[0]
    calls.clear()
    with pytest.raises(Executed) as started:
        book.run_notebook("05_claims_ledger", book.notebook_params(book.load_profile("smoke"), "05_claims_ledger"),
                          out_dir=tmp_path / "out")
    assert started.value.args == (0,) and calls == []


def test_robustnorm_sweep_tunes_only_the_models_tuned_names():
    from rnorm.experiments import robustnorm
    both = RobustNormParams(sweep_lrs=[0.05, 0.1], powers=[0.2])
    assert {(c.norm, c.lr) for c in robustnorm.sweep_runs(both)} == {
        ("bn", 0.05), ("bn", 0.1), ("robustnorm", 0.05), ("robustnorm", 0.1)}
    rn_only = RobustNormParams(sweep_lrs=[0.05, 0.1], powers=[0.2], tuned=["robustnorm"], lr=0.1)
    assert {c.norm for c in robustnorm.sweep_runs(rn_only)} == {"robustnorm"}
    one = RobustNormParams(sweep_lrs=[0.3], powers=[0.2], tuned=["robustnorm"], lr=0.1)  # one rate: no sweep
    assert robustnorm.sweep_runs(one) == [] and robustnorm.chosen_lrs(one) == {"robustnorm p=0.2": 0.3}
    lrs = {c.norm: c.lr for c in robustnorm.runs(one)}
    assert lrs == {"none": 0.1, "bn": 0.1, "robustnorm": 0.3}  # BatchNorm, not tuned, trains at lr
    with pytest.raises(ConfigError, match="tuned"):
        RobustNormParams(tuned=["batchnorm"])


def test_c3_speed_target_text_says_what_the_target_is_a_fraction_of_beside_the_floor():
    from rnorm.experiments import protocol, robustnorm, verdicts
    ref = protocol.reference("cifar10_jpeg", "resnet20")
    text = robustnorm.speed_target_text("cifar10_jpeg", "resnet20", 16)
    assert text.startswith(f"{100 * verdicts.SPEED_TARGET * ref.accuracy:.1f} % test accuracy, "
                           f"{verdicts.SPEED_TARGET:.0%} of the published accuracy")
    assert ref.describe(16) in text and robustnorm.speed_target_text("cifar10", "resnet50") == ""
