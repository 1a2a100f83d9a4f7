"""Profiles -> papermill runs -> Jupyter Book build, re-executing only what changed.

A *profile* (``profiles/<name>.yaml``) fixes the parameters of every notebook for one scale of
the study: ``smoke`` (CI), ``cpu`` (the published build, :data:`PUBLISHED_PROFILE`) and
``paper`` (the papers' scale, for a GPU). :func:`load_profile` validates it completely before
anything runs.

Up to date, like ``make``. Every executed notebook's ``provenance.json`` records a *key*
(:func:`notebook_key`): the hash of the notebook's source (``notebooks/<name>.md``), of its
resolved parameters (without the run-time ones: device, threads, progress, memory layout,
results folder) and of the code of the ``rnorm`` modules it imports, directly or not (their
syntax trees without docstrings, so a comment or a docstring changes nothing).
:func:`run_book` re-executes exactly the notebooks whose key changed or whose outputs are
missing (plus the ledger when any study re-ran), trains only the runs those need, then builds.
``rerun=True`` re-executes every notebook of the profile. A notebook that reads others (the
ledger) is also re-executed when the keys of the results it read differ from the ones it
recorded, e.g. after ``rnorm book --only 02_stats_swap``. Beside ``provenance.json``,
:func:`run_notebook` records what the key was computed from (:data:`KEY_FILE`), so
:func:`staleness` can say *why* a notebook is stale (which parameters, which modules), and
``rnorm book --dry-run`` (:func:`describe_book_plan`) says what a build would execute and train
without doing any of it.

Which checkout. Everything here works on the checkout the working directory is in
(:func:`project_root`), not on the one the package is installed from.

Where results go. ``rnorm book --profile NAME`` builds the book from that profile, in ``book/``.
:func:`run_notebook` (``rnorm run``) writes into ``book/`` only when the parameters are exactly
those of the published profile (:data:`PUBLISHED_PROFILE`); anything else goes to
``_scratch/<profile or custom>/`` unless told otherwise (:func:`default_out_dir`).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import yaml

from ._io import atomic_write_text
from ._validate import ConfigError, as_sequence, suggest
from .experiments import REGISTRY, execution_order, get
from .experiments.common import EVALUATION_FILES

PUBLISHED_PROFILE = "cpu"
PROFILE_KEYS = ("description", "jobs", "defaults", "notebooks")
REQUIRED_PROFILE_KEYS = ("defaults", "notebooks")  # at least one: a profile that sets nothing is a mistake
RUNTIME_PARAMS = ("device", "results_dir", "progress", "threads", "channels_last")
ALL_NOTEBOOKS = tuple(REGISTRY)


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; this loader reads it as the float it means. A key given twice
    in one mapping is an error (plain YAML keeps the last silently, so an edit above an existing
    line would change nothing)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping", node.start_mark,
                            f"key {key!r} is given twice (lines {first[key]} and {key_node.start_mark.line + 1}); "
                            "allowed: each key once per mapping", key_node.start_mark)
                    first[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: SafeLoader names it itself
                    continue
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


# ------------------------------------------------------------------------------------- the checkout
#: What makes a folder a project checkout: the book's configuration and table of contents, and the notebooks.
PROJECT_MARKERS = ("_config.yml", "_toc.yml", "notebooks/")
_PACKAGE = Path(__file__).resolve().parent  # the rnorm package this process imported


def find_root(start=None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) that holds
    :data:`PROJECT_MARKERS`, else None."""
    here = Path(start if start is not None else os.getcwd()).absolute()
    for folder in (here, *here.parents):
        if all((folder / m.rstrip("/")).is_dir() if m.endswith("/") else (folder / m).is_file()
               for m in PROJECT_MARKERS):
            return folder
    return None


def project_root(*, code: bool = True) -> Path:
    """The checkout the pipeline works on: the one the working directory is in (:func:`find_root`),
    never the one the package happens to be installed from (with a shared virtual environment
    those differ). Outside a checkout, a :class:`ConfigError` says so.

    ``code=True`` (everything but rendering the HTML) also requires that this process runs the
    checkout's own ``rnorm`` package: notebooks are executed in the checkout and import its
    ``rnorm``, their keys hash its modules, and training runs this process's code, so two
    checkouts' code would otherwise mix without a word."""
    root = find_root()
    if root is None:
        raise ConfigError(f"{Path.cwd()} is not inside an rnorm checkout (no folder at or above it holds "
                          f"{', '.join(PROJECT_MARKERS)}); cd into the checkout to build, run or plan.")
    if code and (root / "rnorm").resolve() != _PACKAGE:
        raise ConfigError(f"this checkout is {root}, but the rnorm package running is {_PACKAGE} (another "
                          f"checkout, or an installed copy): its notebooks would run one code and training "
                          f"another. Run `python -m rnorm.cli ...` in {root}, or set PYTHONPATH={root}.")
    return root


