"""Attacks as thin wrappers over torchattacks: ``make_attack(name, model, eps, **params)``.

Names (:data:`ATTACKS`): ``fgsm``, ``pgd`` (L-inf, random start, optional restarts), ``easy``,
``autoattack``, ``apgd`` (APGD-CE) and the two random-noise controls ``noise_sign`` and
``noise_uniform``. Every attack takes and returns images in [0, 1] with epsilon in pixel units
(``8/255``), stays inside the epsilon-ball and inside [0, 1]; ``eps=0`` returns a copy of the
input. Every call checks its inputs first, with the check :func:`rnorm.evaluate.evaluate` makes
(:class:`Attack`): finite float images in [0, 1] and one integer label per image in
``[0, num_classes)``, so NaN or infinite pixels, 0..255 images, cross-entropy's ignore index -100
and labels the model cannot output are errors, not an "adversarial" batch.

``easy`` makes the *easy examples* of EBN (Asadulaev et al. 2022) as we read the paper (no code
is public): PGD *targeted at the true label*, i.e. it descends the cross-entropy of the correct
class inside the epsilon-ball (torchattacks' ``set_mode_targeted_by_label`` called with the true
labels), so the model classifies the result correctly with higher confidence.

``noise_sign`` (``x + eps * s``, ``s`` uniform in {-1, +1} per pixel) and ``noise_uniform``
(``x + u``, ``u ~ Uniform[-eps, eps]`` per pixel), both clipped to [0, 1], are the *controls* for
"an adversarial perturbation shifts the BN inputs more than random noise of the same L-inf
radius": ``noise_sign`` has the same per-pixel magnitude as FGSM (``|delta| = eps`` where nothing
is clipped), ``noise_uniform`` is PGD's random start. They take no parameters, never call the
model, and draw from torch's global random generator on the images' device, so
``torch.manual_seed`` before the call makes them reproducible.

``apgd`` is APGD-CE, the first component of AutoAttack (Croce & Hein 2020), through
``torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, loss="ce",
seed=seed, rho=0.75)``. Caveats of torchattacks' implementation (read in torchattacks 3.5.1),
which its AutoAttack shares: it attacks only the images the model classifies correctly, as a
*sub-batch*, and each further restart only the images not yet fooled, again as a sub-batch; an
image it does not fool is returned *unperturbed* (the clean image), as is an image misclassified
from the start. So in a batch-dependent statistics mode (``batch``, ``population_mean``) APGD
optimizes against the statistics of those sub-batches, not of the batch that is scored, and is
not a white-box attack there (use ``pgd``). Its random start comes from ``seed`` alone:
torchattacks reseeds torch's generators with it; :class:`Attack` runs it inside
``torch.random.fork_rng`` so the caller's random state is left as it was.

Statistics mode and branch: an attack runs the model exactly as the caller has set it up with
:func:`rnorm.norms.use_stats` / :func:`rnorm.norms.route`. torchattacks switches the model to
``eval()`` during the attack and back afterwards, so ``stats="batch"`` gives gradients through the
statistics of the batch being attacked, and no running buffer is touched.

Defaults: PGD uses 20 steps with step size ``2.5 * eps / steps`` (Madry et al.) and one run
(``restarts=1``). The RobustNorm reference code uses 20 steps of ``eps / 10``; pass
``alpha=eps/10`` for that. ``restarts=r > 1`` runs PGD r times from independent random starts on
the *whole* batch and keeps, per image, the first restart's example that the model misclassifies
(the last restart's if none does); the prediction is made with the model in ``eval()`` and the
caller's statistics mode and branch, i.e. as the attack saw it. In a batch-dependent statistics
mode every restart attacks (and is judged on) the full batch, but the returned batch mixes images
from different restarts, which changes the batch and so every image's prediction: an image fooled
in its restart's batch may be classified correctly in the combined one. The scorer must therefore
re-score the combined batch, as :func:`rnorm.evaluate.evaluate` does. APGD's defaults follow
AutoAttack's standard version (100 steps, one restart, ``rho=0.75``) and torchattacks' seed 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torchattacks

from ._tensors import check_images_labels, check_labels, num_outputs
from ._validate import ConfigError, check_bool, check_choice, check_float, check_int, suggest

ATTACKS = ("fgsm", "pgd", "easy", "autoattack", "apgd", "noise_sign", "noise_uniform")
_PARAMS = {
    "fgsm": set(),
    "pgd": {"steps", "alpha", "random_start", "restarts"},
    "easy": {"steps", "alpha", "random_start"},
    "autoattack": {"version", "seed", "n_classes"},
    "apgd": {"steps", "restarts", "seed"},
    "noise_sign": set(),
    "noise_uniform": set(),
}
NOISE_ATTACKS = ("noise_sign", "noise_uniform")
_DTYPES = (torch.float32, torch.float64)  # the image dtypes an attack takes (torchattacks' arithmetic)


@dataclass
class Attack:
    """A configured attack: call it with ``(images, labels)`` to get adversarial images.

    ``_impl`` is any callable ``(images, labels) -> images`` (a torchattacks attack, or one of
    the small callables below); ``None`` (``eps == 0``) returns a copy of the images.

    Every call first checks its inputs with :func:`rnorm._tensors.check_images_labels`, the check
    :func:`rnorm.evaluate.evaluate` makes too, before any work: images a float32/float64 tensor
    [N, C, H, W], finite, in [0, 1] (0..255 images, uint8 ones included, are refused: divide by
    255); labels an integer vector with one label per image, each in ``[0, num_classes)``.
    ``num_classes`` is the one given to :func:`make_attack`, else it is read from ``model``'s
    output on two of the images (one no-grad eval forward, on the first call, then kept). The
    noise controls never call the model: without ``num_classes`` their labels are only checked
    to be >= 0.
    """

    name: str
    eps: float
    params: dict
    _impl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    model: nn.Module | None = None
    num_classes: int | None = None

    def check_inputs(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` checked as the class docstring says (a ConfigError or ConfigTypeError,
        naming the bad value, otherwise)."""
        images, labels = check_images_labels(images, labels, self.num_classes, dtypes=_DTYPES)
        if self.num_classes is None and self.model is not None and self.name not in NOISE_ATTACKS \
                and images.shape[0]:
            self.num_classes = num_outputs(self.model, images)
            check_labels(labels, images.shape[0], self.num_classes)
        return images, labels

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = self.check_inputs(images, labels)
        return self.run(images, labels)

    def run(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The attack without the input check, for callers that made it once for all their batches
        (:func:`rnorm.evaluate.evaluate`) or whose data was checked where it was loaded (training's
        hot loop, where the check's read-backs would make the host wait for the device every step).
        Bad inputs give a wrong result here: call the attack itself unless they were checked."""
        if self._impl is None or self.eps == 0:
            return images.detach().clone()
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


class _Noise:
    """Random noise of L-inf radius ``eps``, clipped to [0, 1]; a control that never calls a model.

    ``sign``: ``x + eps * s`` with ``s`` uniform in {-1, +1}; ``uniform``: ``x + u`` with
    ``u ~ Uniform[-eps, eps]``; independently per pixel, from torch's global generator on the
    images' device.
    """

    def __init__(self, kind: str, eps: float):
        self.kind, self.eps = kind, eps

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.detach()
        if self.kind == "sign":
            delta = torch.empty_like(x).bernoulli_(0.5).mul_(2).sub_(1).mul_(self.eps)
        else:
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        return (x + delta).clamp_(0, 1)


class _Restarts:
    """``restarts`` runs of a torchattacks attack on the whole batch, each from its own random start;
    per image, the first run's example the model misclassifies is kept (else the last run's). The
    runs stop early once every image is fooled: later runs could not change the result.

    The model is put in ``eval()`` for the runs and the predictions (what torchattacks does during an
    attack; the statistics mode and route the caller set are untouched) and every module's training
    flag is restored afterwards.
    """

    def __init__(self, attack: torchattacks.Attack, restarts: int):
        self.attack, self.restarts = attack, restarts

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model = self.attack.model
        flags = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            best = fooled = None
            for _ in range(self.restarts):
                adv = self.attack(images, labels).detach()
                with torch.no_grad():
                    wrong = self.attack.get_logits(adv).argmax(1) != labels.to(adv.device)
                if best is None:
                    best, fooled = adv.clone(), wrong
                else:
                    todo = ~fooled  # images no earlier run fooled take this run's example
                    best[todo] = adv[todo]
                    fooled = fooled | wrong
                if bool(fooled.all()):  # later runs could not change anything
                    break
            return best
        finally:
            for m, flag in flags:
                m.training = flag


class _OwnRNG:
    """Runs an attack that reseeds torch's generators (torchattacks' APGD) inside ``fork_rng``,
    so that the caller's random state is the same after the call as before it."""

    def __init__(self, attack: torchattacks.Attack):
        self.attack = attack

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        devices = set()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            devices.add(torch.cuda.current_device())
            for dev in (images.device, self.attack.device):
                if dev is not None and torch.device(dev).type == "cuda":
                    devices.add(torch.device(dev).index if torch.device(dev).index is not None
                                else torch.cuda.current_device())
        with torch.random.fork_rng(devices=sorted(devices)):
            return self.attack(images, labels)


