"""Judging a claim by its spec (:mod:`rnorm.experiments.claims`): one part against its margin and
preconditions (:func:`checked`), a claim's parts combined into its ledger :class:`Row` by
:func:`rnorm.experiments.claims.combine_parts` (:func:`claim_row`), and settings combined by
:func:`rnorm.experiments.claims.over_settings` (:func:`most`). The combination rules themselves, and
the text the ledger prints for them, live in the spec only."""
from __future__ import annotations

import dataclasses

from .. import stats
from .claims import combine_parts, over_settings
from .protocol import MAX_CI_WIDTH

REPRODUCED, PARTLY, NOT, INCONCLUSIVE, NOT_RUN = (stats.REPRODUCED, stats.PARTLY, stats.NOT, stats.INCONCLUSIVE,
                                                  stats.NOT_RUN)


@dataclasses.dataclass
class Row:
    """A ledger row before formatting: the verdict, the effect text, its parts and the checks made."""

    verdict: str
    effect: str = "—"
    parts: dict = dataclasses.field(default_factory=dict)
    checks: str = ""
    held: tuple = ()  # the preconditions that were checked and hold (each a sentence naming its threshold)
    key: str = ""  # the front page's one effect where the parts are settings (:func:`per_setting.compare_recipes`)
    caveats: tuple = ()  # what the data say the front page must add to the claim's caveat (each a short phrase)


def checked(effect, *, margin, checks: dict, max_width: float | None = MAX_CI_WIDTH) -> stats.Verdict:
    """One part's verdict: :func:`rnorm.stats.judge` of ``effect`` against ``margin`` under the part's own
    preconditions ``checks``, with the CI-width limit ``max_width`` only for an effect in points."""
    return stats.judge(effect, margin=margin, preconditions=checks,
                       max_width=max_width if effect is not None and effect.unit == "points" else None)


def claim_row(core: dict, side: dict | None = None, checks: dict | None = None) -> Row:
    """Combine a claim's parts into its verdict by the spec's table (:func:`rnorm.experiments.claims.combine_parts`).

    ``checks`` are the claim's own preconditions (description -> bool): the first that fails makes
    the claim inconclusive whatever its parts say. Then the *core* parts (the effect the claim is
    about) and the *side* parts (what the claim says comes along) give the verdict the table says;
    so a null effect is never ``partly``: ``partly`` needs the core effect itself.
    """
    side = side or {}
    parts = {**core, **side}
    effect = "; ".join(f"{k}: {v.effect.text() if v.effect is not None else '—'}"
                       + ("" if v.verdict in (REPRODUCED, NOT) else f" ({v.verdict}: {v.reason})")
                       for k, v in parts.items())
    held = tuple(what for what, ok in (checks or {}).items() if ok)
    for what, ok in (checks or {}).items():
        if not ok:
            return Row(INCONCLUSIVE, effect, parts, f"Precondition fails: {what}.", held)
    verdict, case = combine_parts(core, side)

    def named(which, *verdicts_):
        return ", ".join(f"{k} ({v.verdict})" if v.verdict not in (REPRODUCED, NOT) else k
                         for k, v in which.items() if v.verdict in verdicts_)
    refuted = named(parts, NOT)
    held_parts = named(parts, REPRODUCED)
    open_ = ", ".join(f"{k} ({v.verdict})" for k, v in parts.items() if v.verdict not in (REPRODUCED, NOT))
    why = "; ".join(t for t in (f"refuted: {refuted}" if refuted else "", f"holds: {held_parts}" if held_parts else "",
                                f"undecided: {open_}" if open_ else "") if t)
    return Row(verdict, effect, parts, "" if verdict == REPRODUCED else f"{case} ({why})", held)


def most(settings: dict[str, stats.Verdict], claimed: int | None = None) -> stats.Verdict:
    """Over settings, by the spec's table (:func:`rnorm.experiments.claims.over_settings`). "Half" is of
    the ``claimed`` settings where given (a setting not run counts as not tested), else of those judged."""
    v = [x.verdict for x in settings.values()]
    if not v:
        return stats.Verdict(NOT_RUN, None, "no setting")
    total = max(len(v), claimed or 0)
    held, partly, refuted = v.count(REPRODUCED), v.count(PARTLY), v.count(NOT)
    undecided = len(v) - held - partly - refuted
    untested = f", {total - len(v)} not tested" if total > len(v) else ""
    counts = (f"{held} of {total} settings hold, {partly} partly, {refuted} refuted"
              f"{f', {undecided} inconclusive' if undecided else ''}{untested}")
    verdict = over_settings(v, total)
    if verdict in (REPRODUCED, NOT):
        return stats.Verdict(verdict, None, counts if untested else "")
    if verdict == PARTLY:
        return stats.Verdict(PARTLY, None, counts)
    return stats.Verdict(INCONCLUSIVE, None, counts + (": too few settings tested to say whether the claim holds in "
                                                       "most" if untested and refuted else ""))
