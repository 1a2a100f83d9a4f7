"""Write the notebook templates in notebooks/ (outputs stripped).

The parameters cell of each notebook is generated from its parameter class in
rnorm.experiments, so the two cannot drift apart (tests/test_notebooks.py checks it too).
Run: python notebooks/make_templates.py
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import nbformat as nbf

from rnorm.experiments import NOTEBOOKS

OUT = Path(__file__).resolve().parent.parent / "notebooks"


def md(text, tags=()):
    c = nbf.v4.new_markdown_cell(text.strip("\n"))
    if tags:
        c.metadata["tags"] = list(tags)
    return c


def code(text, tags=()):
    c = nbf.v4.new_code_cell(text.strip("\n"))
    if tags:
        c.metadata["tags"] = list(tags)
    return c


def params_cell(cls):
    lines = ["# Parameters (papermill injects overrides below this cell). Cheap defaults: about a minute on a laptop CPU."]
    for f in dataclasses.fields(cls):
        v = f.default
        if isinstance(v, tuple):
            v = list(v)
        lines.append(f"{f.name} = {v!r}")
    return code("\n".join(lines), tags=["parameters", "hide-cell"])


SETUP = """
import warnings
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue
from rnorm import plots
from rnorm.experiments import common, {module}
from rnorm.results import ResultsDir

P = {module}.{cls}.from_namespace(globals())   # validates every parameter; a bad one stops here
out = ResultsDir(P.NOTEBOOK, P.results_dir)
plots.use_style()
if common.dataset_note({datasets}):
    display(Markdown(common.dataset_note({datasets})))
"""

PROVENANCE = """
out.provenance(P.as_dict(), profile=P.profile, device=res["device"], runs=res["runs"])
print(f"results written to {out.path}")
"""


def nb01():
    cls, mod = NOTEBOOKS["01_distribution_shift"]
    cells = [
        md("""
# Distribution shift of BatchNorm inputs (claim C1)

**Claim C1** (RobustNorm, arXiv 2006.11007, abstract): adversarial images shift the distribution of the inputs
of BatchNorm layers, so the population statistics estimated during training are inaccurate for them.

**Experiment.** One ResNet with BatchNorm is trained normally. For a fixed batch of test images we record, at
the input of every BN layer, the per-channel mean and variance of the batch, for the clean images and for FGSM
and PGD versions of them (crafted against the model as it is deployed: population statistics). We compare each
with the layer's population statistics, twice: the running averages (EMA) kept during training, and exact
PreciseBN statistics recomputed over training images. If adversarial batches sit far from *both*, the shift is
real; if they sit far only from the EMA, the EMA was just inaccurate.

Distances are normalized so layers compare: for the mean, $|\\mu_\\text{batch}-\\mu_\\text{pop}|/\\sigma_\\text{pop}$;
for the variance, $|\\log(\\sigma^2_\\text{batch}/\\sigma^2_\\text{pop})|$; both averaged over channels.
"""),
        params_cell(cls),
        code(SETUP.format(module="shift", cls=cls.__name__, datasets="P.dataset"), tags=["hide-input"]),
        code("""
res = shift.run(P)
out.csv("bn_input_stats", res["record"])
out.csv("shift_distance", res["distance"])
out.csv("accuracy", res["accuracy"])
summary = shift.summary(P, res["distance"])
out.json("summary", summary)
res["accuracy"].assign(accuracy=lambda d: (100 * d["accuracy"]).round(1)).rename(columns={"tag": "batch", "accuracy": "accuracy (%)"})
""", tags=["hide-input"]),
        code("""
label = common.dataset_label(P.dataset)
figs = {}
for ref, key in (("EMA population stats", "ema"), ("PreciseBN population stats", "precise")):
    d = res["distance"][res["distance"]["reference"] == ref]
    fig = plots.shift_by_layer(d, title=f"{label}, {P.arch} width {P.width}: distance from {ref}")
    out.figure(f"shift_by_layer_{key}", fig, data=d)
    glue(f"fig-shift-{key}", fig, display=False)
    figs[key] = fig
