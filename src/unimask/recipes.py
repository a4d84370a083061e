"""Recipes: plain Python functions returning a RunConfig. `unimask pretrain --recipe NAME`.

The first line of each recipe's docstring is its description (`unimask pretrain --list-recipes`). The
config classes are imported when a recipe is called, so listing recipes and `--help` need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import RunConfig

DEMO_MINUTES = 4.5
"""The default job's training budget: its step count is fitted to it on the machine it runs on, so the
whole job (first-time data preparation, start-up, the final evaluation) takes about 5 minutes."""


def run_config(objective_name: str, size: str, steps: int, batch_size: int, lr: float, warmup_steps: int,
               seq_len: int = 128, grad_accum: int = 1, model: dict[str, Any] | None = None,
               objective: dict[str, Any] | None = None, **train: Any) -> RunConfig:
    """A RunConfig of `objective_name` at `size`; `model` / `objective` / `train` change their fields."""
    from .config import RunConfig, sized
    from .data.loader import DataConfig
    from .objectives import OBJECTIVES
    from .train.loop import TrainConfig

    return RunConfig(
        objective_name=objective_name, size=size, model=sized(size, **(model or {})),
        objective=OBJECTIVES[objective_name].Config(**(objective or {})), data=DataConfig(seq_len=seq_len),
        train=TrainConfig(**{"eval_every": 1000, "save_every": 1000, **train}, steps=steps, batch_size=batch_size,
                          grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps),
    )


def demo() -> RunConfig:
    """The default job: a mini MLM on the built-in King James Bible, fitted to about 5 minutes anywhere.

    Batches of 8 x 128 tokens: in a few minutes the number of updates is what counts (on this corpus, for
    the same tokens and time, 8 blocks a step reached valid loss 5.34 where 16 reached 5.53 and 32 stayed
    at the unigram plateau, 5.76). At most 2,400 steps; every 40 steps the run takes its pace so far and keeps
    the steps that fit DEMO_MINUTES (train.budget_calibration_steps), warm-up (10%) and decay scaled to
    them, so a CPU without bf16 (about half the speed) trains fewer steps in the same time, not longer.
    """
    return run_config("mlm", "mini", steps=2400, batch_size=8, lr=1e-3, warmup_steps=240, log_every=20,
                      eval_every=200, eval_batches=16, save_every=500, time_budget_minutes=DEMO_MINUTES,
                      budget_calibration_steps=40)     # 16 x 8 blocks: the whole held-out split


def mlm(size: str, steps: int, batch_size: int, lr: float, warmup_steps: int, seq_len: int = 128,
        grad_accum: int = 1) -> Callable[[], RunConfig]:
    def recipe() -> RunConfig:
        return run_config("mlm", size, steps, batch_size, lr, warmup_steps, seq_len, grad_accum)
    recipe.__doc__ = f"MLM, {size} encoder, {_schedule(steps, batch_size, grad_accum, seq_len)}."
    return recipe


def maelm(size: str, steps: int, batch_size: int, lr: float, warmup_steps: int, seq_len: int = 128,
          grad_accum: int = 1) -> Callable[[], RunConfig]:
    """MAE-LM (Meng et al. 2023) with the schedule of the mlm_* recipe of the same size, so the two
    compare at equal data and steps; the decoder has the official 4 layers at the encoder's width."""
    def recipe() -> RunConfig:
        return run_config("maelm", size, steps, batch_size, lr, warmup_steps, seq_len, grad_accum)
    recipe.__doc__ = (f"MAE-LM, {size} encoder + 4-layer decoder, "
                      f"{_schedule(steps, batch_size, grad_accum, seq_len)}.")
    return recipe


def cocolm(size: str, steps: int, batch_size: int, lr: float, warmup_steps: int, generator_layers: int,
           seq_len: int = 128, grad_accum: int = 1) -> Callable[[], RunConfig]:
    """COCO-LM (Meng et al. 2021) with the official fairseq architecture: post-LN, learned absolute
    positions plus a T5 relative bias of 32 buckets / max distance 128 shared by all layers (official
    rel_pos_bins / max_rel_pos), a full-width generator of `generator_layers` (official: 4 under a
    12-layer base, 2 under its 12 x 256 "cocolm_small"; 1 here under the 4-layer mini/small, about
    the base's 1/3 of the depth), copy weight 50, SCL weight 1 and temperature 1, 15% all-[MASK]."""
    def recipe() -> RunConfig:
        return run_config("cocolm", size, steps, batch_size, lr, warmup_steps, seq_len, grad_accum,
                          model=RELATIVE_BIAS, objective={"generator_layers": generator_layers})
    recipe.__doc__ = (f"COCO-LM, {size} encoder + {generator_layers}-layer generator, "
                      f"{_schedule(steps, batch_size, grad_accum, seq_len)}.")
    return recipe


def electra(size: str, steps: int, batch_size: int, lr: float, warmup_steps: int, generator_hidden_size: int,
            seq_len: int = 128, grad_accum: int = 1) -> Callable[[], RunConfig]:
    """ELECTRA (Clark et al. 2020) with the paper's pretraining hyperparameters (table 6; the official
    configure_pretraining.py / optimization.py): Adam(0.9, 0.999, 1e-6), weight decay 0.01, linear decay
    after 10k warmup steps, clip 1.0, 15% masked (85% [MASK], 15% kept), generator of
    `generator_hidden_size` at full depth, generator weight 1, RTD weight 50, temperature 1."""
    def recipe() -> RunConfig:
        return run_config("electra", size, steps, batch_size, lr, warmup_steps, seq_len, grad_accum,
                          objective={"generator_hidden_size": generator_hidden_size}, beta2=0.999, adam_eps=1e-6,
                          weight_decay=0.01)
    recipe.__doc__ = (f"ELECTRA, {size} discriminator + {generator_hidden_size}-wide generator, "
                      f"{_schedule(steps, batch_size, grad_accum, seq_len)}.")
    return recipe