def __getattr__(name):  # ``book.REPO``: the checkout of the working directory, resolved when asked for
    if name == "REPO":
        return project_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


def profiles_dir() -> Path:
    env = os.environ.get("RNORM_PROFILES")
    return Path(env) if env else project_root(code=False) / "profiles"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str) -> dict:
    """Read and validate a profile; returns ``{"name", "description", "jobs", "notebooks": {nb: params}}``.

    Every notebook's parameters are checked by its parameter class; unknown keys, notebooks or
    profiles raise :class:`ConfigError` naming them.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"profile={name_or_path!r} must be a profile name or a path to a .yaml file.")
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        names = available_profiles()
        raise ConfigError(f"profile={str(name_or_path)!r} not found (looked for {path}); available profiles: "
                          f"{', '.join(names) or 'none'}." + suggest(str(name_or_path), names))
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"profile file {path} is not valid YAML: {e}") from None
    shape = (f"a mapping with at least one of the keys {' or '.join(REQUIRED_PROFILE_KEYS)} (the parameters "
             f"it sets), and optionally {', '.join(k for k in PROFILE_KEYS if k not in REQUIRED_PROFILE_KEYS)}")
    if raw is None:
        raise ConfigError(f"profile file {path} is empty; a profile is {shape}.")
    if not isinstance(raw, dict):
        raise ConfigError(f"profile file {path} holds {raw!r:.40} (of type {type(raw).__name__}), not a mapping; "
                          f"a profile is {shape}.")
    for k in raw:
        if k not in PROFILE_KEYS:
            raise ConfigError(f"profile file {path} has an unknown key {k!r}; allowed keys: "
                              f"{', '.join(PROFILE_KEYS)}." + suggest(k, PROFILE_KEYS))
    defaults = raw.get("defaults") or {}
    per_nb = raw.get("notebooks") or {}
    for section, value in (("defaults", defaults), ("notebooks", per_nb)):
        if not isinstance(value, dict):
            raise ConfigError(f"profile file {path}: {section!r} must be a mapping; got {value!r}.")
    for nb in per_nb:
        if nb not in REGISTRY:
            raise ConfigError(f"profile file {path} names an unknown notebook {nb!r}; notebooks: "
                              f"{', '.join(REGISTRY)}." + suggest(nb, REGISTRY))
    for k in defaults:
        if not any(k in n.params.field_names() for n in REGISTRY.values()):
            raise ConfigError(f"profile file {path}: default {k!r} is a parameter of no notebook.")
    notebooks = {}
    for nb, entry in REGISTRY.items():
        params = {k: v for k, v in defaults.items() if k in entry.params.field_names()}
        params.update(per_nb.get(nb) or {})
        try:
            entry.params.from_dict(params)
        except ConfigError as e:
            raise ConfigError(f"profile {path.stem!r}, notebook {nb!r}: {e}") from None
        notebooks[nb] = params
    from .layout import check_jobs
    try:
        jobs = check_jobs(raw.get("jobs", 1))
    except ConfigError as e:
        raise ConfigError(f"profile file {path}: {e}") from None
    if not any(k in raw for k in REQUIRED_PROFILE_KEYS):
        has = f"it has only {', '.join(map(repr, raw))}" if raw else "an empty mapping"
        raise ConfigError(f"profile file {path} sets no parameter ({has}); a profile is {shape}.")
    return {"name": path.stem, "path": str(path), "description": raw.get("description", ""), "jobs": jobs,
            "threads": defaults.get("threads"), "channels_last": defaults.get("channels_last", "auto"),
            "notebooks": notebooks}


def parse_cli_value(text: str):
    """A ``-p name value`` value, read as YAML (``"[0.01, 0.03]"`` is a list, ``8/255`` a string, ``1e-3`` a float)."""
    try:
        return read_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"-p value {text!r} is not valid YAML ({getattr(e, 'problem', e)}); write lists like "
                          f"\"[0.01, 0.03]\" and strings like 8/255.") from None


def parse_overrides(pairs) -> dict:
    """``-p NAME VALUE`` pairs as ``{name: value}`` (values read as YAML); a name given twice is an error,
    as a key given twice in a profile is."""
    out: dict = {}
    for name, value in pairs:
        if name in out:
            raise ConfigError(f"-p {name} is given twice; allowed: each parameter once.")
        out[name] = parse_cli_value(value)
    return out


def notebook_params(profile: dict, notebook: str, overrides: dict | None = None) -> dict:
    """The validated parameters of ``notebook`` under ``profile`` with ``overrides`` applied."""
    entry = get(notebook)
    params = dict(profile["notebooks"][entry.name])
    params.update(overrides or {})
    entry.params.from_dict(params)
    return params


# ------------------------------------------------------------------------------------- keys
def result_params(notebook: str, params: dict) -> dict:
    """The validated parameters that determine a notebook's results (run-time ones left out)."""
    resolved = get(notebook).params.from_dict({k: v for k, v in params.items()}).as_dict()
    return {k: v for k, v in resolved.items() if k not in RUNTIME_PARAMS}


