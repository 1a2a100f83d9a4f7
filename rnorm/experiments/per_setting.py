"""C4 and C5: two of chapter 04's recipes compared per (dataset, arch) setting, then over settings.

:func:`compare_recipes` judges ``new`` minus ``old`` in each setting as one claim (:func:`judge.claim_row`):
its clean part (:func:`_clean_part`) and, for a robustness claim, a robust part at each judged ε
(:func:`_robust_parts`), gated by standard training's convergence floor (:func:`_setting`); the settings
then combine by :func:`judge.most` (:func:`_over_settings`).
"""
from __future__ import annotations

import pandas as pd

from .. import stats
from ..attacks import format_eps
from . import protocol
from .claims import ROBUST_MARGIN
from .evidence import (Results, clean_effect, full_test_bits, judged_ebn_eps, robust_rows, seed_values,
                       trainings_effect, worst_case)
from .judge import NOT_RUN, Row, checked, claim_row, most
from .protocol import _select

NOTEBOOK = "04_easy_batchnorm"


def compare_recipes(r: Results, new: str, old: str, robust: bool, claim_settings: tuple[int, str] | None = None) -> Row:
    """``new`` minus ``old`` per (dataset, arch) setting of chapter 04, paired over seeds, each setting a
    :func:`judge.claim_row` (clean, and with ``robust`` the worst case of PGD and APGD at each judged ε) gated by
    standard training's floor; combined over settings by :func:`judge.most`. The reason says how many
    settings were judged, and of how many the paper's claim covers (``claim_settings``: count, text)."""
    frames = _frames(r)
    if frames is None:
        return Row(NOT_RUN)
    models, acc = frames
    settings, texts, held, keys = {}, [], [], []
    from ..plots import label
    for (dataset, arch), sub in acc.groupby(["dataset", "arch"], sort=False):
        row = _setting(sub, models, dataset, arch, new, old, robust)
        if row is None:
            continue
        name = f"{label(dataset)} / {label(arch)}"
        held += [h for h in row.held if h not in held]
        clean = row.parts.get("clean")
        if clean is not None and clean.effect is not None:
            keys.append(f"{label(dataset)} {clean.effect.short().replace(' points', '')}")
        settings[name] = stats.Verdict(row.verdict, None, "; ".join(t for t in (row.effect, row.checks) if t))
        texts.append(f"{name}, {label(new)} minus {label(old)} ({row.verdict}"
                     f"{': ' + row.checks if row.checks else ''}): {row.effect}")
    if not settings:
        return Row(NOT_RUN)
    row = _over_settings(settings, texts, held, claim_settings)
    row.key = f"clean, {label(new)} minus {label(old)} (points): " + "; ".join(keys) if keys else ""
    return row


def _frames(r: Results) -> tuple[pd.DataFrame | None, pd.DataFrame] | None:
    """Chapter 04's models (None if absent) and accuracy frames, without the sharing ablation's rows (its
    EBN models are not the recipes compared); None without an accuracy frame."""
    models, acc = r.frame(NOTEBOOK, "models"), r.frame(NOTEBOOK, "accuracy")
    if acc is None:
        return None
    if "share" in acc:
        acc = acc[acc["share"].isin(("none", ""))]
    if models is not None and "share" in models:  # the sharing ablation's EBN models are not the recipes compared
        models = models[models["share"].isin(("none", ""))]
    return models, acc


def _setting(sub: pd.DataFrame, models: pd.DataFrame | None, dataset: str, arch: str, new: str, old: str,
             robust: bool) -> Row | None:
    """One setting's row: its clean part and (with ``robust``) its robust parts over the seeds both recipes
    have, combined as core parts under standard training's floor (and the attack's strength); None where no
    seed has both recipes."""
    main = sub[sub["branch"] == "main"]
    seeds = sorted(set(main.loc[main["recipe"] == new, "seed"]) & set(main.loc[main["recipe"] == old, "seed"]))
    if not seeds:
        return None
    conv_ok, conv = protocol.standard_floor(models, dataset, arch)
    clean, below = _clean_part(models, main, dataset, arch, seeds, new, old)
    parts, checks = {"clean": clean}, {conv: conv_ok}
    if robust:
        more, strength = _robust_parts(main, models, dataset, arch, seeds, new, old)
        checks.update(strength)
        parts.update(more)
    row = claim_row(parts, {}, checks)
    row.effect += below
    return row


