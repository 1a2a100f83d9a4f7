"""The few word helpers the chapters' sentences share: a frame row's effect in words, and a direction
category as the parenthesis that follows it. The sentences themselves are the notebooks'."""
from __future__ import annotations

from .. import stats
from .protocol import MAX_CI_WIDTH

#: The direction words of a comparison between two recipes or models (above 0, below 0, neither).
COMPARED = ("higher", "lower", "no difference shown")


def effect(row) -> stats.Effect:
    """A row's effect paired over seeds (columns ``estimate``, ``low``, ``high``, ``n_seeds``), for its words
    (``effect(row).text()``); ``row``: a frame row (``iterrows``) or a named tuple (``itertuples``)."""
    return stats.Effect(float(row.estimate), float(row.low), float(row.high), int(row.n_seeds), "seeds")


def direction_words(cat: str | None, words: tuple[str, str, str]) -> str:
    """A direction category (:func:`rnorm.experiments.ebn_findings.category`) in words, as a parenthesis to
    append: ``words`` = (above 0, below 0, neither); nothing when the setting is not judged (None) or there
    is no CI; a note instead at the attack's floor and where the CI is too wide to tell."""
    if cat is None or cat != cat or cat in ("", "no CI"):  # None/NaN: not judged
        return ""
    if cat == "floor":
        return " (both at the attack's floor: no difference can show)"
    if cat == "wide":
        return f" (CI wider than {100 * MAX_CI_WIDTH:.0f} points: too wide to tell)"
    return f" ({dict(zip(('higher', 'lower', 'none'), words))[cat]})"
