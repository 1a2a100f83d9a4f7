"""The book's figures: one colour per label in every figure, legends that say what their entries are and sit
below the axes, chapter 1's small multiples; and the tables' number formatting (rnorm.tables)."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
from matplotlib.colors import to_hex  # noqa: E402

from rnorm import plots, tables  # noqa: E402


def _eps_rows(conditions, eps=(1 / 255, 2 / 255, 4 / 255), seeds=(0, 1)):
    return pd.DataFrame([dict(condition=c, attack="pgd", eps=e, seed=s, accuracy=0.5 - 0.1 * i)
                         for i, c in enumerate(conditions) for e in eps for s in seeds])


def _line_colours(fig) -> dict:
    """Legend entry -> colour, read from the figure's one legend."""
    legend = fig.legends[0]
    return {t.get_text(): to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)
            if hasattr(h, "get_color")}


def test_the_same_label_has_the_same_colour_in_two_figures():
    """BatchNorm with population statistics is blue in chapter 2's figure with four conditions and in
    chapter 1's with two, in either order; "no norm" keeps its colour when it is the only level."""
    four = ["BatchNorm, population stats", "BatchNorm, batch stats", "BatchNorm, batch stats (transfer)", "no norm"]
    a = _line_colours(plots.accuracy_vs_eps(_eps_rows(four), hue="condition", col=None, log_eps=True))
    b = _line_colours(plots.accuracy_vs_eps(_eps_rows(four[2::-2]), hue="condition", col=None, log_eps=True))
    assert set(b) == {"BatchNorm, batch stats (transfer)", "BatchNorm, population stats"}
    for name in b:
        assert a[name] == b[name] == plots.COLOURS[name].lower()
    assert len(set(a.values())) == 4
    c = _line_colours(plots.accuracy_vs_eps(_eps_rows(["no norm"]), hue="condition", col=None))
    assert c["no norm"] == a["no norm"]
    # the models of chapter 3 take the same colours in its training curves
    hist = pd.DataFrame([dict(model=m, epoch=e, loss=1.0 / (e + 1)) for m in ("RobustNorm p=0.2", "BatchNorm")
                         for e in range(3)])
    d = _line_colours(plots.training_curves(hist, hue="model"))
    assert d == {m: plots.COLOURS[m].lower() for m in ("RobustNorm p=0.2", "BatchNorm")}


def test_the_colour_table_is_colour_blind_safe_and_distinct_within_each_group():
    okabe_ito = {"#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#000000", "#f0e442", "#999999"}
    assert {c.lower() for c in plots.PALETTE} == okabe_ito
    assert "#d55e00" not in {c.lower() for c in plots.PALETTE}  # vermilion: too close to the orange
    for group, colours in plots.COLOUR_GROUPS.items():
        if group == "statistics at inference":  # the ", (white-box)" spellings repeat their plain entry
            colours = {k: v for k, v in colours.items() if "(white-box)" not in k}
            shown_together = ["BatchNorm, population stats", "BatchNorm, batch stats",
                              "BatchNorm, batch stats (transfer)", "BatchNorm, PreciseBN population stats"]
            colours = {k: colours[k] for k in shown_together}
        assert len(set(colours.values())) == len(colours), group
    for group in plots.COLOUR_GROUPS.values():
        for name, colour in group.items():
            assert plots.COLOURS[name] == colour  # a label in two groups has one colour


def test_unknown_labels_take_the_palettes_free_colours_in_order():
    pal = plots.palette(["clean", "PGD 2/255", "PGD 8/255"])
    assert pal["clean"] == plots.COLOURS["clean"]
    free = [c for c in plots.PALETTE if c != plots.COLOURS["clean"]]
    assert [pal["PGD 2/255"], pal["PGD 8/255"]] == free[:2]
    assert len(set(plots.palette([f"run {i}" for i in range(12)]).values())) == len(plots.PALETTE)


def test_legends_say_what_their_entries_are_and_sit_below_the_axes():
    fig = plots.accuracy_vs_eps(_eps_rows(["BatchNorm, population stats", "no norm"]), hue="condition", col=None)
    legend = fig.legends[0]
    assert legend.get_title().get_text() == "model, statistics at inference"
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert box.y1 <= min(ax.get_window_extent().y0 for ax in fig.axes) + 1e-6  # below every axes
    assert legend._ncols == 1  # one column under a single panel with long labels
    curve = _eps_rows(["standard", "EBN"]).rename(columns={"condition": "curve"})
    fig = plots.accuracy_vs_eps(curve, hue="curve", col=None, legend="recipe")
    assert fig.legends[0].get_title().get_text() == "recipe"
    for title in ("curve", "condition"):
        assert title not in plots.LEGEND_TITLES.values()


