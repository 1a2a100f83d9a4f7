"""What a notebook computes: :class:`StudyResult`, and where results go (:func:`results_root`).

Each ``rnorm.experiments.<study>.run(params)`` returns one :class:`StudyResult`: tidy frames, a
summary frame (mean and spread over seeds, built with :func:`rnorm.evaluate.summarize`), the
headline numbers the claims ledger reads, the training runs used and the device. The notebook
adds the figures it draws (:meth:`StudyResult.add_figure`) and saves it with
:class:`rnorm.provenance.ResultsDir` (the book pipeline's layer: it records the notebook's key and
profile), which writes everything into ``book/results/<notebook>/`` all or nothing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd

from ._io import read_csv_exact  # noqa: F401 - re-exported: rnorm.results.read_csv_exact

RESULTS_ROOT_ENV = "RNORM_RESULTS"


def results_root(root=None) -> Path:
    """``root``, else ``$RNORM_RESULTS``, else ``book/results`` under the current directory."""
    return Path(root or os.environ.get(RESULTS_ROOT_ENV) or "book/results")


@dataclasses.dataclass
class StudyResult:
    """Everything one notebook computed.

    ``frames``: tidy data by file name (``<name>.csv``); ``summary``: one row per condition with
    ``mean``, ``std``, ``n_seeds`` (``summary.csv``); ``headline``: the JSON-able numbers the
    ledger reads (``summary.json``); ``runs``: :class:`rnorm.runs.Run` objects; ``device``: where
    it ran; ``figures``: ``name -> (figure, data frame)``, filled by the notebook.
    """

    notebook: str
    params: object
    frames: dict
    summary: pd.DataFrame
    headline: dict
    runs: list
    device: str
    figures: dict = dataclasses.field(default_factory=dict)

    def add_figure(self, name: str, fig, data: pd.DataFrame):
        """Register a figure to be saved with the data it was drawn from; returns ``fig``."""
        if not name or "/" in name or name in self.frames:
            raise ValueError(f"figure name {name!r} must be a plain file name distinct from the frames.")
        self.figures[name] = (fig, data)
        return fig

    def run_records(self) -> list[dict]:
        return [{"path": r.path.name, "config": r.config.to_dict(), "environment": r.environment}
                for r in self.runs]


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["StudyResult", "results_root", "RESULTS_ROOT_ENV", "read_json", "read_csv_exact"]
