"""The book's experiments: one module per notebook, and the one registry of notebooks.

Each module has a frozen ``*Params`` dataclass (validated notebook parameters), ``runs(params)``
(the training runs it needs, so the CLI can train them up front in parallel workers) and
``run(params)`` (train or reuse the runs, evaluate, return a :class:`rnorm.results.StudyResult`).
The notebooks (``notebooks/NN_name.md``) only call these, draw with :mod:`rnorm.plots` and
explain.

:data:`REGISTRY` lists every notebook once -- name, title, parameter class, module and the
notebooks whose results it reads -- for the CLI, the book build, the ledger and the tests.
"""
from __future__ import annotations

import dataclasses
from types import ModuleType

from .._validate import check_choice
from . import ebn, ledger, robustnorm, shift, stats_swap
from .chapters import TITLES


@dataclasses.dataclass(frozen=True)
class Notebook:
    """One notebook of the book: ``notebooks/<name>.md`` (paired with ``<name>.ipynb``)."""

    name: str
    title: str
    params: type
    module: ModuleType
    reads: tuple[str, ...] = ()  # notebooks whose results it reads: they run first

    @property
    def trains(self) -> bool:
        return not self.reads


REGISTRY: dict[str, Notebook] = {nb.name: nb for nb in (
    Notebook("01_distribution_shift", TITLES["01_distribution_shift"], shift.ShiftParams, shift),
    Notebook("02_stats_swap", TITLES["02_stats_swap"], stats_swap.StatsSwapParams, stats_swap),
    Notebook("03_robustnorm", TITLES["03_robustnorm"], robustnorm.RobustNormParams, robustnorm),
    Notebook("04_easy_batchnorm", TITLES["04_easy_batchnorm"], ebn.EBNParams, ebn),
    Notebook("05_claims_ledger", TITLES["05_claims_ledger"], ledger.LedgerParams, ledger, reads=ledger.STUDIES),
)}


def get(name: str) -> Notebook:
    """The registry entry of a notebook; an unknown name is a ConfigError listing the notebooks."""
    return REGISTRY[check_choice("notebook", name, tuple(REGISTRY))]


def params_class(notebook: str):
    return get(notebook).params


def planned_runs(notebook: str, params: dict) -> list:
    """The RunConfigs a notebook will train for the given parameters (validated)."""
    nb = get(notebook)
    return nb.module.runs(nb.params.from_dict(params))


def execution_order(names) -> list[str]:
    """``names`` with every notebook after the notebooks it reads (registry order otherwise); one
    bare name is one notebook (rnorm's rule, :func:`rnorm._validate.as_sequence`)."""
    chosen = [get(n).name for n in ((names,) if isinstance(names, str) else names)]  # names may be REGISTRY
    return [n for n in REGISTRY if n in chosen and REGISTRY[n].trains] + \
           [n for n in REGISTRY if n in chosen and not REGISTRY[n].trains]