def make_attack(name: str, model: nn.Module, eps: float, *, num_classes: int | None = None, **params) -> Attack:
    """Build attack ``name`` against ``model`` with L-inf radius ``eps`` (pixel units, in [0, 1]).

    ``num_classes``: the number of the model's outputs, against which the labels of every call
    are checked (see :class:`Attack`); ``None`` reads it from the model on the first call.

    Parameters per attack (unknown parameters are errors):

    * ``fgsm``, ``noise_sign``, ``noise_uniform``: none.
    * ``pgd`` and ``easy``: ``steps`` (default 20 for ``pgd``, 10 for ``easy``), ``alpha`` (step
      size, default ``2.5 * eps / steps``) and ``random_start`` (default True); ``pgd`` also
      ``restarts`` (default 1, more than 1 needs ``random_start``; see the module docstring).
    * ``autoattack``: ``version`` ("standard"), ``seed`` (0) and ``n_classes`` (10).
    * ``apgd`` (APGD-CE): ``steps`` (100), ``restarts`` (1) and ``seed`` (0).
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
    impl, used = _BUILDERS[name](name, model, eps, params)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, min_value=1)
    return Attack(name, eps, used, impl if eps > 0 else None, model=model, num_classes=num_classes)


def _fgsm_or_noise(name: str, model: nn.Module, eps: float, params: dict):
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps), {}
    return _Noise(name[len("noise_"):], eps), {}


def _pgd(name: str, model: nn.Module, eps: float, params: dict):
    """``pgd`` (untargeted, with ``restarts``) and ``easy`` (PGD targeted at the true label: EBN's easy
    examples as we read the paper); both with torchattacks' PGD, ``alpha = 2.5 * eps / steps`` by default."""
    steps = check_int("steps", params.get("steps", 20 if name == "pgd" else 10), min_value=1)
    alpha = params.get("alpha")
    alpha = 2.5 * eps / steps if alpha is None else check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    random_start = check_bool("random_start", params.get("random_start", True))
    impl = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    used = {"steps": steps, "alpha": alpha, "random_start": random_start}
    if name == "easy":
        impl.set_mode_targeted_by_label(quiet=True)
        return impl, used
    restarts = check_int("restarts", params.get("restarts", 1), min_value=1)
    if restarts > 1 and not random_start:
        raise ConfigError(f"restarts={restarts} needs random_start=True: without a random start every "
                          f"restart runs the same attack.")
    if restarts > 1:
        impl = _Restarts(impl, restarts)
    used["restarts"] = restarts
    return impl, used