def matching_profile(notebook: str, params: dict) -> str | None:
    """The profile whose parameters for ``notebook`` equal ``params`` (run-time ones aside), else None.

    This is how results are labelled with a profile: ``-p`` overrides that change anything make
    the results custom (None), so smoke-scale numbers can never be labelled as the published ones.
    Notebooks that only read other notebooks' results (the ledger) return None.
    """
    entry = get(notebook)
    if entry.reads:
        return None
    mine = result_params(notebook, params)
    try:
        names = available_profiles()
    except ConfigError:  # outside a checkout no profile is known: the results are custom
        return None
    for name in names:
        try:
            theirs = result_params(notebook, load_profile(name)["notebooks"][notebook])
        except ConfigError:
            continue
        if theirs == mine:
            return name
    return None


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


# Modules that cannot change a notebook's results: the command line and the book driver. Package
# __init__ files are registries (rnorm.experiments imports every study): following them would make
# every notebook depend on every other one.
_NOT_RESULTS = ("rnorm.book", "rnorm.cli")


def code_version(source_code: str) -> dict[str, str]:
    """``{module: hash}`` of every rnorm module the code imports, transitively (imports inside
    functions included), leaving out package ``__init__`` files and :data:`_NOT_RESULTS`."""
    todo = _rnorm_imports(ast.parse(source_code), "rnorm")
    seen: dict[str, str] = {}
    while todo:
        name = todo.pop()
        f = _module_file(name)
        if name in seen or name in _NOT_RESULTS or f.name == "__init__.py":
            continue
        seen[name], imports = _module_summary(f.read_text(), name.rsplit(".", 1)[0])
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


def stale_studies(provs: dict) -> dict[str, str]:
    """What the ledger must not judge (:func:`rnorm.experiments.ledger.run`'s ``stale``), from the studies'
    provenances (``{notebook: provenance dict}``, :func:`rnorm.experiments.ledger.provenances`):
    ``{notebook: reason}`` for the results that the profile they name would not give today: their
    recorded key (:func:`notebook_key`: notebook source, parameters, code) differs from
    the key of that notebook under that profile now, or none was recorded (results of an earlier
    build). A verdict from such results would describe an experiment the book no longer contains,
    so the ledger leaves them out and says why. Results of custom parameters (no profile) have
    nothing to be compared with and are kept."""
    out = {}
    for nb, prov in provs.items():
        name = prov.get("profile")
        if name is None:
            continue
        try:
            want = notebook_key(nb, notebook_params(load_profile(name), nb))
        except (ConfigError, KeyError) as e:
            out[nb] = f"not judged: {nb}'s results name profile {name!r}, which cannot give them now ({e})"
            continue
        have = prov.get("key")
        if have != want:
            how = ("record no key: they come from an earlier build" if have is None
                   else f"were computed by other code or parameters (key {have}, now {want})")
            out[nb] = (f"not judged: {nb}'s committed results {how}, so they do not test this claim under the current "
                       f"protocol; re-execute it (rnorm book --profile {name}).")
    return out


