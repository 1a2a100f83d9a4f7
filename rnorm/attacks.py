"""Attacks as thin wrappers over torchattacks: ``make_attack(name, model, eps, **params)``.

Names: ``fgsm``, ``pgd`` (L-inf, random start), ``easy`` and ``autoattack``. Every attack takes
and returns images in [0, 1] with epsilon in pixel units (``8/255``), stays inside the
epsilon-ball and inside [0, 1].

``easy`` makes the *easy examples* of EBN (Asadulaev et al. 2022) as we read the paper (no code
is public): PGD *targeted at the true label*, i.e. it descends the cross-entropy of the correct
class inside the epsilon-ball (torchattacks' ``set_mode_targeted_by_label`` called with the true
labels), so the model classifies the result correctly with higher confidence.

Statistics mode and branch: an attack runs the model exactly as the caller has set it up with
:func:`rnorm.norms.use_stats` / :func:`rnorm.norms.route`. torchattacks switches the model to
``eval()`` during the attack and back afterwards, so ``stats="batch"`` gives gradients through the
statistics of the batch being attacked, and no running buffer is touched.

Defaults: PGD uses 20 steps with step size ``2.5 * eps / steps`` (Madry et al.). The RobustNorm
reference code uses 20 steps of ``eps / 10``; pass ``alpha=eps/10`` for that.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torchattacks

from ._validate import ConfigError, check_bool, check_choice, check_float, check_int, suggest

ATTACKS = ("fgsm", "pgd", "easy", "autoattack")
_PARAMS = {
    "fgsm": set(),
    "pgd": {"steps", "alpha", "random_start"},
    "easy": {"steps", "alpha", "random_start"},
    "autoattack": {"version", "seed", "n_classes"},
}


@dataclass
class Attack:
    """A configured attack: call it with ``(images, labels)`` to get adversarial images."""

    name: str
    eps: float
    params: dict
    _impl: torchattacks.Attack | None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._impl is None or self.eps == 0:
            return images.detach().clone()
        if images.dtype != torch.float32 and images.dtype != torch.float64:
            raise TypeError(f"attack {self.name!r} needs float images in [0, 1]; got dtype {images.dtype}.")
        # An attack needs input gradients: switch autograd back on when called under torch.no_grad()
        # (a usual evaluation context, where torchattacks fails with "does not require grad").
        with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
            adv = self._impl(images, labels)
        # torchattacks' AutoAttack returns a tensor still attached to the attack's graph; detach
        # it so that training on it neither backpropagates into the attack nor keeps the graph.
        return adv.detach()

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Attack({self.name!r}, eps={self.eps:.6g}{extra})"


def make_attack(name: str, model: nn.Module, eps: float, **params) -> Attack:
    """Build attack ``name`` against ``model`` with L-inf radius ``eps`` (pixel units, in [0, 1]).

    Parameters per attack: ``pgd`` and ``easy`` take ``steps`` (default 20 for ``pgd``, 10 for
    ``easy``), ``alpha`` (step size, default ``2.5 * eps / steps``) and ``random_start``
    (default True); ``autoattack`` takes ``version`` ("standard"), ``seed`` (0) and
    ``n_classes`` (10). Unknown parameters are errors.
    """
    check_choice("attack", name, ATTACKS)
    eps = check_float("eps", eps, min_value=0.0, max_value=1.0)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} must be a torch.nn.Module.")
    for k in params:
        if k not in _PARAMS[name]:
            allowed = sorted(_PARAMS[name]) or ["none"]
            raise ConfigError(f"attack {name!r} takes no parameter {k}={params[k]!r}; allowed: "
                              f"{', '.join(allowed)}." + suggest(k, _PARAMS[name]))
    if name == "fgsm":
        impl = torchattacks.FGSM(model, eps=eps)
        used = {}
    elif name in ("pgd", "easy"):
        steps = check_int("steps", params.get("steps", 20 if name == "pgd" else 10), min_value=1)
        alpha = params.get("alpha")
        alpha = 2.5 * eps / steps if alpha is None else check_float("alpha", alpha, min_value=0.0, max_value=1.0)
        random_start = check_bool("random_start", params.get("random_start", True))
        impl = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
        if name == "easy":
            impl.set_mode_targeted_by_label(quiet=True)
        used = {"steps": steps, "alpha": alpha, "random_start": random_start}
    else:
        version = check_choice("version", params.get("version", "standard"), ("standard", "plus", "rand"))
        seed = check_int("seed", params.get("seed", 0), min_value=0)
        n_classes = check_int("n_classes", params.get("n_classes", 10), min_value=2)
        impl = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version, n_classes=n_classes, seed=seed)
        used = {"version": version, "seed": seed, "n_classes": n_classes}
    return Attack(name, eps, used, impl if eps > 0 else None)


def parse_eps(value) -> float:
    """Read an epsilon written as a number or a fraction string like ``"8/255"``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/")
                value = float(num) / float(den)
            else:
                value = float(text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"eps={text!r} is not a number; write e.g. 0.03 or '8/255'.") from None
    return check_float("eps", value, min_value=0.0, max_value=1.0)


def format_eps(eps: float) -> str:
    """Write ``eps`` as ``k/255`` when it is one (the book's convention), else as a decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"