def _clean_part(models: pd.DataFrame | None, main: pd.DataFrame, dataset: str, arch: str, seeds, new: str,
                old: str) -> tuple[stats.Verdict, str]:
    """The clean part (``new`` minus ``old``, margin 0) and a note for the effect text (empty, or that the
    compared models stay below their floor under standard training's schedule).

    Clean accuracy on the full test set per model where the models frame has it (per image where it carries
    the bits, :func:`evidence.clean_effect`); else the clean rows of the evaluated subset."""
    full = models is not None and "clean_full" in models
    below = ""
    if full:  # clean accuracy on the full test set, per model
        m = _select(models, dataset=dataset, arch=arch)
        compared = m[m["recipe"].isin((new, old)) & (m["recipe"] != "standard")]
        ok_c, t_c = protocol.convergence(compared) if len(compared) else (True, "")
        below = "" if ok_c else f"; trained by standard training's schedule, {t_c.replace('below', 'stay below')}"
        ca, cb = (seed_values(_select(m, recipe=rec), seeds, "clean_full") for rec in (old, new))
    else:  # no models frame: the clean rows of the evaluated subset
        ca, cb = (seed_values(_select(main, attack="clean", recipe=rec), seeds) for rec in (old, new))
    if ca is None or cb is None:
        return stats.Verdict(NOT_RUN, None, "a model has no clean accuracy recorded"), below
    bits = [full_test_bits(_select(m, recipe=rec), seeds) if full else None for rec in (old, new)]
    return checked(clean_effect(ca, cb, *bits), margin=0.0, checks={}), below


def _robust_parts(main: pd.DataFrame, models: pd.DataFrame | None, dataset: str, arch: str, seeds, new: str,
                  old: str) -> tuple[dict, dict]:
    """The robust parts, one per judged ε (:func:`evidence.judged_ebn_eps`): ``new`` minus ``old`` per image
    the worst case of PGD and APGD, each gated by the attack's floor; and the attack-strength precondition
    (``{description: holds}``)."""
    rob = robust_rows(main)
    ok, strength = protocol.attack_strength(rob)
    parts = {}
    for eps in judged_ebn_eps(models, dataset, arch):
        at_eps = _select(rob, eps=float(eps))
        a, b = worst_case(_select(at_eps, recipe=old), seeds), worst_case(_select(at_eps, recipe=new), seeds)
        if a is None or b is None:
            parts[f"robust {format_eps(eps)}"] = stats.Verdict(NOT_RUN, None, f"no robust rows at {format_eps(eps)}")
            continue
        f_ok, floor = protocol.not_at_floor(*a, *b)
        effect = trainings_effect(_select(at_eps, recipe=old), _select(at_eps, recipe=new), seeds)
        parts[f"robust {format_eps(eps)}"] = checked(effect, margin=ROBUST_MARGIN, checks={floor: f_ok})
    return parts, {strength: ok}


def _over_settings(settings: dict, texts: list, held: list, claim_settings: tuple[int, str] | None) -> Row:
    """The settings' verdicts combined by :func:`judge.most` into the claim's row; its reason says in which
    settings the claim was judged and of how many it covers."""
    overall = most(settings, claim_settings[0] if claim_settings else None)
    scope = f"judged in {len(settings)} setting{'s' if len(settings) > 1 else ''} ({', '.join(settings)})"
    if claim_settings:
        scope += f" of the {claim_settings[0]} the claim covers ({claim_settings[1]})"
    return Row(overall.verdict, " | ".join(texts), settings, "; ".join(t for t in (overall.reason, scope) if t),
               tuple(held))
