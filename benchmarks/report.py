"""The markdown report of a benchmark run: :func:`markdown` (the header with the machine and the table)
and :func:`table_rows` (benchmark, measured, target, met?), one row formatter per benchmark in
:data:`ROWS`, in the order of the table. A benchmark that failed gives an ``ERROR`` row; one that was
not run, none."""
from __future__ import annotations

#: A row before formatting: benchmark, measured, target (None: "(reported)"), met (True, False or None).
Row = tuple[str, str, "str | None", "bool | None"]


def _fmt_ratio(e: dict, key: str = "ratio") -> str:
    r = e.get(key) or {}
    if not r:
        return f"{e['value']:.3g}"
    clock = f", {r['clock']} time" if "clock" in r else ""
    return (f"{r['median']:.3f} (IQR {r['q1']:.2f}–{r['q3']:.2f}, range {r['min']:.2f}–{r['max']:.2f}, "
            f"{r['rounds']} rounds{clock})")


def _yes(met) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def _train_step(e: dict) -> list[Row]:
    ips = e["images_per_s"]
    return [("1. train step, rnorm resnet18-w16 bn / torchvision + nn.BatchNorm2d (throughput ratio)",
             f"{_fmt_ratio(e)}; {ips['rnorm']:.0f} vs {ips['torchvision']:.0f} img/s", "≥ 0.95", e["met"])]


def _multibn(e: dict) -> list[Row]:
    return [(f"2. multibn split fwd+bwd [clean; adv; easy] (3×{e['batch'] // 3}) / plain BN (throughput ratio)",
             _fmt_ratio(e), "≥ 0.90", e["met"])]


def _robustnorm(e: dict) -> list[Row]:
    prev = e["before_change"]["time_ratio"]
    rows = [("3. robustnorm / bn train step (time ratio)",
             f"{_fmt_ratio(e, 'time_ratio')}; before the change: {prev['median']:.3f}", "≤ 1.3", e["met"])]
    if "resnet20_time_ratio" in e:
        r20 = e["resnet20_time_ratio"]
        rows.append(("3b. ResNet-20 (chapter 03): robustnorm / bn train step (time ratio)",
                     "; ".join(f"p={k.split('_p')[1]}: {v['median']:.3f}" for k, v in r20.items()), None, None))
    return rows


def _pgd(e: dict) -> list[Row]:
    acc = e["adversarial_accuracy_pct"]
    return [(f"4. make_attack('pgd') / torchattacks.PGD, {e['steps']} steps (throughput ratio; adv. acc.)",
             f"{_fmt_ratio(e)}; adv. acc. {acc['make_attack']:.1f} % vs {acc['torchattacks']:.1f} %",
             f"≥ 1.0 within noise (±{e['noise_tolerance']:.2f}), same adv. acc.", e["met"])]


def _peak(e: dict) -> list[Row]:
    mm, bst = e["mm_peak_gflops"], e["best_gflops"]
    return [(f"5. peak GFLOP/s, {e['threads']} thread(s): torch.mm {e['mm_n']}²; 3×3 conv (oneDNN)",
             f"mm fp32 {mm['fp32']:.0f}, bf16 {mm['bf16']:.0f}; conv fp32 {bst['conv_fp32']:.0f}, "
             f"bf16 {bst['conv_bf16']:.0f}", None, None)]


def _recipes(e: dict) -> list[Row]:
    rows = []
    for r, d in e["recipes"].items():
        f, h = d["fp32"], d["bf16_cl"]
        rows.append((f"5. recipe {r}: one epoch ({e['epoch_images']} img, train_steps={e['train_steps']}); "
                     "% of best peak (of torch.mm peak)",
                     f"fp32 {f['images_per_s']:.0f} img/s, {f['gflops_per_s']:.0f} GFLOP/s = "
                     f"{100 * f['fraction_of_peak']:.0f} % ({100 * f['fraction_of_mm_peak']:.0f} %); "
                     f"bf16+CL {h['images_per_s']:.0f} img/s, {h['gflops_per_s']:.0f} GFLOP/s = "
                     f"{100 * h['fraction_of_peak']:.0f} % ({100 * h['fraction_of_mm_peak']:.0f} %); "
                     f"bf16/fp32 {d['bf16_over_fp32']['median']:.2f}", None, None))
    return rows


def _data_share(e: dict) -> list[Row]:
    return [("6. data pipeline (rnorm.data.batches incl. crop+flip) share of an epoch",
             f"{e['value']:.2f} %", "< 5 %", e["met"])]


def _dataset_size(e: dict) -> list[Row]:
    return [(f"7. epoch time vs training-set size ({', '.join(map(str, e['sizes']))} images)",
             f"R² = {e['value']:.4f}; {e['slope_ms_per_image']:.2f} ms/image + {e['intercept_s']:.2f} s",
             None, None)]


