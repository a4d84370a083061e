"""Recipes: plain Python functions returning a RunConfig. `unimask pretrain --recipe NAME`."""

from __future__ import annotations

from typing import Callable

from .config import RunConfig, sized
from .data.loader import DataConfig
from .objectives.mlm import MLMConfig
from .train.loop import TrainConfig


def demo() -> RunConfig:
    """The default: a mini MLM on the built-in King James Bible, a few minutes on 2 CPU cores."""
    return RunConfig(
        objective_name="mlm", size="mini", model=sized("mini"), objective=MLMConfig(),
        data=DataConfig(seq_len=128),
        train=TrainConfig(steps=600, batch_size=32, lr=1e-3, warmup_steps=60, log_every=10,
                          eval_every=200, eval_batches=10, save_every=200),
    )


def mlm(size: str, steps: int, batch_size: int, lr: float, warmup_steps: int, seq_len: int = 128,
        grad_accum: int = 1) -> Callable[[], RunConfig]:
    def recipe() -> RunConfig:
        return RunConfig(
            objective_name="mlm", size=size, model=sized(size), objective=MLMConfig(),
            data=DataConfig(seq_len=seq_len),
            train=TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                              warmup_steps=warmup_steps, eval_every=1000, save_every=1000),
        )
    recipe.__doc__ = f"MLM, {size} encoder, {steps} steps of {batch_size}x{grad_accum} x {seq_len} tokens."
    return recipe


RECIPES: dict[str, Callable[[], RunConfig]] = {
    "demo": demo,
    "mlm_tiny": mlm("tiny", steps=10_000, batch_size=64, lr=1e-3, warmup_steps=500),
    "mlm_mini": mlm("mini", steps=20_000, batch_size=64, lr=7e-4, warmup_steps=1000),
    "mlm_small": mlm("small", steps=50_000, batch_size=64, lr=5e-4, warmup_steps=2000),
    # RoBERTa-base's schedule (Liu et al. 2019, table 9) scaled to one node: 125k steps, peak 6e-4
    "mlm_base": mlm("base", steps=125_000, batch_size=32, grad_accum=8, lr=6e-4, warmup_steps=10_000, seq_len=512),
    "mlm_large": mlm("large", steps=125_000, batch_size=16, grad_accum=16, lr=4e-4, warmup_steps=10_000, seq_len=512),
}
