"""The layers of ../shared/DESIGN.md ("Target layout"): the library imports nothing of the study or the
book pipeline, nothing imports upwards, no import cycles, and benchmarks/ imports only the library.

The contracts are in pyproject.toml (``[tool.importlinter]``); import-linter sees imports inside
functions too. The second test checks what a fresh process actually loads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK_TOOLS = ("papermill", "nbformat", "jupytext", "myst_nb", "jupyter_book")
ABOVE_THE_LIBRARY = ("rnorm.experiments", "rnorm.book", "rnorm.cli", "rnorm.provenance")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def test_import_contracts_are_kept():
    try:
        import importlinter  # noqa: F401
    except ImportError:  # a failure, not a skip: a missing checker must not pass the layers silently
        pytest.fail("import-linter is not installed: pip install -e '.[dev]' (or pip install import-linter)")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    out = subprocess.run([sys.executable, "-c", code, "--no-cache", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"an import breaks the layers (pyproject.toml, [tool.importlinter]):\n" \
                                f"{out.stdout[-6000:]}\n{out.stderr[-2000:]}"
    assert "BROKEN" not in out.stdout


def test_importing_the_library_loads_no_study_book_or_notebook_tool():
    code = ("import json, sys; import rnorm.norms, rnorm.attacks, rnorm.train, rnorm.evaluate, rnorm.runs, "
            "rnorm.data, rnorm.models, rnorm.probes, rnorm.stats, rnorm.plots, rnorm.results, rnorm.precise_bn, "
            "rnorm.hardware, rnorm.layout, rnorm.executors; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if m.split(".")[0] in BOOK_TOOLS
           or any(m == a or m.startswith(a + ".") for a in ABOVE_THE_LIBRARY)]
    assert not bad, f"importing the library loaded {bad}"