def _processes(e: dict) -> list[Row]:
    ips = e["images_per_s"]
    return [("7. two 1-thread processes / one 2-thread process, same jobs (throughput ratio)",
             f"{_fmt_ratio(e)}; {ips['two_1thread_processes']:.0f} vs {ips['one_2thread_process']:.0f} img/s; "
             f"vs the 2-thread process with OMP_WAIT_POLICY=PASSIVE: {e['ratio_vs_passive']['median']:.2f} "
             f"({ips['one_2thread_process_passive']:.0f} img/s)", None, None)]


def _threads(e: dict) -> list[Row]:
    sec = e["seconds"]
    return [(f"7. train step with {e['threads']} threads / 1 thread, same process (throughput ratio)",
             f"{_fmt_ratio(e)}; " + ", ".join(f"{k.replace('_', ' ')} {1000 * v:.0f} ms" for k, v in sec.items()),
             None, None)]


def _isa_capped(e: dict) -> list[Row]:
    ips = e["images_per_s"]
    cap = "capped at AVX2" if e["cap_in_effect"] else f"cap not in effect: {e['cpu_capability']}"
    return [(f"9. `precision: auto` without native bf16 (kernels {cap}, bf16 flags hidden): resolved run / "
             "plain fp32 (throughput ratio)",
             f"resolves to **{e['precision_resolved']}**, channels_last {e['channels_last_resolved']}; "
             f"{_fmt_ratio(e)}; {ips['auto']:.0f} vs {ips['fp32']:.0f} img/s; forced bf16+CL {ips['bf16_cl']:.0f} "
             f"img/s ({e['bf16_over_fp32']['median']:.2f}× fp32)", "≥ 0.90 and fp32", e["met"])]


def _bf16_eval(e: dict) -> list[Row]:
    parts = [f"{r['eps']}: fp32 {r['robust_acc_fp32_pct']:.1f} % vs bf16 {r['robust_acc_bf16_pct']:.1f} %"
             for r in e["per_eps"]]
    return [(f"bf16 vs fp32 evaluation attack (PGD, {e['test_images']} test images): robust accuracy",
             "; ".join(parts) + f" (max |Δ| {e['value']:.1f} pt)", "|Δ| ≤ 0.5 pt", e["met"])]


#: Each benchmark's rows of the table, in the table's order (not the order they run in).
ROWS = {
    "train_step_vs_torchvision": _train_step,
    "multibn_split_vs_bn": _multibn,
    "robustnorm_vs_bn": _robustnorm,
    "pgd_wrapper_vs_torchattacks": _pgd,
    "matmul_peak": _peak,
    "recipe_throughput": _recipes,
    "data_pipeline_share": _data_share,
    "scaling_dataset_size": _dataset_size,
    "scaling_processes": _processes,
    "threads_two_vs_one": _threads,
    "precision_auto_isa_capped": _isa_capped,
    "bf16_eval_attack": _bf16_eval,
}


def table_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, target, met?) rows of the markdown table."""
    b = results["benchmarks"]
    rows = []
    for name, fmt in ROWS.items():
        if name not in b:
            continue
        e = b[name]
        cells = [(name, f"ERROR: {e['error'].splitlines()[-1][:120]}", "", False)] if "error" in e else fmt(e)
        rows += [(what, measured, target or "(reported)", _yes(met)) for what, measured, target, met in cells]
    return rows


def markdown(results: dict) -> str:
    """The report: the machine, threads and load of the run, then the table of :func:`table_rows`."""
    env = results["environment"]
    lines = [
        f"# rnorm benchmarks — {env['date'][:10]}, {results['machine']} ({results['mode']} mode)",
        "",
        f"torch {env['torch_version']}, {env['threads']} thread(s) ({env['threads_reason']}), CPU: {env['cpu_model']} "
        f"({env['cpu_count']} cores, {env['cpu_capability']}, native bf16: "
        f"{'yes' if env.get('native_bf16') else 'no'}; `precision: auto` resolves to "
        f"**{env.get('precision_auto_resolves_to', 'n/a')}** here); load average before "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in env.get('loadavg_after', []))}"
        f"{' — the machine was shared with other jobs' if env['loaded_before'] else ''}. "
        f"Total {results['total_seconds']:.0f} s. Ratios are medians of per-round ratios of "
        "interleaved timings (A, B, B, A, ...); with one thread on process CPU time (other jobs' "
        "time slices left out), else on wall time; the JSON has both.",
        "",
        "| benchmark | measured | target | met? |",
        "| --- | --- | --- | --- |",
    ]
    for row in table_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    lines.append("")
    return "\n".join(lines)