def staleness(profile: dict, notebooks=None, out_dir=None) -> dict[str, list[str]]:
    """``{notebook: reasons}`` for the notebooks of ``profile`` (in execution order) whose outputs are
    missing or whose key changed, and for those that read a stale one or whose recorded inputs
    differ from the results now there (the ledger). The reasons say what changed, as far as the
    executed copy recorded it (:func:`why_stale`)."""
    out_dir = Path(out_dir or project_root() / "book")
    stale: dict[str, list[str]] = {}
    for nb in execution_order(notebooks or REGISTRY):
        why = why_stale(nb, profile["notebooks"][nb], out_dir)
        reads = get(nb).reads
        why += [f"it reads {r}, which is stale" for r in reads if r in stale]
        if reads and not why:  # its own copy is current: were the results it read replaced since?
            had = recorded_inputs(nb, out_dir)
            if had is None:
                why.append("it recorded no inputs (summary.json)")
            elif had != {r: recorded_key(r, out_dir) for r in reads}:
                why.append("the results it read were re-executed after it ran")
        if why:
            stale[nb] = why
    return stale


def stale_notebooks(profile: dict, notebooks=None, out_dir=None) -> list[str]:
    """The notebooks :func:`staleness` finds stale, in execution order."""
    return list(staleness(profile, notebooks, out_dir))


def why_stale(notebook: str, params: dict, out_dir) -> list[str]:
    """Why the executed copy of ``notebook`` in ``out_dir`` does not match ``params`` and the code
    now ([] when its key matches): outputs missing, source changed, which parameters changed (old
    and new value), which ``rnorm`` modules changed. Copies executed before :data:`KEY_FILE` was
    recorded only show their parameters (from provenance.json); the rest is then not known."""
    out_dir = Path(out_dir)
    res = out_dir / "results" / notebook
    if not (out_dir / "executed" / f"{notebook}.ipynb").is_file():
        return [f"no executed copy in {out_dir / 'executed'}"]
    have = recorded_key(notebook, out_dir)
    if have is None:
        return ["its provenance.json records no key (executed before keys were recorded)"
                if (res / "provenance.json").is_file() else f"no provenance.json in {res}"]
    now = key_inputs(notebook, params)
    if have == _hash_inputs(now):
        return []
    try:
        rec = json.loads((res / KEY_FILE).read_text())
        if rec.get("key") != have:
            rec = None
    except (OSError, ValueError):
        rec = None
    if rec is None:  # executed before the key's inputs were recorded: its parameters are in provenance
        try:
            recorded = json.loads((res / "provenance.json").read_text())["parameters"]
            try:
                old = result_params(notebook, recorded)
            except ConfigError:  # valid then, not under today's rules: its resolved values as recorded
                old = {k: v for k, v in recorded.items() if k not in RUNTIME_PARAMS}
            old = json.loads(json.dumps(old, default=str))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            old = None
        unknown = (f"its source or the code it imports changed (executed before the key's inputs were recorded "
                   f"in {KEY_FILE}, so which of them is not known)")
        why = _param_changes(old, now["params"]) if old is not None else []
        if not why:
            return [unknown]
        if _hash_inputs({**now, "params": old}) != have:  # the parameters alone do not explain the key
            why.append(unknown.replace("changed", "may also have changed", 1))
        return why
    why = []
    if rec.get("source") != now["source"]:
        why.append(f"its source {notebook_source(notebook).relative_to(project_root())} changed")
    why += _param_changes(rec.get("params") or {}, now["params"])
    old_code, new_code = rec.get("code") or {}, now["code"]
    changed = sorted(m for m in set(old_code) | set(new_code) if old_code.get(m) != new_code.get(m))
    if changed:
        why.append("code changed: " + ", ".join(changed))
    return why or ["its key differs from the one recorded"]


def _param_changes(old: dict, new: dict) -> list[str]:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return []
    return ["parameters changed: " + "; ".join(f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
                                               for k in changed)]


