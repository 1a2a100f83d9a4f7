"""What the claims' verdicts rest on: the result frames (:class:`Results`) and, read from them, the
evidence a part is judged on -- per-image correctness (:func:`per_image`, the worst case over attacks),
one value per seed, the effect of one training over another (paired over seeds, and over images where
the frames carry per-image bits), C1's shift ratios, C3's epochs to a target and C4's judged ε.

Nothing here decides a verdict: :mod:`rnorm.experiments.judge` judges parts and combines them by
the claims' spec (:mod:`rnorm.experiments.claims`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats
from ..results import read_csv_exact
from . import protocol
from .protocol import _select


# --- reading results -----------------------------------------------------------------------------

class Results:
    """The frames under a results root: ``frame(notebook, name)`` reads ``<root>/<notebook>/<name>.csv``
    exactly (None when absent). ``Results.of(notebook, frames)`` wraps one study's frames in memory,
    so a notebook can state its own verdict with the ledger's rule before anything is written."""

    def __init__(self, root=None, skip=()):
        self.root = None if root is None else Path(root)
        self._cache = {}
        self.skip = frozenset(skip)

    @classmethod
    def of(cls, notebook: str, frames: dict) -> "Results":
        r = cls(None)
        r._cache.update({(notebook, k): v for k, v in frames.items()})
        return r

    def frame(self, notebook: str, name: str) -> pd.DataFrame | None:
        key = (notebook, name)
        if notebook in self.skip or (key not in self._cache and self.root is None):
            return None
        if key not in self._cache:
            f = self.root / notebook / f"{name}.csv"
            self._cache[key] = read_csv_exact(f, keep_default_na=False, na_values=[""]) if f.is_file() else None
        return self._cache[key]


# --- per image and per seed ----------------------------------------------------------------------

def per_image(rows: pd.DataFrame, seeds) -> np.ndarray | None:
    """Per-image correctness (models x images) of one row per seed, the images each row scored.

    Several rows for one seed (e.g. PGD and APGD) are combined per image as the worst case: correct
    only if correct under every attack, on the images every row scored (a row over the first
    ``apgd_n`` images of the test subset restricts the comparison to those). None if a seed has no
    row or the rows lack per-image bits.
    """
    from ..evaluate import unpack_bits

    def bits(text: str, n: int) -> np.ndarray:  # padded with False (not scored) to n
        own = len(bytes.fromhex(text[5:])) * 8  # "bits:" + hex
        return np.pad(unpack_bits(text, own), (0, n - own))

    out = []
    for s in seeds:
        sub = rows[rows["seed"] == s]
        if sub.empty or "correct_bits" not in sub or not all(isinstance(b, str) and b for b in sub["correct_bits"]):
            return None
        n = max(len(bytes.fromhex(b[5:])) * 8 for b in sub["scored_bits"])
        scored = np.logical_and.reduce([bits(b, n) for b in sub["scored_bits"]])
        correct = np.logical_and.reduce([bits(b, n) for b in sub["correct_bits"]])
        out.append((scored, correct))
    n = max(len(sc) for sc, _ in out)
    out = [(np.pad(sc, (0, n - len(sc))), np.pad(c, (0, n - len(c)))) for sc, c in out]
    common = np.logical_and.reduce([sc for sc, _ in out])
    return np.stack([c[common] for _, c in out])


def worst_case(rows: pd.DataFrame, seeds) -> list[float] | None:
    """Robust accuracy per seed under the worse of the rows' attacks *per image* (an image counts only if
    it survives every attack), on the images they all scored; the minimum of the rows' accuracies where
    the rows carry no per-image bits (results of an older layout). None if a seed has no row."""
    m = per_image(rows, seeds)
    if m is None:
        return seed_values(rows, seeds)
    return [float(v) for v in m.mean(axis=1)]


