"""The contract between objectives and the trainer (fairseq's criterion contract, DESIGN.md section 3).

An objective owns its heads, auxiliary networks and loss. `corrupt` is a pure function of the
batch and an explicit RNG and runs in the data loader; `forward` returns a *summed* loss and its
target count, and the trainer divides by the count summed over micro-batches and workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from ..model.encoder import Encoder, EncoderConfig


@dataclass
class TokenBatch:
    input_ids: Tensor                       # (B, T) long
    attention_mask: Tensor | None = None    # (B, T) padding or (B, T, T) layout, bool "may attend"
    position_ids: Tensor | None = None      # (B, T) long
    token_type_ids: Tensor | None = None    # (B, T) long
    labels: Tensor | None = None            # (B, T) long, -100 where nothing is predicted
    extras: dict[str, Tensor] = field(default_factory=dict)  # objective-specific tensors

    def to(self, device: torch.device | str) -> "TokenBatch":
        """On `device`; the copies are asynchronous from pinned memory (`pin_memory`) to CUDA."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "TokenBatch":
        """In page-locked host memory, so `to("cuda")` copies without blocking the host (CUDA only)."""
        return self._map(Tensor.pin_memory)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "TokenBatch":
        move = lambda t: fn(t) if isinstance(t, Tensor) else t  # noqa: E731
        fields = {f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extras"}
        return TokenBatch(**fields, extras={k: move(v) for k, v in self.extras.items()})

    def replace(self, **changes) -> "TokenBatch":
        return dataclasses.replace(self, **changes)

    @property
    def num_tokens(self) -> int:
        """Text tokens in the batch (labels cover the full text when the encoder sees fewer, MAE-LM)."""
        return (self.labels if self.labels is not None else self.input_ids).numel()


@dataclass
class ObjectiveOutput:
    loss: Tensor                  # scalar, summed over predicted positions / pairs
    num_targets: Tensor           # scalar, the loss's denominator
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached (2,) [numerator, denominator]


def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """A summable metric: sums over micro-batches and workers, then divided once."""
    return torch.stack([numerator.detach().float(), denominator.detach().float()])


@dataclass(frozen=True)
class Vocab:
    """What corruption needs to know about the tokenizer."""

    size: int
    pad: int = 0
    unk: int = 1
    cls: int = 2
    sep: int = 3
    mask: int = 4
    word_start: Tensor | None = None     # (size,) bool, True where a token starts a word (data.store.word_start_table)

    @property
    def special_ids(self) -> list[int]:
        return [self.pad, self.unk, self.cls, self.sep, self.mask]


class Objective(nn.Module):
    """Base class. Subclasses set `name`, `Config` and implement `forward`."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, cfg, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__()
        self.cfg, self.encoder_cfg, self.vocab = cfg, encoder_cfg, vocab
        # Set by the trainer under data parallelism (train/parallel.py): (N, ...) -> (world*N, ...),
        # differentiable. Objectives that want cross-rank negatives use it; None on one process.
        self.all_gather: Callable[[Tensor], Tensor] | None = None

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        return batch

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        raise NotImplementedError

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Derived figures for logs (e.g. perplexity) from the averaged metrics."""
        return means


class PretrainModel(nn.Module):
    """Encoder + objective as one module, so DDP/FSDP/compile wrap a single thing."""

    def __init__(self, encoder: Encoder, objective: Objective) -> None:
        super().__init__()
        self.encoder, self.objective = encoder, objective

    def forward(self, batch: TokenBatch) -> ObjectiveOutput:
        return self.objective(self.encoder, batch)
