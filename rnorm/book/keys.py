"""Notebook keys (:func:`notebook_key`): the hash of a notebook's source, of its result parameters and of
the code of the ``rnorm`` modules it imports, directly or not (their syntax trees without docstrings), and the
key an executed copy recorded (:func:`recorded_key`)."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

from .._validate import ConfigError, as_sequence
from ..experiments import get
from .checkout import project_root
from .profiles import result_params


def _module_file(name: str) -> Path | None:
    rel = name.split(".")
    repo = project_root()
    for cand in (repo.joinpath(*rel).with_suffix(".py"), repo.joinpath(*rel, "__init__.py")):
        if cand.is_file():
            return cand
    return None


def _rnorm_imports(tree: ast.AST, package: str) -> set[str]:
    """Modules of the rnorm package that ``tree`` imports (absolute or relative)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "rnorm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "rnorm":
                continue
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from rnorm import plots` names a module
    return {m for m in out if _module_file(m)}


def _code_fingerprint(tree: ast.AST) -> str:
    """The syntax tree without docstrings: comments and docstrings do not change a result."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


# Modules that cannot change a notebook's results: the command line and the book driver. The
# registries' __init__ files (rnorm.experiments imports every study) are not followed either: that
# would make every notebook depend on every other one. Every other package's __init__ is code like
# any module (rnorm/runs/__init__.py trains the runs) and is followed.
_NOT_RESULTS = ("rnorm.book", "rnorm.cli")  # packages: their modules too
_REGISTRIES = ("rnorm", "rnorm.experiments")


def code_version(source_code: str) -> dict[str, str]:
    """``{module: hash}`` of every rnorm module the code imports, transitively (imports inside
    functions included), leaving out the registries' ``__init__`` files (:data:`_REGISTRIES`) and
    :data:`_NOT_RESULTS`."""
    todo = _rnorm_imports(ast.parse(source_code), "rnorm")
    seen: dict[str, str] = {}
    while todo:
        name = todo.pop()
        f = _module_file(name)
        if name in seen or name.startswith(tuple(n + "." for n in _NOT_RESULTS)) or name in _NOT_RESULTS \
                or name in _REGISTRIES:
            continue
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]  # what its relative imports start at
        seen[name], imports = _module_summary(f.read_text(), package)
        todo |= set(imports) - set(seen)
    return dict(sorted(seen.items()))


@functools.lru_cache(maxsize=256)
def _module_summary(text: str, package: str) -> tuple[str, tuple[str, ...]]:
    """(fingerprint hash, rnorm modules imported) of a module's text, parsed once per process and text."""
    imports = tuple(sorted(_rnorm_imports(ast.parse(text), package)))
    return hashlib.sha256(_code_fingerprint(ast.parse(text)).encode()).hexdigest()[:16], imports


def notebook_source(notebook: str) -> Path:
    """``notebooks/<notebook>.md``, the source a person edits, after checking that it and its paired
    output-free ``.ipynb`` (what plain papermill runs) are both there: a missing one is a
    :class:`ConfigError` naming it and how to restore it, before anything is planned or run."""
    name = get(notebook).name
    folder = project_root() / "notebooks"
    md, ipynb = folder / f"{name}.md", folder / f"{name}.ipynb"
    missing = [f for f in (md, ipynb) if not f.is_file()]
    if missing:
        have = [f for f in (md, ipynb) if f not in missing]
        how = (f"recreate it from its pair with `jupytext --sync {have[0]}` (or `git checkout -- {missing[0]}`)"
               if have else
               f"restore them with `git checkout -- {md} {ipynb}`")
        raise ConfigError(f"notebook {name!r}: {' and '.join(str(f) for f in missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} missing; {how}.")
    return md


def check_sources(notebooks) -> None:
    """Refuse, before anything runs, a notebook whose source or paired ``.ipynb`` is missing (:func:`notebook_source`)."""
    for nb in as_sequence("notebooks", notebooks, nonempty=False):  # one bare name is one notebook
        notebook_source(nb)


def _notebook_code(notebook: str) -> str:
    import jupytext
    nb = jupytext.read(notebook_source(notebook))
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def key_inputs(notebook: str, params: dict) -> dict:
    """What :func:`notebook_key` hashes: the source's sha256, the result parameters and the code
    version, as JSON values (so they compare equal to the copy :func:`run_notebook` records)."""
    src = notebook_source(notebook).read_text()
    inputs = {"source": hashlib.sha256(src.encode()).hexdigest(), "params": result_params(notebook, params),
              "code": code_version(_notebook_code(notebook))}
    return json.loads(json.dumps(inputs, default=str))


def _hash_inputs(inputs: dict) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def notebook_key(notebook: str, params: dict) -> str:
    """16 hex digits identifying what a notebook's results depend on (module docstring)."""
    return _hash_inputs(key_inputs(notebook, params))


def recorded_key(notebook: str, out_dir) -> str | None:
    """The key in ``<out_dir>/results/<notebook>/provenance.json`` (None when it or the executed notebook is missing)."""
    out_dir = Path(out_dir)
    prov = out_dir / "results" / notebook / "provenance.json"
    if not prov.is_file() or not (out_dir / "executed" / f"{notebook}.ipynb").is_file():
        return None
    try:
        return json.loads(prov.read_text()).get("key")
    except (OSError, ValueError):
        return None


KEY_FILE = "key.json"  # beside provenance.json: the key and what it was computed from (:func:`key_inputs`)
