"""The benchmarks. Each function takes the :class:`Settings` and a shared context dict and
returns one JSON-ready entry with a numeric ``value`` (the headline number), its ``unit``, the
``target`` (text, or None for numbers that are reported, not judged) and ``met``.

Ratios are throughput ratios (>1: the first-named side is faster) unless the key says
``time_ratio``; each is the median over rounds of the per-round ratio of interleaved timings
(:mod:`benchmarks.timing`), on process CPU time when torch runs one thread and on wall time
otherwise (``clock``); ``*_wall`` / ``*_cpu`` keys hold both.

Each benchmark lives with those of its concept: :mod:`benchmarks.comparisons` (1-4, rnorm against a
reference), :mod:`benchmarks.throughput` (5, 6: peak, recipes, data pipeline), :mod:`benchmarks.scaling`
(7: dataset size, processes, threads) and :mod:`benchmarks.precision` (bf16 evaluation, 9: ``precision:
auto`` without native bf16); :data:`BENCHMARKS` names them all, in the order they run.
"""
from __future__ import annotations

from .common import trained_model  # noqa: F401
from .comparisons import multibn_split_vs_bn, pgd_wrapper_vs_torchattacks, robustnorm_vs_bn, train_step_vs_torchvision
from .precision import ISA_CAP, bf16_eval_attack, precision_auto_isa_capped  # noqa: F401
from .scaling import _linfit, scaling_dataset_size, scaling_processes, threads_two_vs_one  # noqa: F401
from .settings import RECIPE_NAMES, Settings  # noqa: F401
from .throughput import data_pipeline_share, matmul_peak, recipe_throughput


BENCHMARKS = {
    "train_step_vs_torchvision": train_step_vs_torchvision,
    "multibn_split_vs_bn": multibn_split_vs_bn,
    "robustnorm_vs_bn": robustnorm_vs_bn,
    "pgd_wrapper_vs_torchattacks": pgd_wrapper_vs_torchattacks,
    "bf16_eval_attack": bf16_eval_attack,
    "matmul_peak": matmul_peak,
    "recipe_throughput": recipe_throughput,
    "data_pipeline_share": data_pipeline_share,
    "scaling_dataset_size": scaling_dataset_size,
    "scaling_processes": scaling_processes,
    "threads_two_vs_one": threads_two_vs_one,
    "precision_auto_isa_capped": precision_auto_isa_capped,
}
