"""The sizes and repetitions of the benchmarks (:class:`Settings`, full and quick) and the recipes
they train (:data:`RECIPE_NAMES`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

RECIPE_NAMES = ("standard", "pgd_at", "advprop", "ebn", "advprop_ebn")


@dataclass
class Settings:
    """Sizes and repetitions; :meth:`quick` gives the tiny version."""

    mode: str = "full"
    width: int = 16
    batch: int = 128              # benchmarks 1 and 3 (32x32x3 random images)
    slice_batch: int = 64         # benchmark 2: a [clean; adv; easy] batch of 3 x this
    image_size: int = 32
    warmup: int = 2
    rounds: int = 12              # interleaved rounds of benchmarks 1-3
    reps: int = 3                 # training steps per timed measurement
    pgd_images: int = 256
    pgd_steps: int = 10
    pgd_rounds: int = 6
    epoch_images: int = 1024      # benchmark 5 (one epoch per recipe and precision)
    recipe_batch: int = 128
    train_steps: int = 3
    recipe_rounds: int = 2
    mm_n: int = 2048
    mm_reps: int = 8
    conv_peak_shape: tuple = (8, 256)   # batch, channels of the 3x3 convolution peak (32x32)
    share_images: int = 2048
    share_rounds: int = 3
    sizes: tuple = (1024, 2048, 4096, 8192)
    size_rounds: int = 2
    proc_images: int = 1024
    proc_rounds: int = 2
    thread_rounds: int = 4
    eval_train_images: int = 5000
    eval_test_images: int = 1000
    eval_eps: tuple = (2 / 255, 8 / 255)
    eval_steps: int = 10
    eval_batch: int = 250
    isa_images: int = 1024        # precision_auto_isa_capped: images per fp32 / auto epoch
    isa_bf16_images: int = 256    # ... per bf16 epoch (emulated under the cap: about 10x slower)
    isa_rounds: int = 3

    @classmethod
    def quick(cls) -> "Settings":
        return cls(mode="quick", width=8, batch=32, slice_batch=16, warmup=1, rounds=2, reps=1,
                   pgd_images=32, pgd_steps=2, pgd_rounds=2, epoch_images=64, recipe_batch=32, train_steps=1,
                   recipe_rounds=1, mm_n=512, mm_reps=2, conv_peak_shape=(2, 64), share_images=128, share_rounds=1,
                   sizes=(64, 128, 192, 256), size_rounds=1, proc_images=32, proc_rounds=1, thread_rounds=1,
                   eval_train_images=256, eval_test_images=64, eval_steps=2, eval_batch=32,
                   isa_images=64, isa_bf16_images=32, isa_rounds=1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        d["eval_eps"] = [float(e) for e in self.eval_eps]
        return d