rec = res["record"][res["record"]["reference"] == "EMA population stats"]
n_layers = rec["layer_index"].nunique()
layers = sorted({(i if i >= 0 else n_layers + i) for i in P.show_layers if -n_layers <= i < n_layers})
for stat in ("mean", "var"):
    fig = plots.channel_scatter(rec, layers, statistic=stat)
    out.figure(f"channels_{stat}", fig, data=rec[rec["layer_index"].isin(layers) & (rec["statistic"] == stat)])
    glue(f"fig-channels-{stat}", fig, display=False)
""", tags=["remove-input"]),
        md("""
```{glue:figure} fig-shift-ema
:name: fig-shift-ema

Per-layer distance of each batch's statistics from the **running (EMA)** population statistics. Lines: the
clean batch and its FGSM/PGD versions. Data: `book/results/01_distribution_shift/shift_by_layer_ema.csv`.
```

```{glue:figure} fig-shift-precise
:name: fig-shift-precise

The same distances against **PreciseBN** population statistics (exact averages over training batches).
```

```{glue:figure} fig-channels-mean
:name: fig-channels-mean

Per-channel batch mean against population (EMA) mean for a few layers; points on the dashed line would mean
no shift.
```

```{glue:figure} fig-channels-var
:name: fig-channels-var

The same for the per-channel variance.
```
"""),
        code("""
strongest = max((v for v in summary.values() if v["tag"].startswith("pgd")), key=lambda v: v["ratio_adv_to_clean"])
rows = pd.DataFrame(summary.values())
rows = rows[rows["tag"] != "clean"].rename(columns={"ratio_adv_to_clean": "adv / clean distance (mean over layers)"})
for _, r in rows.iterrows():
    glue(f"ratio-{'ema' if r['reference'].startswith('EMA') else 'precise'}-{r['statistic']}-{r['tag'].replace(' ', '-').replace('/', '-')}",
         f"{r['adv / clean distance (mean over layers)']:.2f}", display=False)
pgd_tags = [t for t in rows["tag"].unique() if t.startswith("pgd")]
top = max(pgd_tags, key=lambda t: float(t.split()[-1].split("/")[0]) / float(t.split()[-1].split("/")[1]) if "/" in t else float(t.split()[-1]))
sel = rows[rows["tag"] == top].set_index(["reference", "statistic"])["adv / clean distance (mean over layers)"]
glue("c1-top-tag", top, display=False)
glue("c1-ema-mean", f"{sel[('EMA population stats', 'mean')]:.2f}", display=False)
glue("c1-ema-var", f"{sel[('EMA population stats', 'var')]:.2f}", display=False)
glue("c1-precise-mean", f"{sel[('PreciseBN population stats', 'mean')]:.2f}", display=False)
glue("c1-precise-var", f"{sel[('PreciseBN population stats', 'var')]:.2f}", display=False)
rows.round(3)
""", tags=["hide-input"]),
        md("""
## What this shows

For {glue:text}`c1-top-tag` batches, the distance of the batch mean from the population mean is on average
{glue:text}`c1-ema-mean`× the clean batch's distance against the EMA statistics and {glue:text}`c1-precise-mean`×
against PreciseBN statistics; for the variance the factors are {glue:text}`c1-ema-var`× and
{glue:text}`c1-precise-var`×. A factor near 1 means no shift beyond what any clean batch shows. The claims
ledger turns these factors into a verdict with the rule it states.
"""),
        code(PROVENANCE, tags=["remove-cell"]),
    ]
    return cells


def nb02():
    cls, _ = NOTEBOOKS["02_stats_swap"]
    return [
        md("""
# The stats swap: BatchNorm with batch statistics at inference (claim C2)

