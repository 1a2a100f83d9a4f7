"""One rule for every parameter that takes a sequence (rnorm._validate.as_sequence): a bare string is
one element, never split into its characters; a set (no fixed order) or a mapping is refused.

Each public place that iterated a sequence parameter is tested with a bare string here.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn as nn

from rnorm import book, norms
from rnorm._validate import ConfigError, as_sequence
from rnorm.evaluate import EvalGrid, summarize
from rnorm.models import Normalize, resnet20
from rnorm.train import Recipe


@pytest.mark.parametrize("value,expected", [
    ("adv", ("adv",)), (b"adv", (b"adv",)), (5, (5,)), (None, (None,)), (torch.tensor(0.5), None),
    (["a", "b"], ("a", "b")), (("a",), ("a",)), (range(2), (0, 1)), ((c for c in ["x", "y"]), ("x", "y")),
])
def test_as_sequence_reads_a_bare_string_or_single_value_as_one_element(value, expected):
    out = as_sequence("p", value)
    assert isinstance(out, tuple)
    if expected is None:  # a 0-d tensor is one value
        assert len(out) == 1 and out[0] is value
    else:
        assert out == expected


@pytest.mark.parametrize("value,pattern", [({"adv"}, r"p=\{'adv'\} is a set, whose order is not fixed"),
                                           (frozenset({1}), "is a set"),
                                           ({"adv": 1}, r"p=\{'adv': 1\} is a mapping"),
                                           ((), r"p=\(\) is empty"), ([], r"p=\[\] is empty")])
def test_as_sequence_refuses_sets_mappings_and_empty(value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        as_sequence("p", value)
    if not value and not isinstance(value, (set, frozenset, dict)):
        assert as_sequence("p", value, nonempty=False) == ()


def test_multibatchnorm_takes_one_bare_branch_name():
    m = norms.MultiBatchNorm2d(4, branches="adv")
    assert m.branches == ("main", "adv") and list(m.aux) == ["adv"]
    assert norms.make_norm("multibn", 4, branches="easy").branches == ("main", "easy")
    model = norms.convert_norms(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), "multibn", branches="adv")
    assert norms.branches_of(model) == ("main", "adv")
    with pytest.raises(ConfigError, match="is a set"):
        norms.MultiBatchNorm2d(4, branches={"adv", "easy"})


def test_evalgrid_reads_each_bare_string_as_one_value():
    grid = EvalGrid(attacks="pgd", eps="8/255", stats="batch", batch_sizes=16, branches="adv", makeups="mixed",
                    gradients="transfer")
    assert grid.attacks == ("pgd",) and grid.eps == (8 / 255,) and grid.stats == ("batch",)
    assert grid.batch_sizes == (16,) and grid.branches == ("adv",) and grid.makeups == ("mixed",)
    assert grid.gradients == ("transfer",)
    # the bare value gives the grid (and its cache key) of the one-element tuple
    assert grid.key() == EvalGrid(attacks=("pgd",), eps=(8 / 255,), stats=("batch",), batch_sizes=(16,),
                                  branches=("adv",), makeups=("mixed",), gradients=("transfer",)).key()
    with pytest.raises(ConfigError, match="attacks=.* is a set"):
        EvalGrid(attacks={"pgd", "fgsm"})


def test_summarize_takes_one_bare_column():
    df = pd.DataFrame({"attack": ["pgd", "pgd", "fgsm", "fgsm"], "seed": [0, 1, 0, 1], "accuracy": [0.1, 0.3, 0.5, 0.7]})
    out = summarize(df, by="attack")
    assert list(out["attack"]) == ["pgd", "fgsm"] and list(out["n_seeds"]) == [2, 2]


def test_mean_and_std_take_one_value_per_channel_never_characters():
    m = resnet20(in_channels=1, width=4, depth=8, mean="0.5", std=0.25)
    assert m.spec["mean"] == [0.5] and m.spec["std"] == [0.25]
    with pytest.raises(ConfigError, match=r"must have in_channels=3 entries"):  # "0.50" is one value, not 4
        resnet20(width=4, depth=8, mean="0.50", std=(0.2, 0.2, 0.2))
    with pytest.raises(ConfigError, match=r"mean\[0\]='a'"):
        resnet20(in_channels=1, width=4, depth=8, mean="a", std=0.25)
    n = Normalize("0.5", 0.25)
    assert n.mean.flatten().tolist() == [0.5] and n.std.flatten().tolist() == [0.25]
    assert Normalize(torch.tensor([0.1, 0.2]), [0.3, 0.4]).mean.flatten().tolist() == pytest.approx([0.1, 0.2])


def test_make_batches_takes_one_bare_attack():
    from rnorm.probes import make_batches
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 5)).eval()
    x, y = torch.rand(4, 3, 4, 4), torch.arange(4)
    assert list(make_batches(model, x, y, attacks="fgsm")) == ["fgsm"]


def test_with_clean_start_takes_one_bare_attack():
    from rnorm.plots import with_clean_start
    frame = pd.DataFrame({"attack": ["clean", "pgd"], "eps": [0.0, 0.03], "accuracy": [0.9, 0.2]})
    out = with_clean_start(frame, "pgd")
    assert sorted(out["attack"]) == ["pgd", "pgd"] and len(out) == 2


def test_recipe_slices_are_branch_kind_pairs_never_unpacked_strings():
    assert Recipe("one", ("main", "clean"), "a bare pair is one slice").slices == (("main", "clean"),)
    assert Recipe("two", [["main", "clean"], ("adv", "adv")], "").slices == (("main", "clean"), ("adv", "adv"))
    with pytest.raises(ConfigError, match=r"each slice is a \(branch, kind\) pair of names, got 'ab'"):
        Recipe("bad", (("main", "clean"), "ab"), "")
    with pytest.raises(ConfigError, match="kind='dirty' is not allowed"):
        Recipe("bad", (("main", "dirty"),), "")


def test_book_match_and_notebooks_take_one_bare_text(monkeypatch):
    prof = book.load_profile("smoke")
    nb = "02_stats_swap"
    runs = book.planned_configs(prof, [nb])
    assert runs, "the smoke profile trains runs for 02_stats_swap"
    text = runs[0].folder_name()
    assert book.planned_configs(prof, nb) == runs  # one bare notebook name
    assert book.planned_configs(prof, [nb], match=text) == book.planned_configs(prof, [nb], match=[text])
    # a text in no run name is refused by its name, not letter by letter (each letter is in some name)
    with pytest.raises(ConfigError, match="--match 'zz-in-no-name'"):
        book.check_match(prof, [nb], "zz-in-no-name")