def recorded_inputs(notebook: str, out_dir) -> dict | None:
    """The keys of the notebooks it read, as a reading notebook (the ledger) recorded them."""
    f = Path(out_dir) / "results" / notebook / "summary.json"
    try:
        return json.loads(f.read_text()).get("inputs")
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------- training
def publish_runs(profile: dict, *, notebooks=None, archive=None) -> tuple[list, list]:
    """Copy every finished run the notebooks of ``profile`` need into ``archive`` (default: the
    repository's ``models/``) with :func:`rnorm.runs.publish_run`, with its evaluation caches (those
    computed here and those published before: :func:`copy_evaluations`); returns (published folders,
    names of the runs neither finished here nor published before). Runs named only after others
    finish (03's RobustNorm runs after its sweep) are included once those have finished."""
    from .runs import find_run, publish_run
    archive = Path(archive) if archive is not None else project_root() / "models"
    published, missing = [], []
    for cfg in planned_configs(profile, notebooks):
        run = find_run(cfg, archive=[])
        if run is None:
            if not (archive / cfg.folder_name() / "model.pt").is_file():  # else published before, not here now
                missing.append(cfg.folder_name())
        else:
            # publish_run replaces the folder: carry the evaluations published before (perhaps on
            # another machine) into the run first, so the archive keeps them all
            copy_evaluations(archive / run.path.name, run.path)
            folder = publish_run(run, archive)
            copy_evaluations(run.path, folder)
            published.append(folder)
    return published, missing


# The evaluation caches of a run (:func:`rnorm.experiments.common.cached_evaluate`) are the files named
# :data:`rnorm.experiments.common.EVALUATION_FILES`: their name is the hash of everything an evaluation
# depends on (the run, the test images, the attack, the code).


def copy_evaluations(src, dst) -> list:
    """Copy the evaluation caches (:data:`EVALUATION_FILES`) of the run folder ``src`` that the run folder
    ``dst`` lacks into it, each atomically; returns the names copied. A missing ``src`` copies nothing.

    The published book carries them beside each run in ``models/`` (:func:`publish_runs`), and
    :func:`restore_evaluations` puts them back in ``RNORM_RUNS`` (:func:`run_notebook` calls it), so a
    fresh machine re-executes a chapter without evaluating its models again. A cache is only ever read
    under its own name, which hashes the evaluation code and the test images, so one written by other
    code or from other images is never used: it stays unread."""
    from ._io import atomic_write_bytes
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        return []
    copied = []
    for f in sorted(src.glob(EVALUATION_FILES)):
        if not (dst / f.name).exists():
            atomic_write_bytes(dst / f.name, f.read_bytes())
            copied.append(f.name)
    return copied


def restore_evaluations(configs, *, archive=None) -> int:
    """For each config whose run is finished or published (restored into ``RNORM_RUNS`` by
    :func:`rnorm.runs.find_run`), copy the evaluations published beside it (:func:`copy_evaluations`)
    that its run folder lacks; returns the number of files copied. Runs not trained yet are skipped."""
    from .runs import archive_roots, find_run
    n = 0
    for cfg in configs:
        run = find_run(cfg, archive=archive)
        if run is None:
            continue
        for root in archive_roots(archive):
            n += len(copy_evaluations(root / run.path.name, run.path))
    return n


def planned_configs(profile: dict, notebooks=None, exclude=(), longest_first: bool = False,
                    match=None) -> list:
    """The RunConfigs the given notebooks of ``profile`` need as of now, each once, in notebook order
    (``longest_first``: by :func:`run_cost`, the order training schedules them), leaving out ``exclude``;
    with ``match`` (texts), only the runs whose folder name contains one of them."""
    from .experiments import planned_runs
    configs: list = []
    match = as_sequence("match", match) if match else ()  # one bare text is one text, not its letters
    for nb in as_sequence("notebooks", notebooks, nonempty=False) if notebooks is not None else REGISTRY:
        check_sizes(nb, profile["notebooks"][nb])  # a run that cannot train is never planned
        for cfg in planned_runs(nb, profile["notebooks"][nb]):
            if cfg not in configs and cfg not in exclude and (
                    not match or any(m in cfg.folder_name() for m in match)):
                configs.append(cfg)
    return sorted(configs, key=run_cost, reverse=True) if longest_first else configs


def check_match(profile: dict, notebooks, match) -> None:
    """Refuse, before any work, a ``match`` text that names none of the planned runs."""
    from ._validate import ConfigError
    if not match:
        return
    planned = [c.folder_name() for c in planned_configs(profile, notebooks)]
    for m in as_sequence("match", match):
        if not any(m in name for name in planned):
            raise ConfigError(f"--match {m!r} is in none of the {len(planned)} planned run names; allowed: a part "
                              f"of a name, e.g. {planned[0] if planned else 'none planned'!r}"
                              f" (`rnorm plan --profile {profile.get('name', 'cpu')}` lists them).")