def test_attack_convergence_labels_a_model_without_normalization_no_norm():
    rows = [dict(norm=n, stats=s, attack="pgd", steps=k, restarts=r, accuracy=0.4)
            for n, s in (("bn", "population"), ("bn", "batch"), ("none", "population")) for k in (10, 20) for r in (1, 3)]
    rows += [dict(norm="none", stats="population", attack="apgd", steps=100, restarts=1, accuracy=0.3)]
    fig = plots.attack_convergence(pd.DataFrame(rows))
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "no norm" in texts and "APGD-CE, no norm" in texts
    assert not any("no norm," in t for t in texts) and "condition" not in texts and "PGD restarts" in texts


def _layer_rows():
    rows = []
    for layer in range(4):
        rows.append(dict(layer_index=layer, statistic="mean", distance=0.01, attack="clean", eps=0.0))
        for attack in ("fgsm", "pgd", "noise_sign"):
            for e in (0.5 / 255, 1 / 255, 8 / 255):
                rows.append(dict(layer_index=layer, statistic="mean", distance=e, attack=attack, eps=e))
    return pd.DataFrame(rows)


def test_shift_by_layer_draws_a_few_eps_as_small_multiples_with_one_colour_per_kind_of_batch():
    d = _layer_rows()
    fig = plots.shift_by_layer(d, eps=[1 / 255, 8 / 255])
    assert len(fig.axes) == 2  # one row per ε, one column per statistic
    for ax in fig.axes:
        drawn = [line for line in ax.get_lines() if len(line.get_xdata())]  # not seaborn's legend proxies
        assert len(drawn) == 4  # clean, FGSM, PGD, sign noise: the clean batch in every row
    colours = _line_colours(fig)
    assert colours == {k: plots.COLOURS[k].lower() for k in ("clean", "FGSM", "PGD", "sign noise")}
    assert "ε = 1/255" in fig.axes[0].get_ylabel() and "ε = 8/255" in fig.axes[1].get_ylabel()
    assert len(plots.shift_by_layer(d).axes) == 2  # default: the smallest and the largest ε
    assert "ε = 1/255" in plots.shift_by_layer(d, eps=[1 / 255, 3 / 255]).axes[0].get_ylabel()  # 3/255: not there
    assert len(plots.shift_by_layer(d, eps=[3 / 255]).axes) == 2  # none there: the default


def test_channel_scatter_rows_are_eps_and_columns_layers():
    d = _layer_rows().rename(columns={"distance": "value"}).assign(running=0.0, layer="bn", channel=0)
    fig = plots.channel_scatter(d, [0, 2], eps=[1 / 255])
    assert len(fig.axes) == 2 and fig.legends[0].get_title().get_text() == "batch"


@pytest.mark.parametrize("value, decimals, signed, text", [
    (87.0, 1, False, "87.0"),
    (87.000000, 1, False, "87.0"),
    (float("nan"), 1, False, "–"),
    (None, 1, False, "–"),
    (pd.NA, 1, False, "–"),
    (-0.0, 1, False, "0.0"),
    (-0.04, 1, False, "0.0"),  # rounds to zero: no sign
    (-0.04, 1, True, "0.0"),
    (0.34, 1, True, "+0.3"),
    (-0.36, 1, True, "-0.4"),
    (True, 1, False, "yes"),
    (np.bool_(False), 1, False, "no"),
    (3, 1, False, "3"),
    (np.int64(128), 1, False, "128"),
    (0.05, None, False, "0.05"),
    (1e-5, None, False, "1e-05"),
    (2.345, 2, False, "2.35"),  # not 2.34: 2.345 is stored a little above
    ("BatchNorm", 1, False, "BatchNorm"),
])
def test_number_formats_cells_for_people(value, decimals, signed, text):
    assert tables.number(value, decimals, signed=signed) == text