**Claim C2** (RobustNorm, abstract): replacing the population statistics of BatchNorm with statistics computed
from the inference batch makes BatchNorm's adversarial vulnerability disappear.

**Experiment.** The *same* BN weights are evaluated with `population` statistics (BN as deployed), `batch`
statistics (the swap; the reference code's `BNwoT`) and `population_mean` (running mean, batch variance:
`BNM`), beside a model without normalization trained alike. Two things decide whether the swap really helps
(Wu & Johnson, *Rethinking "Batch" in BatchNorm*, 2021):

* **Where the attack's gradient comes from.** *White-box*: the attack differentiates through the batch
  statistics it will be evaluated with. *Transfer*: the attack is crafted on the population-statistics model
  and then evaluated with batch statistics, which is what a fixed-statistics attack measures.
* **The inference batch.** Its size (8 … 512 images), and its make-up: all adversarial, or a few adversarial
  images among clean ones (the accuracy is then measured on the adversarial images only).
"""),
        params_cell(cls),
        code(SETUP.format(module="stats_swap", cls=cls.__name__, datasets="P.dataset"), tags=["hide-input"]),
        code("""
res = stats_swap.run(P)
out.csv("eps_sweep", res["eps_sweep"])
out.csv("batch_sweep", res["batch_sweep"])
summary = stats_swap.summary(P, res["eps_sweep"], res["batch_sweep"])
out.json("summary", summary)
label = common.dataset_label(P.dataset)
""", tags=["hide-input"]),
        code("""
eps_rows = res["eps_sweep"]
curves = plots.with_clean_start(eps_rows, P.attacks)
fig = plots.accuracy_vs_eps(curves, hue="condition", col="attack",
                            title=f"{label}, {P.arch} width {P.width}, inference batch {P.eval_batch}")
out.figure("accuracy_vs_eps", fig, data=curves)
glue("fig-eps", fig, display=False)
bs = res["batch_sweep"]
bs_adv = bs[(bs["attack"] == "pgd") & (bs["stats"] == "batch")]
fig2 = plots.accuracy_vs_batch_size(bs_adv, hue="gradient", style="makeup",
                                    title=f"PGD {P.sweep_eps * 255:.0f}/255 with batch statistics")
out.figure("accuracy_vs_batch_size", fig2, data=bs_adv)
glue("fig-bs", fig2, display=False)
""", tags=["remove-input"]),
        md("""
```{glue:figure} fig-eps
:name: fig-stats-swap-eps

Accuracy against ε for the same BN weights under each statistics mode, and for the model without
normalization. "(transfer)": adversarial images crafted with population statistics, evaluated with batch
statistics. Data: `book/results/02_stats_swap/accuracy_vs_eps.csv`.
```

```{glue:figure} fig-bs
:name: fig-stats-swap-bs

PGD accuracy with batch statistics against the inference batch size, for white-box and transferred attacks,
with all-adversarial batches ("all") and with only a fraction of adversarial images per batch ("mixed").
```
"""),
        code("""
def pct(key):
    v = summary.get(key)
    return "n/a" if v is None else f"{100 * v['mean']:.1f}%" + (f" ± {100 * v['std']:.1f}" if v["n_seeds"] > 1 else "")
for key in ("clean_population", "clean_batch", "clean_nonorm", "pgd_population", "pgd_batch_whitebox",
            "pgd_batch_transfer", "pgd_nonorm"):
    glue(f"c2-{key}", pct(key), display=False)
glue("c2-eps", f"{summary['pgd_eps'] * 255:.0f}/255", display=False)
table = (eps_rows.assign(accuracy=lambda d: (100 * d["accuracy"]).round(1))
         .pivot_table(index=["condition"], columns=["attack", "eps_label"], values="accuracy", aggfunc="mean"))
table
""", tags=["hide-input"]),
        md("""
## What this shows