def unfinished(configs: list) -> list:
    """The configs without a finished run (in ``RNORM_RUNS`` or published), in the same order."""
    from .runs import find_run
    return [c for c in configs if find_run(c) is None]


def pretrain(profile: dict, *, jobs=None, device: str = "auto", notebooks=None,
             executor: str = "local", address: str | None = None, layouts: list | None = None,
             match=None) -> list:
    """Train every run the given notebooks need, longest first, with ``executor``
    (:mod:`rnorm.executors`: ``local`` worker processes, ``jobs`` of them, or ``ray`` tasks on the
    cluster at ``address``).

    ``jobs`` (default: the profile's) is a number of workers of the profile's ``threads`` each, or
    ``"auto"``: one worker per core (:func:`rnorm.layout.resolve`). Each round's layout is printed and
    appended to ``layouts``.

    ``match`` (texts) trains only the runs whose folder name contains one of them, e.g. a standard
    run first, to check its convergence floor before the long recipes (:func:`check_match`).

    Finished runs are cached, so the notebooks then only load them. A notebook may name some runs
    only after others are trained (03's RobustNorm runs follow its learning-rate sweep), so this
    trains in rounds until the list of runs stops growing. Returns ``(run folder name, trained
    here?)`` per run (:func:`rnorm.executors.train_one`).
    """
    from .executors import run_all
    from .layout import Layout, resolve
    done: list = []
    results: list = []
    jobs = jobs or profile["jobs"]
    for _ in range(5):
        configs = planned_configs(profile, notebooks, exclude=done, longest_first=True, match=match)
        if not configs:
            break
        if executor == "ray":  # the cluster's resources decide; each task asks for the profile's threads
            lay = Layout(1, profile.get("threads") or 1, note="Ray tasks")
        else:  # for the runs still to train (finished and published ones need no worker)
            todo = unfinished(configs)
            lay = resolve(jobs, todo, threads=profile.get("threads"), device=device)
            print(f"[rnorm] {len(todo)} of {len(configs)} run(s) to train, with {lay.describe()}", flush=True)
        if layouts is not None:
            layouts.append(lay)
        results += run_all(configs, executor=executor, jobs=lay.workers, device=device, threads=lay.threads,
                           address=address, channels_last=profile.get("channels_last", "auto"))
        done += configs
    return results


_RECIPE_COST = {"standard": 1.0, "pgd_at": 1.0, "advprop": 2.0, "ebn": 2.0, "advprop_ebn": 3.0}
_ARCH_COST = {"resnet20": 0.6, "resnet18": 1.0, "resnet50": 2.5}


def run_cost(cfg) -> float:
    """A rough relative cost of a run, to schedule the longest first."""
    steps = 0 if cfg.recipe == "standard" else cfg.train_steps * (1 if cfg.recipe != "advprop_ebn" else 2)
    n = cfg.train_subset or 60000
    return n * cfg.epochs * (_RECIPE_COST[cfg.recipe] + 0.7 * steps) * _ARCH_COST.get(cfg.arch, 1.0) * (cfg.width / 16) ** 2


# ------------------------------------------------------------------------------------- notebooks
def preflight(notebook: str, params: dict, out_dir: Path | None = None) -> None:
    """Every check that can be made before a kernel starts or a model trains, as one ConfigError.

    The parameters (by the notebook's class), the device (CUDA requested without a GPU), the runs
    folder (writable), the data (every dataset the notebook reads is loaded and verified, so a
    missing file or ``RNORM_DATA`` pointing at a file is named here) and the sizes that depend
    on it (``test_n``, ``probe_n``, ``precise_n``, ``train_subset`` within the splits), and the
    results folder (writable).
    """
    from .hardware import resolve_device
    from .runs import RunError, ensure_writable, runs_root

    entry = get(notebook)
    p = entry.params.from_dict(params)
    if not entry.trains:
        return
    resolve_device(p.device)
    try:
        ensure_writable(runs_root())
    except RunError as e:
        raise ConfigError(str(e)) from None
    check_sizes(notebook, params)
    if out_dir is not None:
        import tempfile
        folder = Path(out_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"output folder {folder} is not writable ({e.strerror or e}); pass --out-dir.") from None


