"""Profiles -> papermill runs -> Jupyter Book build, re-executing only what changed.

A *profile* (``profiles/<name>.yaml``) fixes the parameters of every notebook for one scale of
the study: ``smoke`` (CI), ``cpu`` (the published build, :data:`PUBLISHED_PROFILE`) and
``paper`` (the papers' scale, for a GPU). :func:`load_profile` validates it completely before
anything runs.

Up to date, like ``make``. Every executed notebook's ``provenance.json`` records a *key*
(:func:`notebook_key`): the hash of the notebook's source (``notebooks/<name>.md``), of its
resolved parameters (without the run-time ones: device, threads, progress, memory layout,
results folder) and of the code of the ``rnorm`` modules it imports, directly or not (their
syntax trees without docstrings, so a comment or a docstring changes nothing).
:func:`run_book` re-executes exactly the notebooks whose key changed or whose outputs are
missing (plus the ledger when any study re-ran), trains only the runs those need, then builds.
``rerun=True`` re-executes every notebook of the profile. A notebook that reads others (the
ledger) is also re-executed when the keys of the results it read differ from the ones it
recorded, e.g. after ``rnorm book --only 02_stats_swap``. Beside ``provenance.json``,
:func:`run_notebook` records what the key was computed from (:data:`KEY_FILE`), so
:func:`staleness` can say *why* a notebook is stale (which parameters, which modules), and
``rnorm book --dry-run`` (:func:`describe_book_plan`) says what a build would execute and train
without doing any of it.

Which checkout. Everything here works on the checkout the working directory is in
(:func:`project_root`), not on the one the package is installed from.

Where results go. ``rnorm book --profile NAME`` builds the book from that profile, in ``book/``.
:func:`run_notebook` (``rnorm run``) writes into ``book/`` only when the parameters are exactly
those of the published profile (:data:`PUBLISHED_PROFILE`); anything else goes to
``_scratch/<profile or custom>/`` unless told otherwise (:func:`default_out_dir`).

The package, one module per concept: :mod:`~rnorm.book.checkout` (which checkout),
:mod:`~rnorm.book.profiles` (profiles and parameters), :mod:`~rnorm.book.keys` (notebook keys),
:mod:`~rnorm.book.staleness` (what is stale and why), :mod:`~rnorm.book.checks` (checks before any work),
:mod:`~rnorm.book.training` (the runs the notebooks need), :mod:`~rnorm.book.execute` (one notebook through
papermill) and :mod:`~rnorm.book.build` (the whole book). Their public names are re-exported here, so
``from rnorm import book; book.load_profile(...)`` is the way to call them.
"""
from __future__ import annotations

from .build import build_book, describe_book_plan, run_book
from .checks import check_sizes, preflight
from .checkout import PROJECT_MARKERS, find_root, project_root
from .execute import default_out_dir, record_missing_key_inputs, run_notebook
from .keys import (KEY_FILE, _code_fingerprint, _hash_inputs, _notebook_code,  # the private three: for tests
                   check_sources, code_version,
                   key_inputs, notebook_key, notebook_source, recorded_key)
from .profiles import (ALL_NOTEBOOKS, PROFILE_KEYS, PUBLISHED_PROFILE, REQUIRED_PROFILE_KEYS, RUNTIME_PARAMS,
                       available_profiles, load_profile, matching_profile, notebook_params, parse_cli_value,
                       parse_overrides, profiles_dir, read_yaml, result_params)
from .staleness import recorded_inputs, stale_notebooks, stale_studies, staleness, why_stale
from .training import (check_match, copy_evaluations, planned_configs, pretrain, publish_runs, restore_evaluations,
                       run_cost, run_state, unfinished)

__all__ = [
    "ALL_NOTEBOOKS", "KEY_FILE", "PROFILE_KEYS", "PROJECT_MARKERS", "PUBLISHED_PROFILE", "REQUIRED_PROFILE_KEYS",
    "RUNTIME_PARAMS", "available_profiles", "build_book", "check_match", "check_sizes", "check_sources",
    "code_version", "copy_evaluations", "default_out_dir", "describe_book_plan", "find_root", "key_inputs",
    "load_profile", "matching_profile", "notebook_key", "notebook_params", "notebook_source", "parse_cli_value",
    "parse_overrides", "planned_configs", "preflight", "pretrain", "profiles_dir", "project_root", "publish_runs",
    "read_yaml", "record_missing_key_inputs", "recorded_inputs", "recorded_key", "restore_evaluations",
    "result_params", "run_book", "run_cost", "run_notebook", "run_state", "stale_notebooks", "stale_studies",
    "staleness", "unfinished", "why_stale",
]


def __getattr__(name):  # ``book.REPO``: the checkout of the working directory, resolved when asked for
    if name == "REPO":
        return project_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