def trainings_effect(rows_a: pd.DataFrame, rows_b: pd.DataFrame, seeds) -> stats.Effect:
    """``b`` minus ``a`` for two trainings compared seed by seed, per image the worst case of each side's
    attacks: :func:`rnorm.stats.paired_trainings` where both sides carry per-image results on the same
    images, else the Student-t interval over the seeds' accuracies (:func:`rnorm.stats.paired_seeds`)."""
    ma, mb = per_image(rows_a, seeds), per_image(rows_b, seeds)
    if ma is not None and mb is not None and ma.shape == mb.shape:
        return stats.paired_trainings(ma, mb)
    return stats.paired_seeds(worst_case(rows_a, seeds), worst_case(rows_b, seeds))


def seed_values(frame: pd.DataFrame, seeds, value: str = "accuracy") -> list[float] | None:
    """One value per seed (the minimum if several rows, i.e. the strongest attack); None if one is missing."""
    out = []
    for s in seeds:
        v = frame.loc[frame["seed"] == s, value]
        if v.empty:
            return None
        out.append(float(v.min()))
    return out


def full_test_bits(models: pd.DataFrame, seeds) -> np.ndarray | None:
    """Per-image clean correctness on the full test set (seeds x images) from a models frame's
    ``clean_full_correct``/``clean_full_scored`` bits (:func:`rnorm.experiments.common.models_frame`
    with ``per_image``); None where a seed lacks them (a build evaluated without per-image bits)."""
    if "clean_full_correct" not in models:
        return None
    rows = models.rename(columns={"clean_full_correct": "correct_bits", "clean_full_scored": "scored_bits"})
    return per_image(rows[["seed", "correct_bits", "scored_bits"]], seeds)


def clean_effect(a: list, b: list, bits_a: np.ndarray | None, bits_b: np.ndarray | None) -> stats.Effect:
    """Clean accuracy ``b`` minus ``a`` over seeds: with per-image bits of both sides on the same images,
    :func:`rnorm.stats.paired_trainings` (the wider of Student-t over seeds and the hierarchical bootstrap
    over seeds x images); else the Student-t interval over the seeds' accuracies."""
    if bits_a is not None and bits_b is not None and bits_a.shape == bits_b.shape:
        return stats.paired_trainings(bits_a, bits_b)
    return stats.paired_seeds(a, b)


def robust_rows(acc: pd.DataFrame) -> pd.DataFrame:
    """Robust rows that may enter a verdict: PGD and APGD/AutoAttack (not FGSM or noise)."""
    return acc[acc["attack"].isin(("pgd",) + protocol.STRONG_ATTACKS)]


# --- per claim -------------------------------------------------------------------------------------

def shift_effect(effects: pd.DataFrame, eps: float, statistic: str) -> stats.Effect | None:
    e = _select(effects, eps=float(eps), attack="pgd", control="noise_sign", reference="precise", statistic=statistic)
    if e.empty:
        return None
    return stats.Effect(float(e["ratio"].iloc[0]), float(e["low"].iloc[0]), float(e["high"].iloc[0]),
                        int(e["n_images"].iloc[0]), str(e["paired_over"].iloc[0]), unit="ratio")


def epochs_to(history: pd.DataFrame, target: float) -> float:
    """The first epoch (``history``'s epochs count from 1) at which ``test_acc`` reaches ``target``;
    inf if never."""
    hit = history[history["test_acc"] >= target]
    return float(hit["epoch"].min()) if len(hit) else math.inf


def judged_ebn_eps(models: pd.DataFrame | None, dataset: str, arch: str) -> list[float]:
    """The ε at which C4 is judged in a setting: the training ε of its AdvProp/EBN models (from the
    models frame) and the dataset's standard ε (:data:`protocol.EBN_STANDARD_EPS`)."""
    out = []
    if models is not None and "train_eps" in models:
        m = _select(models, dataset=dataset, arch=arch)
        out += sorted(set(m.loc[m["recipe"].isin(("advprop", "ebn", "advprop_ebn")), "train_eps"].astype(float)))
    std = protocol.EBN_STANDARD_EPS.get(dataset)
    return out + ([std] if std is not None and all(abs(std - e) > 1e-9 for e in out) else [])
