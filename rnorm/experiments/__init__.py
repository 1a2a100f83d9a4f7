"""The book's experiments: one module per notebook, plus the claims ledger.

Each module has a frozen ``*Params`` dataclass (validated notebook parameters), ``runs(params)``
(the training runs it needs, so the CLI can train them up front in parallel workers) and
``run(params)`` (train or reuse the runs, evaluate, return tidy frames). The notebooks only call
these, draw with :mod:`rnorm.plots` and explain.
"""
from __future__ import annotations

from . import ebn, robustnorm, shift, stats_swap

NOTEBOOKS = {
    "01_distribution_shift": (shift.ShiftParams, shift),
    "02_stats_swap": (stats_swap.StatsSwapParams, stats_swap),
    "03_robustnorm": (robustnorm.RobustNormParams, robustnorm),
    "04_easy_batchnorm": (ebn.EBNParams, ebn),
}
LEDGER_NOTEBOOK = "05_claims_ledger"


def params_class(notebook: str):
    from .._validate import check_choice
    return NOTEBOOKS[check_choice("notebook", notebook, tuple(NOTEBOOKS))][0]


def planned_runs(notebook: str, params: dict) -> list:
    """The RunConfigs a notebook will train for the given parameters (validated)."""
    cls, module = NOTEBOOKS[notebook]
    return module.runs(cls.from_dict(params))
