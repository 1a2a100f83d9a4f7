"""Figures of the book: one function per figure kind, each taking a tidy frame.

Every function returns a matplotlib ``Figure``; :func:`save` writes it as PDF, SVG and PNG next
to the CSV it was drawn from, so a reader can lift the figure, or redraw it from the data with
the same function. One style for the whole book (:func:`use_style`): the Okabe–Ito colour-blind-safe
palette, one colour per model, statistics mode, recipe or kind of batch wherever it appears
(:data:`COLOURS`, :func:`palette`), labelled axes with units, legends below the axes (so a figure keeps
its width on a phone), vector output with text kept as text.

The style (labels, colours, legends) is in :mod:`rnorm.plots.style`, the figures in
:mod:`rnorm.plots.figures`, the files in :mod:`rnorm.plots.output`; every name is importable from
``rnorm.plots`` as well.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))  # before pyplot is imported (by the modules below)

from .figures import (_batches_at, _shown_eps, accuracy_bars, accuracy_vs_batch_size,  # noqa: E402,F401
                      accuracy_vs_eps, attack_convergence, channel_scatter, lr_sweep_curves, matched_clean, note_figure,
                      ratio_vs_eps, shift_by_layer, training_curves, with_clean_start)
from .output import FORMATS, _metadata, glue_figure, save  # noqa: E402,F401
from .style import (_C, COLOUR_GROUPS, COLOURS, LABELS, LEGEND_TITLES, METHOD_GROUPS,  # noqa: E402,F401
                    OKABE_ITO, PALETTE, SHARE_LABELS,
                    _one_legend, attack_label, condition_label, eps_label, label, legend_title, model_label,
                    network_label, palette, use_style)
