"""CUDA-only tests: run where a GPU is present (``pytest tests/test_cuda.py``), skipped elsewhere.

The CPU-side coverage of the same paths is in test_train.py (no host read-back in a training step),
test_norms.py (RobustNorm's sync-free range gradient) and test_hardware.py (precision choice)."""
from __future__ import annotations

import pytest
import torch

from rnorm import runs
from rnorm import train as T
from rnorm.models import resnet20
from rnorm.norms import RobustNorm2d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_sync():
    """Any host synchronization inside the block raises (torch's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    yield
    torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("recipe", list(T.RECIPES))
def test_training_step_on_cuda_never_syncs(recipe, no_sync):
    torch.manual_seed(0)
    model = resnet20(width=8, norm="multibn", branches=("adv", "easy")).cuda().to(memory_format=torch.channels_last)
    opt = T.make_optimizer(model, 0.05, 0.9, 0.0)
    x = torch.rand(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    out = T.step_metrics(model, opt, x, y, recipe, {"train_steps": 2, "precision": "bf16", "channels_last": True})
    assert out["loss"].device.type == "cuda"


@pytest.mark.parametrize("channels_last", [False, True])
def test_robustnorm_on_cuda_matches_cpu_without_syncs(channels_last):
    x = torch.randn(16, 8, 12, 12, generator=torch.Generator().manual_seed(0))
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    grads = {}
    for dev in ("cpu", "cuda"):
        m = RobustNorm2d(8, p=0.2).to(dev).train()
        xx = x.to(dev)
        if channels_last:
            xx = xx.contiguous(memory_format=torch.channels_last)
        xx.requires_grad_(True)
        if dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            (m(xx) * g.to(dev)).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        grads[dev] = xx.grad.cpu()
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-4, atol=1e-5)


def test_a_run_trains_on_cuda_end_to_end(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("RNORM_DATA", str(data_root))
    cfg = runs.RunConfig(arch="resnet20", width=4, train_subset=256, batch_size=64, epochs=1)
    run = runs.train(cfg, runs_dir=tmp_path, device="cuda")
    assert run.environment["precision"] == cfg.precision in ("bf16", "fp32")
    assert run.environment["device"].startswith("cuda")
    model = run.model("cuda")
    assert next(model.parameters()).device.type == "cuda"