With population statistics the BN model reaches {glue:text}`c2-clean_population` clean accuracy and
{glue:text}`c2-pgd_population` under PGD at ε = {glue:text}`c2-eps`. Evaluated with batch statistics, the same
weights reach {glue:text}`c2-clean_batch` clean; under PGD they reach {glue:text}`c2-pgd_batch_transfer` when the
attack is *transferred* from the population-statistics model, but {glue:text}`c2-pgd_batch_whitebox` when the attack
differentiates through the batch statistics. The model without normalization reaches
{glue:text}`c2-pgd_nonorm` under the same attack (clean {glue:text}`c2-clean_nonorm`).

Whether the swap "removes" the vulnerability therefore depends on the attacker: compare the transferred and the
white-box rows, and the batch-size and make-up sweep, summarized here from the results files:
"""),
        code("""display(Markdown(stats_swap.findings(summary)))""", tags=["remove-input"]),
        md("""
The claims ledger applies its stated rule to these numbers.
"""),
        code(PROVENANCE, tags=["remove-cell"]),
    ]


def nb03():
    cls, _ = NOTEBOOKS["03_robustnorm"]
    return [
        md("""
# RobustNorm against BatchNorm (claim C3)

**Claim C3** (RobustNorm, abstract): RobustNorm is more robust than BatchNorm under attack while keeping
BatchNorm's benefits (clean accuracy, training speed).

**Experiment.** The same architecture is trained alike (same data, recipe, schedule and seeds) with no
normalization, BatchNorm, and RobustNorm at each power $p$. RobustNorm normalizes per channel with the range,
$y = \\gamma (x-\\mu)/(r^p+\\epsilon) + \\beta$ with $r = \\max x - \\min x$ (see Methods). Each model is evaluated
on the same fixed test subset, with each statistics mode (`population` = reference `BN`/`RNT`, `batch` =
`BNwoT`/`RN`, `population_mean` = `BNM`/`RNM`), clean and under FGSM and PGD. Numbers are mean ± standard
deviation over seeds.
"""),
        params_cell(cls),
        code(SETUP.format(module="robustnorm", cls=cls.__name__, datasets="P.dataset"), tags=["hide-input"]),
        code("""
res = robustnorm.run(P)
out.csv("accuracy", res["accuracy"])
out.csv("history", res["history"])
summary = robustnorm.summary(P, res["accuracy"], res["history"])
out.json("summary", summary)
label = common.dataset_label(P.dataset)
tables = {s: robustnorm.table(res["accuracy"], s) for s in P.stats_modes}
for s, t in tables.items():
    out.csv(f"table_{s}", t)
display(Markdown(f"**{label}, {P.arch} width {P.width}, population statistics** (accuracy %, mean ± sd over "
                 f"{len(P.seeds)} seed(s), {P.test_n} test images)"))
tables["population"]
""", tags=["hide-input"]),
        code("""
for s in P.stats_modes:
    if s != "population":
        display(Markdown(f"**Statistics mode `{s}`**"))
        display(tables[s])
""", tags=["hide-input"]),
        code("""
curves = plots.with_clean_start(res["accuracy"], P.attacks)
pop = curves[curves["stats"] == "population"]
fig = plots.accuracy_vs_eps(pop, hue="model", col="attack", title=f"{label}, {P.arch} width {P.width}, population statistics")
out.figure("accuracy_vs_eps", fig, data=pop)
glue("fig-rn-eps", fig, display=False)
hist = res["history"]
ycol = "loss" if "loss" in hist else [c for c in hist.columns if c.startswith("loss")][0]
fig2 = plots.training_curves(hist, hue="model", y=ycol, ylabel="training loss (clean)")
out.figure("training_curves", fig2, data=hist)
glue("fig-rn-curves", fig2, display=False)
""", tags=["remove-input"]),
        md("""
```{glue:figure} fig-rn-eps
:name: fig-rn-eps

Accuracy against ε (population statistics) for each normalization, mean over seeds (bands: sd when more than
one seed). Data: `book/results/03_robustnorm/accuracy_vs_eps.csv`.
```

