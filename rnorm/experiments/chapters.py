"""The chapters' titles by notebook name: the one list both :data:`rnorm.experiments.REGISTRY` and the
ledger's tables (:func:`rnorm.experiments.ledger.chapter_title`) read, so that neither imports the other."""
from __future__ import annotations

TITLES = {
    "01_distribution_shift": "Distribution shift of BatchNorm inputs (C1)",
    "02_stats_swap": "The stats swap (C2)",
    "03_robustnorm": "RobustNorm against BatchNorm (C3)",
    "04_easy_batchnorm": "Easy Batch Normalization and AdvProp (C4, C5)",
    "05_claims_ledger": "Claims ledger",
}