def pmlm(size: str, steps: int, batch_size: int, lr: float, warmup_steps: int, seq_len: int = 128,
         grad_accum: int = 1) -> Callable[[], RunConfig]:
    """UniLMv2's pseudo-masked LM (Bao et al. 2020): AE + PAR with equal weights, blockwise masking of
    15%, post-LN with learned absolute positions plus a T5 relative bias of 32 buckets / max distance
    128 (the paper's relative position bias), Adam(0.9, 0.98, 1e-6) with weight decay 0.01 (the
    paper's pre-training setup), and the schedule of the mlm_* recipe of the same size."""
    def recipe() -> RunConfig:
        return run_config("pmlm", size, steps, batch_size, lr, warmup_steps, seq_len, grad_accum,
                          model=RELATIVE_BIAS, beta1=0.9, beta2=0.98, adam_eps=1e-6, weight_decay=0.01)
    recipe.__doc__ = (f"UniLMv2 PMLM (AE + PAR), {size} encoder, "
                      f"{_schedule(steps, batch_size, grad_accum, seq_len)}.")
    return recipe


def _schedule(steps: int, batch_size: int, grad_accum: int, seq_len: int) -> str:
    """`20,000 steps of 64 x 128 tokens` (with accumulation: `of 32 x 8 x 512 tokens`)."""
    batch = f"{batch_size} x {grad_accum}" if grad_accum > 1 else f"{batch_size}"
    return f"{steps:,} steps of {batch} x {seq_len} tokens"


RELATIVE_BIAS = {"relative_buckets": 32, "relative_max_distance": 128}
"""COCO-LM's and UniLMv2's T5-style relative position bias (one table shared by all layers)."""


def describe(name: str) -> str:
    """The one-line description of recipe `name` (its docstring's first line)."""
    return (RECIPES[name].__doc__ or "").strip().splitlines()[0]


RECIPES: dict[str, Callable[[], RunConfig]] = {
    "demo": demo,
    "mlm_tiny": mlm("tiny", steps=10_000, batch_size=64, lr=1e-3, warmup_steps=500),
    "mlm_mini": mlm("mini", steps=20_000, batch_size=64, lr=7e-4, warmup_steps=1000),
    "mlm_small": mlm("small", steps=50_000, batch_size=64, lr=5e-4, warmup_steps=2000),
    # RoBERTa-base's schedule (Liu et al. 2019, table 9) scaled to one node: 125k steps, peak 6e-4
    "mlm_base": mlm("base", steps=125_000, batch_size=32, grad_accum=8, lr=6e-4, warmup_steps=10_000, seq_len=512),
    "mlm_large": mlm("large", steps=125_000, batch_size=16, grad_accum=16, lr=4e-4, warmup_steps=10_000, seq_len=512),
    "maelm_mini": maelm("mini", steps=20_000, batch_size=64, lr=7e-4, warmup_steps=1000),
    "maelm_small": maelm("small", steps=50_000, batch_size=64, lr=5e-4, warmup_steps=2000),
    "maelm_base": maelm("base", steps=125_000, batch_size=32, grad_accum=8, lr=6e-4, warmup_steps=10_000, seq_len=512),
    # mini / small: the mlm_* schedules of the same size; base: the paper's lr 6e-4 on mlm_base's one-node
    # schedule (the paper: 0.5M steps of 7680 x 512 with 24k warmup)
    "pmlm_mini": pmlm("mini", steps=20_000, batch_size=64, lr=7e-4, warmup_steps=1000),
    "pmlm_small": pmlm("small", steps=50_000, batch_size=64, lr=5e-4, warmup_steps=2000),
    "pmlm_base": pmlm("base", steps=125_000, batch_size=32, grad_accum=8, lr=6e-4, warmup_steps=10_000, seq_len=512),
    # mini / small: the mlm_* schedules of the same size, so the objectives compare at equal data and steps
    "cocolm_mini": cocolm("mini", steps=20_000, batch_size=64, lr=7e-4, warmup_steps=1000, generator_layers=1),
    "cocolm_small": cocolm("small", steps=50_000, batch_size=64, lr=5e-4, warmup_steps=2000, generator_layers=1),
    # base: the paper's base runs are 125k steps of 2048 x 512 with 10k warmup (appendix; the released
    # code has no pretraining script); on one node 256 sequences per step, so a lower peak lr, 2e-4
    # (ELECTRA-base's at that batch size)
    "cocolm_base": cocolm("base", steps=125_000, batch_size=32, grad_accum=8, lr=2e-4, warmup_steps=10_000,
                          generator_layers=4, seq_len=512),
    # ELECTRA-Small's recipe (table 6: lr 5e-4, 128 x 128 tokens, 10k warmup, generator 1/4 of the width)
    # on the mini (its 256 width at 4 layers) and small encoders, for 100k of its 1M steps
    "electra_mini": electra("mini", steps=100_000, batch_size=128, lr=5e-4, warmup_steps=10_000, generator_hidden_size=64),
    "electra_small": electra("small", steps=100_000, batch_size=128, lr=5e-4, warmup_steps=10_000,
                             generator_hidden_size=128),
    # ELECTRA-Base's (table 6): lr 2e-4, 256 x 512 tokens, 766k steps, 10k warmup, generator 1/3 of the width
    "electra_base": electra("base", steps=766_000, batch_size=32, grad_accum=8, lr=2e-4, warmup_steps=10_000,
                            generator_hidden_size=256, seq_len=512),
}
