"""One input check for every attack and for evaluate (rnorm._tensors.check_images_labels).

Each bad input is refused before any work, with an error that names the bad value and says what is
allowed: non-finite pixels, 0..255 images, labels that are not one integer per image, negative labels
(cross-entropy's ignore index -100 among them) and labels the model cannot output.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rnorm._tensors import check_images_labels
from rnorm._validate import ConfigError
from rnorm.attacks import ATTACKS, NOISE_ATTACKS, make_attack
from rnorm.evaluate import accuracy, evaluate

EPS = 8 / 255
CLASSES = 5


class Counting(nn.Module):
    """A tiny classifier of 3x4x4 images into CLASSES classes that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(64, CLASSES))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _good(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 4, 4, generator=g), torch.arange(n) % CLASSES


def _with(value):
    x, _ = _good()
    x = x.clone()
    x[1, 2, 3, 0] = value
    return x


# (images, labels) -> (exception, a pattern that names the bad value or says what is allowed)
_BAD_IMAGES = {
    "nan": (lambda: (_with(float("nan")), _good()[1]), ConfigError, r"first: nan at index \(1, 2, 3, 0\)"),
    "+inf": (lambda: (_with(float("inf")), _good()[1]), ConfigError, r"first: inf .*allowed: finite values in \[0, 1\]"),
    "-inf": (lambda: (_with(float("-inf")), _good()[1]), ConfigError, r"first: -inf"),
    "0..255": (lambda: (_good()[0] * 255, _good()[1]), ConfigError, r"look like 0\.\.255 pixel values: divide by 255"),
    "negative": (lambda: (_good()[0] - 0.5, _good()[1]), ConfigError, r"must lie in \[0, 1\].*got values in \[-0\.\d+"),
    "not a tensor": (lambda: (_good()[0].tolist(), _good()[1]), TypeError, r"torch.Tensor .*got list"),
    "3-D": (lambda: (_good()[0][0], _good()[1]), ConfigError, r"\[N, C, H, W\]; got shape \(3, 4, 4\)"),
}
_BAD_LABELS = {
    "ignore index -100": (lambda y: torch.tensor([0, -100, 1, 2]), ConfigError, r"label -100 \(-100 is cross-entropy's ignore index"),
    "negative": (lambda y: y - 1, ConfigError, r"labels range over -1\.\.2: label -1 is not allowed; allowed: 0 or more"),
    "too large": (lambda y: torch.tensor([0, 1, CLASSES, 2]), ConfigError, rf"label {CLASSES} is not allowed; allowed: 0\.\.4 \(the model has 5 outputs\)"),
    "float": (lambda y: y.float(), TypeError, r"got dtype torch.float32 \(allowed: an integer dtype"),
    "bool": (lambda y: y > 0, TypeError, r"got dtype torch.bool"),
    "list": (lambda y: y.tolist(), TypeError, r"got list"),
    "2-D": (lambda y: y[:, None], ConfigError, r"got shape \(4, 1\)"),
    "one too few": (lambda y: y[:3], ConfigError, r"labels has 3 entries but there are 4 images; allowed: one label per image"),
}
_CASES = [("images", k, *v) for k, v in _BAD_IMAGES.items()] + \
         [("labels", k, (lambda f=f: (_good()[0], f(_good()[1]))), e, p) for k, (f, e, p) in _BAD_LABELS.items()]


def _needs_the_model(part, case):
    """Only a label beyond the model's outputs needs the number of classes, read from the model."""
    return part == "labels" and case == "too large"


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("part,case,inputs,exc,pattern", _CASES, ids=[f"{c[0]}-{c[1]}" for c in _CASES])
def test_every_attack_refuses_bad_inputs_before_any_work(name, part, case, inputs, exc, pattern):
    if name in NOISE_ATTACKS and _needs_the_model(part, case):
        pytest.skip("the noise controls never call the model: covered with num_classes given below")
    model = Counting().eval()
    x, y = inputs()
    for eps in (EPS, 0.0):
        with pytest.raises(exc, match=pattern):
            make_attack(name, model, eps)(x, y)
    # at most the no-grad forward that reads the number of classes (once for each of the two attacks)
    assert model.calls <= (2 if _needs_the_model(part, case) else 0)


@pytest.mark.parametrize("name", ATTACKS)
def test_with_num_classes_given_no_attack_calls_the_model_to_refuse_a_label(name):
    model = Counting().eval()
    x, _ = _good()
    with pytest.raises(ConfigError, match=rf"label {CLASSES} is not allowed; allowed: 0\.\.4"):
        make_attack(name, model, EPS, num_classes=CLASSES)(x, torch.tensor([0, 1, CLASSES, 2]))
    assert model.calls == 0
    with pytest.raises(ConfigError, match="num_classes=0"):
        make_attack(name, model, EPS, num_classes=0)


def test_attacks_take_float32_or_float64_only_and_name_the_dtype():
    model = Counting().eval()
    x, y = _good()
    with pytest.raises(TypeError, match=r"dtype torch.uint8; allowed: torch.float32 or torch.float64 .*divide by 255"):
        make_attack("pgd", model, EPS)((x * 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match="dtype torch.bfloat16"):
        make_attack("fgsm", model, EPS)(x.bfloat16(), y)
    assert model.calls == 0


def test_good_inputs_pass_and_the_class_count_is_read_once():
    model = Counting().eval()
    x, y = _good()
    atk = make_attack("fgsm", model, EPS)
    adv = atk(x, y.int())  # any integer dtype
    assert atk.num_classes == CLASSES and adv.shape == x.shape
    calls = model.calls
    atk(x, y)
    assert model.calls == calls + 1  # FGSM's own forward only: the class count was kept
    model.train()
    make_attack("pgd", model, EPS, steps=1)(x, y)
    assert model.training and all(m.training for m in model.modules())  # the probe restores the flags


@pytest.mark.parametrize("part,case,inputs,exc,pattern", _CASES, ids=[f"{c[0]}-{c[1]}" for c in _CASES])
def test_evaluate_and_accuracy_refuse_the_same_inputs_with_the_same_messages(part, case, inputs, exc, pattern):
    model = Counting().eval()
    x, y = inputs()
    with pytest.raises(exc, match=pattern):
        evaluate(model, x, y, attacks=("clean", "pgd"), batch_sizes=(4,), device="cpu")
    with pytest.raises(exc, match=pattern):
        accuracy(model, x, y)
    assert model.calls <= (2 if _needs_the_model(part, case) else 0)


def test_evaluate_still_takes_uint8_images():
    model = Counting().eval()
    x, y = _good()
    frame = evaluate(model, (x * 255).to(torch.uint8), y, attacks=("clean",), batch_sizes=(4,), device="cpu")
    assert frame["n"].tolist() == [4]


def test_the_one_check_returns_float_images_and_int64_labels():
    x, y = _good()
    images, labels = check_images_labels((x * 255).to(torch.uint8), y.to(torch.int16), CLASSES)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    images, labels = check_images_labels(x[:0], y[:0], CLASSES)  # an empty batch is not an error here
    assert images.shape[0] == 0
