"""What the normalization layers see: the data of the distribution-shift figure (claim C1).

RobustNorm's first claim is that adversarial images shift the distribution of the *inputs* of
BatchNorm layers, so the population statistics estimated in training no longer describe them.
:func:`record_norm_inputs` measures exactly that: forward hooks on every rnorm normalization
layer record, per layer and channel, the mean and (biased) variance of the layer's input over
the batch (N, H, W), next to the layer's running estimate. :func:`shift_distance` reduces that
to one number per layer and statistic, scaled so that layers can be compared, and
:func:`compare_batches` / :func:`make_batches` do it for clean and adversarial versions of the
same images.

The model runs as it is set up (eval mode; its statistics mode and route respected), so by
default every layer normalizes with population statistics and the recorded input of layer l is
what the network really feeds it at inference.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import norms as _norms
from ._tensors import float_images, model_device
from ._validate import ConfigError, as_sequence, check_choice, check_float
from .attacks import ATTACKS, make_attack

RECORD_COLUMNS = ["layer_index", "layer", "channel", "statistic", "value", "running", "tag"]
DISTANCE_COLUMNS = ["layer_index", "layer", "statistic", "distance", "tag"]


def _float_images(images) -> torch.Tensor:
    return float_images("images", images)


def _running_source(m: nn.Module) -> nn.Module:
    """The module whose buffers normalize this layer's input under its current route.

    A MultiBatchNorm2d routed whole to an auxiliary branch uses that branch's buffers (unless
    its statistics are shared); a split route or the main branch uses the main buffers.
    """
    if isinstance(m, _norms.MultiBatchNorm2d) and isinstance(m.route, str) and m.route != _norms.MAIN \
            and m.share != "stats":
        return m.aux[m.route]
    return m


_device = model_device


@torch.no_grad()
def record_norm_inputs(model: nn.Module, images: torch.Tensor, *, tag=None) -> pd.DataFrame:
    """Per-layer, per-channel statistics of the input of every normalization layer, as a frame.

    ``images`` (uint8 or float in [0, 1]) go through ``model`` as *one batch*, in eval mode and
    without gradients, with the model's statistics mode and route as they are set. Each layer of
    :func:`rnorm.norms.norm_layers` gets a forward hook that records, for each channel, over the
    N*H*W values of its input:

    ``mean``   the mean; ``running`` = the layer's ``running_mean``
    ``var``    the biased variance; ``running`` = ``running_var`` (NaN for RobustNorm, which
               keeps no variance)
    ``range``  RobustNorm layers only: max - min; ``running`` = ``running_range``

    For a multi-branch layer routed to an auxiliary branch, ``running`` holds that branch's
    buffers. Columns: layer_index (0-based, in model order), layer (module name), channel,
    statistic, value, running, tag. The hooks are removed and the training flags restored
    afterwards, also when the forward raises.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} must be a torch.nn.Module.")
    x = _float_images(images)
    layers = _norms.norm_layers(model)
    records: dict[int, list] = {}
    handles = []

    def make_hook(index: int, name: str, layer: nn.Module):
        def hook(module, inputs, output):
            if index in records:
                raise RuntimeError(f"norm layer {name!r} ran twice in one forward pass; "
                                   f"record_norm_inputs expects each layer to be used once.")
            records[index] = (name, _input_stats(module, name, inputs[0]))
        return hook

    flags = [(m, m.training) for m in model.modules()]
    try:
        for i, (name, layer) in enumerate(layers):
            handles.append(layer.register_forward_hook(make_hook(i, name, layer)))
        model.eval()
        model(x.to(_device(model)))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return _records_frame(records, tag)


def _input_stats(module: nn.Module, name: str, t: torch.Tensor) -> dict:
    """``{statistic: (per-channel value, per-channel running estimate or None)}`` of one layer's 4-D
    input ``t`` over (N, H, W), in float64 (numpy arrays): mean, biased variance, and for RobustNorm
    the range; the running estimates are those of the buffers that normalize under the current route."""
    t = t.detach()
    if t.dim() != 4:
        raise RuntimeError(f"norm layer {name!r} got an input of shape {tuple(t.shape)}; expected 4-D.")
    t = t.double()
    stats = {"mean": t.mean(dim=(0, 2, 3)), "var": t.var(dim=(0, 2, 3), unbiased=False)}
    src = _running_source(module)
    running = {"mean": src.running_mean, "var": getattr(src, "running_var", None)}
    if isinstance(module, _norms.RobustNorm2d):
        flat = t.transpose(0, 1).reshape(t.shape[1], -1)
        lo, hi = torch.aminmax(flat, dim=1)
        stats["range"] = hi - lo
        running["range"] = module.running_range
    return {k: (v.cpu().numpy(), None if running[k] is None else running[k].detach().double().cpu().numpy())
            for k, v in stats.items()}