```{glue:figure} fig-rn-curves
:name: fig-rn-curves

Training loss per epoch for each normalization.
```
"""),
        code("""
m = summary["models"]
rows = pd.DataFrame([{"model": k, "clean (%)": 100 * v["clean_mean"], "PGD (%)": 100 * (v["pgd_mean"] or 0),
                      "training images/s": v["images_per_s"]} for k, v in m.items()]).round(1)
bn = m.get("BatchNorm")
for k, v in m.items():
    slug = k.replace(" ", "-").replace("=", "").replace(".", "")
    glue(f"c3-{slug}-clean", f"{100 * v['clean_mean']:.1f}%", display=False)
    glue(f"c3-{slug}-pgd", f"{100 * (v['pgd_mean'] or 0):.1f}%", display=False)
    if bn:
        glue(f"c3-{slug}-speed", f"{v['images_per_s'] / bn['images_per_s']:.2f}", display=False)
glue("c3-eps", f"{summary['eps'] * 255:.0f}/255", display=False)
rows
""", tags=["hide-input"]),
        md("""
## What this shows

At ε = {glue:text}`c3-eps` under PGD, BatchNorm reaches {glue:text}`c3-BatchNorm-pgd` (clean
{glue:text}`c3-BatchNorm-clean`), RobustNorm with p = 0.2 reaches {glue:text}`c3-RobustNorm-p02-pgd` (clean
{glue:text}`c3-RobustNorm-p02-clean`, training at {glue:text}`c3-RobustNorm-p02-speed`× BatchNorm's images/s), and
the network without normalization {glue:text}`c3-no-norm-pgd` (clean {glue:text}`c3-no-norm-clean`). The claims
ledger compares these against the seed spread.
"""),
        code(PROVENANCE, tags=["remove-cell"]),
    ]


def nb04():
    cls, _ = NOTEBOOKS["04_easy_batchnorm"]
    return [
        md("""
# Easy Batch Normalization and AdvProp (claims C4, C5)

**Claim C4** (EBN, arXiv 2207.08940): an auxiliary BatchNorm for *easy* examples improves both standard and
robust accuracy compared with AdvProp, in most settings of {FashionMNIST, CIFAR-10} × {ResNet-18, ResNet-50}.
**Claim C5** (AdvProp, Xie et al. 2020): adversarial examples routed through an auxiliary BN, with inference
through the main BN, improve clean accuracy over standard training.

**Our reading of EBN** (no code is public, see Methods): an easy example is PGD *targeted at the true label*
(it lowers the loss of the correct class inside the ε-ball); the loss is CE(main(x)) + CE(easy(x_easy)), and
AdvProp+EBN adds CE(adv(x_adv)). Every model is evaluated through the main branch (what is deployed); a second
table evaluates through each auxiliary branch. An ablation shares either the affine parameters or the
statistics between the EBN branches (Zhang et al. 2024).
"""),
        params_cell(cls),
        code(SETUP.format(module="ebn", cls=cls.__name__, datasets="P.datasets"), tags=["hide-input"]),
        code("""
res = ebn.run(P)
acc = res["accuracy"]
acc["dataset_label"] = acc["dataset"].map(common.dataset_label)
out.csv("accuracy", acc)
summary = ebn.summary(P, acc)
out.json("summary", summary)
main = ebn.main_table(acc)
main["dataset"] = main["dataset"].map(common.dataset_label)
out.csv("table_main_branch", main)
display(Markdown(f"**Main branch** (accuracy %, mean ± sd over {len(P.seeds)} seed(s), {P.test_n} test images, "
                 f"width {P.width}, {P.epochs} epoch(s) on {P.train_subset or 'all'} training images)"))
main
""", tags=["hide-input"]),
        code("""
aux = acc[(acc["branch"] != "main") & (acc["share"] == "none")]
if len(aux):
    aux_t = (aux.assign(acc=lambda d: 100 * d["accuracy"], column=lambda d: d["attack"] + " " + d["eps_label"].astype(str))
             .groupby(["dataset_label", "arch", "recipe", "branch", "column"])["acc"].agg(["mean", "std"]).round(1).reset_index())
    out.csv("table_aux_branches", aux_t)
    display(Markdown("**Through each auxiliary branch**"))
    display(aux_t)
abl = acc[(acc["recipe"] == "EBN") & (acc["branch"] == "main")]
if abl["share"].nunique() > 1:
    abl_t = (abl.assign(acc=lambda d: 100 * d["accuracy"], column=lambda d: d["attack"] + " " + d["eps_label"].astype(str))
             .groupby(["dataset_label", "arch", "share", "column"])["acc"].agg(["mean", "std"]).round(1).reset_index())
    out.csv("table_ablation", abl_t)
    display(Markdown("**Ablation** (EBN, main branch): `none` = separate statistics and affine parameters, "
                     "`affine` = shared γ/β, `stats` = shared statistics"))
    display(abl_t)
""", tags=["hide-input"]),
        code("""
plot_rows = acc[(acc["branch"] == "main") & (acc["share"] == "none")].copy()
plot_rows["attack"] = plot_rows.apply(lambda r: "clean" if r["attack"] == "clean" else f"{r['attack'].upper()} {r['eps_label']}", axis=1)
plot_rows["setting"] = plot_rows["dataset_label"] + " / " + plot_rows["arch"]
fig = plots.accuracy_bars(plot_rows, x="recipe", hue="attack", col="setting")
out.figure("accuracy_by_recipe", fig, data=plot_rows)
glue("fig-ebn", fig, display=False)
""", tags=["remove-input"]),
        md("""
```{glue:figure} fig-ebn
:name: fig-ebn

Clean and robust accuracy through the main branch per recipe and setting (bars: mean over seeds; error bars:
sd). Data: `book/results/04_easy_batchnorm/accuracy_by_recipe.csv`.
```
"""),
        code("""
lines = []
for s in summary["settings"]:
    r = s["recipes"]
    for name in ("standard", "AdvProp", "EBN", "AdvProp+EBN"):
        if name in r:
            lines.append({"setting": f"{common.dataset_label(s['dataset'])} / {s['arch']}", "recipe": name,
                          "clean (%)": round(100 * r[name]["clean_mean"], 1),
                          f"PGD {summary['eps'] * 255:.0f}/255 (%)": round(100 * (r[name]["pgd_mean"] or 0), 1)})
pd.DataFrame(lines)
""", tags=["hide-input"]),
        code("""
from rnorm.experiments import ledger
dead = [f"{common.dataset_label(e['dataset'])} / {e['arch']}" for e in summary["settings"] if not ledger.informative(e)]
if dead:
    display(Markdown("```{important}\\nIn " + ", ".join(dead) + " no recipe reached twice chance clean accuracy at "
                     "this scale: these models did not learn enough for a comparison, and the claims ledger leaves "
                     "these settings out of C4 and C5.\\n```"))
""", tags=["remove-input"]),
        code(PROVENANCE, tags=["remove-cell"]),
    ]


def nb05():
    return [
        md("""
# Claims ledger

Each claim of the two papers, the experiment that tests it, the measured effect, its spread over seeds and a
verdict. Verdicts are computed by `rnorm.experiments.ledger` from the `summary.json` files the notebooks wrote,
with the rule printed beside each; nothing here is typed by hand.
"""),
        code("""# Parameters
profile = None
results_dir = None""", tags=["parameters", "hide-cell"]),
        code("""
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue
from rnorm.experiments import ledger
from rnorm.results import results_root, ResultsDir

root = results_root(results_dir)
table = ledger.ledger(root)
ResultsDir("05_claims_ledger", results_dir).csv("ledger", table)
for _, r in table.iterrows():
    glue(f"verdict-{r['claim']}", r["verdict"], display=False)
    glue(f"effect-{r['claim']}", r["effect"], display=False)
pd.set_option("display.max_colwidth", None)
table[["claim", "statement", "experiment", "effect", "spread", "verdict"]].style.hide(axis="index")
""", tags=["remove-input"]),
        md("""
| claim | verdict |
| --- | --- |
| C1 distribution shift | {glue:text}`verdict-C1` |
| C2 stats swap | {glue:text}`verdict-C2` |
| C3 RobustNorm | {glue:text}`verdict-C3` |
| C4 EBN vs AdvProp | {glue:text}`verdict-C4` |
| C5 AdvProp vs standard | {glue:text}`verdict-C5` |

## The rules
"""),
        code("""
for _, r in table.iterrows():
    display(Markdown(f"**{r['claim']}** — {r['rule']}"))
""", tags=["remove-input"]),
        code("""
import json
from pathlib import Path
scale, times = [], []
for nb in ("01_distribution_shift", "02_stats_swap", "03_robustnorm", "04_easy_batchnorm"):
    f = Path(root) / nb / "provenance.json"
    if not f.exists():
        continue
    prov = json.loads(f.read_text())
    p = prov["parameters"]
    scale.append({"notebook": nb, "dataset(s)": ", ".join(p.get("datasets") or [p.get("dataset", "")]),
                  "arch(s)": ", ".join(p.get("archs") or [p.get("arch", "")]), "width": p.get("width"),
                  "epochs": p.get("epochs"), "training images": p.get("train_subset") or "all",
                  "seeds": len(p.get("seeds", [])), "test images": p.get("test_n", p.get("probe_n"))})
    times.append({"step": nb, "minutes": round(prov["wall_seconds"] / 60, 1)})
scale = pd.DataFrame(scale)
prof = profile or (json.loads((Path(root) / "01_distribution_shift" / "provenance.json").read_text())["profile"]
                   if (Path(root) / "01_distribution_shift" / "provenance.json").exists() else None)
tf = Path(root) / f"timings-{prof}.json"
timings_note = "Measured by `rnorm book` on this machine."
if tf.exists():
    t = json.loads(tf.read_text())
    timings_note = t.get("source", timings_note)
    if "pretrain" in t["seconds"]:
        times.insert(0, {"step": f"training all runs ({t['jobs']} worker(s))", "minutes": round(t["seconds"]["pretrain"] / 60, 1)})
times = pd.DataFrame(times)
if len(times):
    times.loc[len(times)] = {"step": "sum of the steps (notebooks run two at a time, so less wall time)",
                             "minutes": round(times["minutes"].sum(), 1)}
glue("scale-table", scale.style.hide(axis="index"), display=False)
glue("timings-table", times.style.hide(axis="index"), display=False)
glue("profile-name", str(prof), display=False)
glue("timings-note", timings_note, display=False)
scale.style.hide(axis="index")
""", tags=["remove-input"]),
        md("""
The table above gives the scale of every experiment in this build (profile {glue:text}`profile-name`).

These verdicts are about the claims *at the scale this book could afford* (see Limitations): small widths,
few epochs, subsets of the data, a lossy CIFAR-10 copy. A "not reproduced" here says that the effect did not
appear at this scale, not that the paper is wrong at its own scale.
"""),
    ]


def main():
    OUT.mkdir(exist_ok=True)
    makers = {"01_distribution_shift": nb01, "02_stats_swap": nb02, "03_robustnorm": nb03,
              "04_easy_batchnorm": nb04, "05_claims_ledger": nb05}
    for name, make in makers.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nb.cells = make()
        for i, c in enumerate(nb.cells):
            c["id"] = f"{name[:2]}-{i:02d}"
        nbf.write(nb, OUT / f"{name}.ipynb")
        print("wrote", OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main()