def check_sizes(notebook: str, params: dict) -> None:
    """The data a study reads is there and verified, and its sizes (``test_n``, ``probe_n``,
    ``precise_n``, ``train_subset``) fit within the splits, else one :class:`ConfigError` naming the
    value and the limit. Part of :func:`preflight`; :func:`planned_configs` applies it too, so
    ``rnorm plan``, ``rnorm train`` and ``rnorm book --dry-run`` never plan a run that cannot train."""
    from . import data
    entry = get(notebook)
    if not entry.trains:
        return
    p = entry.params.from_dict(params)
    for d in getattr(p, "datasets", None) or (p.dataset,):
        try:
            n_train = data.load(d, "train")[1].shape[0]
            n_test = data.load(d, "test")[1].shape[0]
        except data.DataError as e:
            raise ConfigError(f"dataset {d!r}: {e}") from None
        for name, split, limit in (("test_n", "test", n_test), ("probe_n", "test", n_test),
                                   ("precise_n", "train", n_train), ("train_subset", "train", n_train)):
            value = getattr(p, name, None)
            if value is not None and value > limit:
                raise ConfigError(f"notebook {entry.name!r}: {name}={value} is larger than the {d!r} {split} "
                                  f"split ({limit} images); allowed: up to {limit}.")


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
        from .experiments import planned_runs
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


def run_state(cfg) -> str:
    """Where a planned run stands, without touching anything: ``finished`` (in ``RNORM_RUNS``),
    ``trained k of n epochs`` (a checkpoint: training resumes it, even where the archive has the run),
    ``published`` (in the archive, copied on first use) or ``to train``."""
    from .runs import archive_roots, is_complete, run_path
    path = run_path(cfg)
    if is_complete(path):
        return "finished"
    if (path / "checkpoint.pt").is_file():  # restore_published leaves a run being trained alone: it resumes
        hist = path / "history.csv"
        done = max(0, len(hist.read_text().strip().splitlines()) - 1) if hist.is_file() else 0
        return f"trained {done} of {cfg.epochs} epochs"
    if any((root / path.name / "model.pt").is_file() for root in archive_roots()):  # as restore_published looks
        return "published"
    return "to train"


def describe_book_plan(profile_name: str, *, notebooks=None, out_dir=None, rerun: bool = False) -> str:
    """What :func:`run_book` would do, as text, doing none of it (``rnorm book --dry-run``): each
    notebook current or to be executed and why, then the training runs the executed studies need
    and where each stands (:func:`run_state`). Nothing is executed, trained or written to the book;
    like ``rnorm plan``, planning may copy published runs that it reads (chapter 3's learning-rate
    sweep, whose results name the later runs) from the archive into ``RNORM_RUNS``."""
    from .runs import archive_roots, runs_root
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
    timings: dict = {}
    layouts: list = []
    record = {"profile": profile["name"], "jobs": jobs or profile["jobs"], "executed": todo, "seconds": timings,
              "cpu_count": os.cpu_count()}
    t0 = time.time()
    if not todo:
        print(f"every notebook of profile {profile['name']!r} is up to date in {out_dir}; nothing to execute.")
    else:
        for nb in todo:  # every mistake that can be caught before training is caught here
            preflight(nb, notebook_params(profile, nb, {"device": device} if get(nb).trains else {}), out_dir)
        print("executing " + "; ".join(f"{nb} ({', '.join(why[nb])})" for nb in todo), flush=True)
        pretrain(profile, jobs=jobs, device=device, notebooks=[nb for nb in todo if get(nb).trains],
                 executor=executor, address=address, layouts=layouts)
        timings["pretrain"] = round(time.time() - t0, 1)
        record["layouts"] = [lay.describe() for lay in layouts]
        from concurrent.futures import ThreadPoolExecutor

        def one(nb):
            t = time.time()
            print(f"running {nb} ...", flush=True)
            run_notebook(nb, notebook_params(profile, nb, {"device": device} if get(nb).trains else {}),
                         out_dir=out_dir)
            print(f"finished {nb} in {time.time() - t:.0f} s", flush=True)
            return nb, round(time.time() - t, 1)

        studies = [nb for nb in todo if get(nb).trains]
        from .layout import available_cores
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
    timings["total_before_build"] = round(time.time() - t0, 1)
    if build:
        t = time.time()
        build_book()
        timings["build"] = round(time.time() - t, 1)
    return record