def _records_frame(records: dict, tag) -> pd.DataFrame:
    """The frame of :func:`record_norm_inputs` (:data:`RECORD_COLUMNS`) from ``{layer index: (name, stats)}``."""
    parts = []
    for index in sorted(records):
        name, stats = records[index]
        for statistic, (value, running) in stats.items():
            c = value.shape[0]
            parts.append(pd.DataFrame({
                "layer_index": index, "layer": name, "channel": np.arange(c), "statistic": statistic,
                "value": value, "running": np.full(c, np.nan) if running is None else running,
            }))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RECORD_COLUMNS[:-1])
    frame["tag"] = tag
    return frame[RECORD_COLUMNS]


def shift_distance(frame: pd.DataFrame, eps: float = 1e-5) -> pd.DataFrame:
    """Per layer, how far the batch's statistics are from the running ones, comparable across layers.

    From a :func:`record_norm_inputs` frame, per (tag, layer, statistic), averaged over channels:

    ``mean``   |mu_batch - mu_running| / sqrt(var_running + eps): the shift of the mean in units
               of the running standard deviation (the scale BN divides by). RobustNorm layers,
               which keep no variance, use their scale ``running_range + eps`` instead.
    ``var``    |log((var_batch + eps) / (var_running + eps))|: the factor by which the variance
               is off, symmetric in over- and under-estimation (not for RobustNorm: no running
               variance).
    ``range``  |log((range_batch + eps) / (range_running + eps))| (RobustNorm).

    Zero when the batch's statistics equal the running ones. Columns: layer_index, layer,
    statistic, distance, tag.
    """
    eps = check_float("eps", eps, min_value=0.0)
    missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"frame lacks columns {missing}; pass the output of record_norm_inputs.")
    f = frame.copy()
    f["_tag"] = f["tag"].astype(object).where(f["tag"].notna(), "\0none")
    key = ["_tag", "layer_index", "layer", "channel"]
    if f.duplicated(key + ["statistic"]).any():
        raise ConfigError("frame has repeated (tag, layer, channel, statistic) rows; give each batch its own tag.")
    wide = f.set_index(key + ["statistic"])[["value", "running"]].unstack("statistic")
    out = []
    cols = set(wide.columns.get_level_values(1))
    if "mean" in cols:
        mu_b, mu_r = wide[("value", "mean")], wide[("running", "mean")]
        var_r = wide[("running", "var")] if "var" in cols else pd.Series(np.nan, index=wide.index)
        scale = np.sqrt(var_r + eps)
        if "range" in cols:
            scale = scale.where(var_r.notna(), wide[("running", "range")] + eps)
        out.append(((mu_b - mu_r).abs() / scale).rename("mean"))
    for stat in ("var", "range"):
        if stat in cols:
            d = np.abs(np.log((wide[("value", stat)] + eps) / (wide[("running", stat)] + eps)))
            out.append(d.rename(stat))
    if not out:
        return pd.DataFrame(columns=DISTANCE_COLUMNS)
    per_channel = pd.concat(out, axis=1).reset_index().melt(
        id_vars=key, var_name="statistic", value_name="distance").dropna(subset=["distance"])
    res = (per_channel.groupby(["_tag", "layer_index", "layer", "statistic"], sort=False)["distance"]
           .mean().reset_index())
    res["tag"] = res["_tag"].where(res["_tag"] != "\0none", None)
    order = {"mean": 0, "var": 1, "range": 2}
    tags = list(dict.fromkeys(f["_tag"]))
    res["_t"] = res["_tag"].map({t: i for i, t in enumerate(tags)})
    res["_s"] = res["statistic"].map(order)
    res = res.sort_values(["_t", "layer_index", "_s"]).reset_index(drop=True)
    return res[DISTANCE_COLUMNS]