def test_show_formats_every_cell_and_hides_the_index():
    frame = pd.DataFrame({"model": ["BatchNorm", "no norm"], "clean": [87.0, math.nan], "chosen": [True, False],
                          "lr": [0.05, 0.1], "seed": [0, 1]})
    shown = tables.format_frame(frame, {"lr": None})
    assert shown.to_dict("list") == {"model": ["BatchNorm", "no norm"], "clean": ["87.0", "–"], "chosen": ["yes", "no"],
                                     "lr": ["0.05", "0.1"], "seed": ["0", "1"]}
    html = tables.show(frame, {"lr": None}).to_html()
    for raw in ("87.000000", "NaN", "True", "False", "nan"):
        assert raw not in html
    assert "87.0" in html and "–" in html and "yes" in html


def test_lr_sweep_curves_are_small_multiples_with_one_colour_per_rate_and_the_chosen_rate_thick():
    import matplotlib.pyplot
    rows = [dict(model=m, lr=lr, epoch=e, val=50 + e + 10 * lr)
            for m, rates in (("BatchNorm", (0.1, 0.4)), ("RobustNorm p=1", (0.05, 0.1, 0.4))) for lr in rates
            for e in (1, 2, 3)]
    fig = plots.lr_sweep_curves(pd.DataFrame(rows), chosen={"BatchNorm": 0.4, "RobustNorm p=1": 0.1})
    bn, rn = fig.axes[:2]
    assert bn.get_title() == "BatchNorm (chosen: 0.4)" and rn.get_title() == "RobustNorm p=1 (chosen: 0.1)"
    colour = {ax.get_title(): {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()}
              for ax in (bn, rn)}
    assert colour[bn.get_title()]["0.1"] == colour[rn.get_title()]["0.1"]       # a rate, one colour
    assert len(set(colour[rn.get_title()].values())) == 3                         # rates told apart
    width = {line.get_label(): line.get_linewidth() for line in rn.get_lines()}
    assert width["0.1"] > width["0.05"] == width["0.4"]                          # the chosen rate stands out
    legend = fig.legends[0]
    assert legend.get_title().get_text() == "learning rate"
    assert [t.get_text() for t in legend.get_texts()] == ["0.05", "0.1", "0.4"]  # every rate, though the first
    matplotlib.pyplot.close(fig)                                                  # panel lacks 0.05


def test_every_method_has_one_colour_of_its_own_in_bars_and_lines_alike():
    """No two methods (normalizations, recipes) share a colour anywhere in the book, BatchNorm and standard
    training (BatchNorm trained the standard way) the one exception; a recipe's bar has exactly its line's
    colour (seaborn would desaturate bars), and the panels are titled by their value alone."""
    methods = {name: colour.lower() for group in plots.METHOD_GROUPS for name, colour in plots.COLOUR_GROUPS[group].items()}
    assert methods["standard"] == methods["BatchNorm"]
    rest = {k: v for k, v in methods.items() if k != "standard"}
    assert len(set(rest.values())) == len(rest), rest
    assert methods["EBN"] != methods["RobustNorm p=1"] and methods["AdvProp"] != methods["RobustNorm p=0.2"]
    recipes = ["standard", "AdvProp", "EBN", "AdvProp+EBN"]
    rows = pd.DataFrame([dict(setting=s, attack=a, recipe=r, seed=k, accuracy=0.5)
                         for s in ("FashionMNIST / ResNet-18", "CIFAR-10 (lossy JPEG copy) / ResNet-18")
                         for a in ("clean", "APGD-CE 2/255") for r in recipes for k in (0, 1)])
    fig = plots.accuracy_bars(rows, x="attack", hue="recipe", col="setting")
    bars = {to_hex(p.get_facecolor()) for ax in fig.axes for p in ax.patches if p.get_height() > 0}
    assert bars == {plots.COLOURS[r].lower() for r in recipes}
    lines = _line_colours(plots.accuracy_vs_eps(rows[rows["attack"] != "clean"].assign(eps=2 / 255, curve=rows["recipe"]),
                                                hue="curve", col="setting", legend="recipe"))
    assert lines == {r: plots.COLOURS[r].lower() for r in recipes}
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["clean", "APGD-CE\n2/255"]
    assert [ax.get_title() for ax in fig.axes] == ["FashionMNIST / ResNet-18", "CIFAR-10 (lossy JPEG copy) /\nResNet-18"]
    assert plots.network_label("resnet20", 16) == "ResNet-20, width 16"