def _apgd(name: str, model: nn.Module, eps: float, params: dict):
    steps = check_int("steps", params.get("steps", 100), min_value=1)
    restarts = check_int("restarts", params.get("restarts", 1), min_value=1)
    seed = check_int("seed", params.get("seed", 0), min_value=0)
    impl = _OwnRNG(torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed,
                                     loss="ce", rho=0.75))
    return impl, {"steps": steps, "restarts": restarts, "seed": seed}


def _autoattack(name: str, model: nn.Module, eps: float, params: dict):
    version = check_choice("version", params.get("version", "standard"), ("standard", "plus", "rand"))
    seed = check_int("seed", params.get("seed", 0), min_value=0)
    n_classes = check_int("n_classes", params.get("n_classes", 10), min_value=2)
    impl = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version, n_classes=n_classes, seed=seed)
    return impl, {"version": version, "seed": seed, "n_classes": n_classes}


#: The builder of each attack: ``(name, model, eps, params) -> (implementation, parameters used)``.
_BUILDERS = {"fgsm": _fgsm_or_noise, **{n: _fgsm_or_noise for n in NOISE_ATTACKS}, "pgd": _pgd, "easy": _pgd,
             "apgd": _apgd, "autoattack": _autoattack}


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
    """Write ``eps`` as ``k/255`` when k is a whole number, or a quarter below 4 (the book's
    convention: ``8/255``, ``0.25/255``, ``1.5/255``), else as a decimal (``0.1``)."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    if k < 4 and abs(4 * k - round(4 * k)) < 1e-6:
        return f"{round(4 * k) / 4:g}/255"
    return f"{eps:.4g}"