def compare_batches(model: nn.Module, batches: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """:func:`record_norm_inputs` for several kinds of batch, concatenated, ``tag`` = the key.

    ``batches`` maps a name to a batch of images, e.g. ``{"clean": x, "fgsm": x_fgsm,
    "pgd": x_pgd}`` (see :func:`make_batches`).
    """
    if not isinstance(batches, Mapping) or not batches:
        raise ConfigError("batches must be a non-empty dict mapping a name to a batch of images.")
    return pd.concat([record_norm_inputs(model, x, tag=str(k)) for k, x in batches.items()],
                     ignore_index=True)


def make_batches(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                 attacks: Sequence[str] = ("clean", "fgsm", "pgd"), eps: float = 8 / 255,
                 attack_params: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Clean and adversarial versions of one batch, for :func:`compare_batches`.

    The attacks run on the model as it is set up (statistics mode, route); with the default
    population statistics the adversarial batches are what a standard white-box attacker
    produces. torch is seeded with ``seed`` before each attack (the caller's random state is
    restored). Returns ``{name: images}`` in the order of ``attacks``.
    """
    x = _float_images(images)
    attacks = as_sequence("attacks", attacks)  # a bare name is one attack, not its letters
    attack_params = attack_params or {}
    out = {}
    dev = _device(model)
    x, y = x.to(dev), labels.to(dev).long()
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        for a in attacks:
            check_choice("attacks", a, ("clean",) + ATTACKS)
            if a == "clean":
                out[a] = x.clone()
                continue
            torch.manual_seed(seed)
            out[a] = make_attack(a, model, eps, **attack_params.get(a, {}))(x, y).detach()
    return out


@torch.no_grad()
def norm_input_moments(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> list[dict]:
    """Per image and channel, the first and second moments of the input of every normalization layer.

    For each layer of :func:`rnorm.norms.norm_layers` (in model order) a dict with ``layer_index``,
    ``layer``, ``m1`` and ``m2`` (float64 arrays, images x channels: the spatial means of x and
    x**2), ``running_mean`` and ``running_var`` (None where the layer keeps none). The batch
    statistics of *any* subset or resample of the images follow exactly: mean = average of
    ``m1``, biased variance = average of ``m2`` minus mean**2 (each image has the same H*W). That
    is what makes a bootstrap over images possible without running the model again.

    The model runs in eval mode in chunks of ``batch_size``; this is exact only when a layer's
    input for one image does not depend on the other images of the batch, i.e. with population
    statistics (raises otherwise).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={type(model).__name__} must be a torch.nn.Module.")
    for m in model.modules():
        mode = getattr(m, "stats", "population")
        if mode not in ("population", None):
            raise ConfigError(f"norm_input_moments needs population statistics (images independent of each "
                              f"other); a layer is in stats mode {mode!r}.")
    x = _float_images(images)
    layers = _norms.norm_layers(model)
    acc: dict[int, list] = {i: [] for i in range(len(layers))}
    handles = []

    def make_hook(index):
        def hook(module, inputs, output):
            t = inputs[0].detach().double()
            acc[index].append((t.mean(dim=(2, 3)).cpu(), (t * t).mean(dim=(2, 3)).cpu()))
        return hook

    flags = [(m, m.training) for m in model.modules()]
    try:
        for i, (_, layer) in enumerate(layers):
            handles.append(layer.register_forward_hook(make_hook(i)))
        model.eval()
        dev = _device(model)
        for s in range(0, x.shape[0], batch_size):
            model(x[s:s + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    out = []
    for i, (name, layer) in enumerate(layers):
        src = _running_source(layer)
        rv = getattr(src, "running_var", None)
        out.append({"layer_index": i, "layer": name,
                    "m1": torch.cat([a for a, _ in acc[i]]).numpy(), "m2": torch.cat([b for _, b in acc[i]]).numpy(),
                    "running_mean": src.running_mean.detach().double().cpu().numpy(),
                    "running_var": None if rv is None else rv.detach().double().cpu().numpy()})
    return out


def moment_distances(moments: list[dict], weights: np.ndarray, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Distances of weighted batches from the running statistics, averaged over channels and layers.

    ``weights`` (resamples x images, rows summing to 1) define batches as weighted averages of
    the images (a bootstrap resample: counts / n). Returns ``{"mean": (resamples,), "var":
    (resamples,)}`` with the definitions of :func:`shift_distance` (mean: |mu_b - mu_r| /
    sqrt(var_r + eps); var: |log((var_b + eps) / (var_r + eps))|), averaged over the channels of
    each layer and then over the layers that keep a running variance.
    """
    w = np.asarray(weights, dtype=np.float64)
    dm, dv = [], []
    for layer in moments:
        if layer["running_var"] is None:
            continue
        mu = w @ layer["m1"]
        var = np.maximum(w @ layer["m2"] - mu * mu, 0.0)
        rm, rv = layer["running_mean"], layer["running_var"]
        dm.append((np.abs(mu - rm) / np.sqrt(rv + eps)).mean(axis=1))
        dv.append(np.abs(np.log((var + eps) / (rv + eps))).mean(axis=1))
    if not dm:
        raise ConfigError("no layer with a running variance: the shift distances need BatchNorm layers.")
    return {"mean": np.mean(dm, axis=0), "var": np.mean(dv, axis=0)}
