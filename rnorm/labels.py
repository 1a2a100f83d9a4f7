"""The display labels of the project's names (``bn`` -> ``BatchNorm``), standard library only, so that
``book/training_cost.py`` reads the same labels as the figures and tables (:mod:`rnorm.plots.style`)."""
from __future__ import annotations

# Display labels, applied only when drawing or printing; frames and the ledger keep the names.
LABELS = {
    # datasets: the lossy JPEG copy always says so
    "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR-10", "cifar10_jpeg": "CIFAR-10 (lossy JPEG copy)",
    # networks
    "resnet18": "ResNet-18", "resnet20": "ResNet-20", "resnet50": "ResNet-50",
    # normalizations
    "bn": "BatchNorm", "robustnorm": "RobustNorm", "none": "no norm", "multibn": "BatchNorm + auxiliary BNs",
    # statistics modes
    "population": "population stats", "batch": "batch stats", "population_mean": "running mean, batch var",
    "precise": "PreciseBN population stats",
    # recipes
    "standard": "standard", "pgd_at": "PGD-AT", "advprop": "AdvProp", "ebn": "EBN", "advprop_ebn": "AdvProp+EBN",
    # attacks, gradients, batch make-up, references
    "clean": "clean", "fgsm": "FGSM", "pgd": "PGD", "autoattack": "AutoAttack", "easy": "easy (targeted to y)",
    "apgd": "APGD-CE", "noise_sign": "sign noise", "noise_uniform": "uniform noise",
    "white-box": "white-box", "transfer": "transfer", "all": "all adversarial", "mixed": "mixed",
    "ema": "EMA population stats",
}

# EBN's sharing ablation (a run's ``share``): what its auxiliary branches share with the main one
SHARE_LABELS = {"none": "separate", "affine": "shared γ/β", "stats": "shared statistics"}


def network_label(arch: str, width) -> str:
    """``ResNet-20, width 16``: a network and its width as a reader sees them."""
    return f"{LABELS.get(arch, arch)}, width {width}"

