"""Rewrite each notebook's ``parameters`` cell from its params model, then pair the .ipynb.

The defaults and descriptions of a notebook's parameters live in one place, its model in
``rnorm/experiments/`` (:func:`rnorm.experiments.params.parameters_cell` writes the cell from it).
Run after changing a model: ``make parameters`` (or ``python tools/write_parameters_cells.py``);
``--check`` only lists the notebooks whose cell differs, and exits 1 if any does.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rnorm.experiments import REGISTRY  # noqa: E402
from rnorm.experiments.params import parameters_cell  # noqa: E402

# the MyST code cell tagged `parameters`: its fence and options, its source, its closing fence
CELL = re.compile(r"(```\{code-cell\} ipython3\n:tags: \[parameters[^\]\n]*\]\n\n)(.*?)(\n```\n)", re.DOTALL)


def rewrite(text: str, source: str) -> str:
    """``text`` (a MyST notebook) with its one parameters cell's source replaced by ``source``."""
    cells = CELL.findall(text)
    if len(cells) != 1:
        raise SystemExit(f"expected one cell tagged 'parameters', found {len(cells)}")
    return CELL.sub(lambda m: m.group(1) + source + m.group(3), text)


def main(argv=None) -> int:
    """Rewrite (or with ``--check`` list) every notebook whose parameters cell is not the generated one."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only list stale notebooks; exit 1 if any")
    args = ap.parse_args(argv)
    stale = []
    for name, entry in REGISTRY.items():
        md = ROOT / "notebooks" / f"{name}.md"
        text = md.read_text()
        new = rewrite(text, parameters_cell(entry.params))
        if new == text:
            continue
        stale.append(name)
        if not args.check:
            md.write_text(new)
            subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(md)], check=True)
    print(("stale: " if args.check else "rewritten: ") + (", ".join(stale) or "none"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
