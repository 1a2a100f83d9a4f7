"""Profiles (``profiles/<name>.yaml``): read and validated completely before anything runs
(:func:`load_profile`), ``-p`` overrides (:func:`parse_overrides`), a notebook's parameters under a profile
(:func:`notebook_params`) and the profile that a set of parameters matches (:func:`matching_profile`)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from .._validate import ConfigError, suggest
from ..experiments import REGISTRY, get
from .checkout import project_root


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
    path = _profile_path(name_or_path)
    raw = _read_mapping(path)
    defaults = raw.get("defaults") or {}
    notebooks = _notebooks_params(path, defaults, raw.get("notebooks") or {})
    from ..layout import check_jobs
    try:
        jobs = check_jobs(raw.get("jobs", 1))
    except ConfigError as e:
        raise ConfigError(f"profile file {path}: {e}") from None
    if not any(k in raw for k in REQUIRED_PROFILE_KEYS):
        has = f"it has only {', '.join(map(repr, raw))}" if raw else "an empty mapping"
        raise ConfigError(f"profile file {path} sets no parameter ({has}); a profile is {_SHAPE}.")
    return {"name": path.stem, "path": str(path), "description": raw.get("description", ""), "jobs": jobs,
            "threads": defaults.get("threads"), "channels_last": defaults.get("channels_last", "auto"),
            "notebooks": notebooks}


#: What a profile file holds, for the messages that refuse one.
_SHAPE = (f"a mapping with at least one of the keys {' or '.join(REQUIRED_PROFILE_KEYS)} (the parameters "
          f"it sets), and optionally {', '.join(k for k in PROFILE_KEYS if k not in REQUIRED_PROFILE_KEYS)}")


def _profile_path(name_or_path) -> Path:
    """The file of a profile given by name (``profiles/<name>.yaml``) or path; a missing one names the profiles."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"profile={name_or_path!r} must be a profile name or a path to a .yaml file.")
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = profiles_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        names = available_profiles()
        raise ConfigError(f"profile={str(name_or_path)!r} not found (looked for {path}); available profiles: "
                          f"{', '.join(names) or 'none'}." + suggest(str(name_or_path), names))
    return path


def _read_mapping(path: Path) -> dict:
    """The profile file as a mapping of known keys (:data:`PROFILE_KEYS`), whose sections are mappings."""
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"profile file {path} is not valid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"profile file {path} is empty; a profile is {_SHAPE}.")
    if not isinstance(raw, dict):
        raise ConfigError(f"profile file {path} holds {raw!r:.40} (of type {type(raw).__name__}), not a mapping; "
                          f"a profile is {_SHAPE}.")
    for k in raw:
        if k not in PROFILE_KEYS:
            raise ConfigError(f"profile file {path} has an unknown key {k!r}; allowed keys: "
                              f"{', '.join(PROFILE_KEYS)}." + suggest(k, PROFILE_KEYS))
    for section in ("defaults", "notebooks"):
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"profile file {path}: {section!r} must be a mapping; got {value!r}.")
    return raw


def _notebooks_params(path: Path, defaults: dict, per_nb: dict) -> dict:
    """``{notebook: params}`` for every notebook: the defaults it has a field for, then its own entries,
    each validated by its parameter class; an unknown notebook or a default of no notebook is an error."""
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
    return notebooks


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
