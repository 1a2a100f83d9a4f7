"""Which executed notebooks are stale and why (:func:`staleness`, :func:`why_stale`), and which studies'
results the ledger must not judge (:func:`stale_studies`): the pipeline compares recorded keys with today's."""
from __future__ import annotations

import json
from pathlib import Path

from .._validate import ConfigError
from ..experiments import REGISTRY, execution_order, get
from .checkout import project_root
from .keys import KEY_FILE, _hash_inputs, key_inputs, notebook_key, notebook_source, recorded_key
from .profiles import RUNTIME_PARAMS, load_profile, notebook_params, result_params


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
