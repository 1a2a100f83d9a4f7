"""Sizes a reader can hold (issue 35, ../shared/DESIGN.md "Target layout"): no module of ``rnorm/`` or
``benchmarks/`` over :data:`MAX_MODULE_LINES` lines, no function over :data:`MAX_FUNCTION_LINES`.

A module's size is its number of lines; a function's, the lines from its ``def`` (decorators left out)
to the end of its body, nested functions and methods counted on their own too. The largest five of each
are printed (``pytest -s``) and named in a failure, with every module and function over its limit.
:data:`BEING_SPLIT` names, one by one, what is over a limit today and is being split: anything new over a
limit fails.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rnorm", "benchmarks")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: Over a limit today and still to split (issue 35; rnorm/book, rnorm/runs, rnorm/evaluate, rnorm/train and
#: rnorm/plots are split already). Paths of modules, ``path:qualified.name`` of functions. Remove an entry
#: once it fits; nothing may be added.
BEING_SPLIT: set[str] = set()  # empty since the split of issue 35: every module and function fits


def modules() -> list[Path]:
    return sorted(f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py"))


def module_sizes() -> dict[str, int]:
    """``{path: lines}`` of every module."""
    return {str(f.relative_to(ROOT)): len(f.read_text().splitlines()) for f in modules()}


def function_sizes() -> dict[str, int]:
    """``{"path:qualified.name": lines}`` of every function and method, from ``def`` to the end of its body."""
    out: dict[str, int] = {}

    def visit(node, path: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    out[f"{path}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, path, name + ".")
            else:
                visit(child, path, prefix)

    for f in modules():
        visit(ast.parse(f.read_text()), str(f.relative_to(ROOT)), "")
    return out


def largest(sizes: dict[str, int], n: int = 5) -> str:
    return "\n".join(f"  {lines:5d}  {name}" for name, lines in sorted(sizes.items(), key=lambda kv: -kv[1])[:n])


def test_modules_and_functions_fit_their_limits():
    mods, funcs = module_sizes(), function_sizes()
    report = (f"{sum(mods.values())} lines in {len(mods)} modules of {', '.join(PACKAGES)}\n"
              f"largest modules (limit {MAX_MODULE_LINES}):\n{largest(mods)}\n"
              f"largest functions (limit {MAX_FUNCTION_LINES}):\n{largest(funcs)}")
    print("\n" + report)
    over = [f"module {m}: {n} lines" for m, n in mods.items() if n > MAX_MODULE_LINES and m not in BEING_SPLIT]
    over += [f"function {f}: {n} lines" for f, n in funcs.items()
             if n > MAX_FUNCTION_LINES and f not in BEING_SPLIT]
    assert not over, "over the limits, split by concept:\n  " + "\n  ".join(over) + "\n" + report


def test_the_allow_list_names_only_what_is_still_over_a_limit():
    """An entry of :data:`BEING_SPLIT` that fits now (or no longer exists) goes, so the list only shrinks."""
    mods, funcs = module_sizes(), function_sizes()
    fits = [name for name in BEING_SPLIT if not (mods.get(name, 0) > MAX_MODULE_LINES
                                                  or funcs.get(name, 0) > MAX_FUNCTION_LINES)]
    assert not fits, f"fit their limits now (or are gone): remove them from BEING_SPLIT: {sorted(fits)}"
