"""Fixed-length blocks from a token store, in a deterministic, resumable, rank-aware order.

The order is a function of (seed, epoch) only. Training consumes *global micro-batches*: global
micro-batch g holds samples [g*B, (g+1)*B) of the shuffled stream, is corrupted with an RNG seeded
from (seed, g), and is read by rank g % world_size. Optimizer step s with accumulation A on W ranks
uses micro-batches [s*A*W, (s+1)*A*W), so (A, W) = (2, 1) and (1, 2) see the same data and the same
corruption, and a resumed run picks up at exactly the next micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..objectives.base import TokenBatch
from .store import TokenStore


@dataclass
class DataConfig:
    path: str = ""           # a directory written by `unimask prepare`; "" = the built-in corpus
    seq_len: int = 128       # tokens per block, [CLS] included

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise ValueError(f"seq_len must be at least 8, not {self.seq_len}")


class Blocks:
    """Block i = [CLS] + stream[i*(L-1) : (i+1)*(L-1)], padded with [PAD] at the end of the stream.

    The stream is every document followed by [SEP] (see data/prepare.py), so blocks cross document
    boundaries like RoBERTa's FULL-SENTENCES packing. Nothing is read until a block is asked for.
    """

    def __init__(self, store: TokenStore, seq_len: int, full_only: bool) -> None:
        self.store, self.seq_len = store, seq_len
        self.stride = seq_len - 1
        n = len(store)
        count = n // self.stride if full_only else -(-n // self.stride)
        self.count = max(count, 1 if n else 0)
        self.cls, self.pad = store.special_ids["cls"], store.special_ids["pad"]

    def __len__(self) -> int:
        return self.count

    def gather(self, indices: np.ndarray) -> TokenBatch:
        """(B,) block indices -> TokenBatch with input_ids (B, L) and a padding mask if any pad."""
        out = np.full((len(indices), self.seq_len), self.pad, dtype=np.int64)
        out[:, 0] = self.cls
        for row, i in enumerate(indices):
            piece = self.store.tokens[i * self.stride:(i + 1) * self.stride]
            out[row, 1:1 + len(piece)] = piece
        ids = torch.from_numpy(out)
        short = int(min(len(self.store) - i * self.stride for i in indices)) < self.stride
        mask = ids.ne(self.pad) if short else None
        return TokenBatch(ids, attention_mask=mask)


def _epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def corruption_rng(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """The RNG for global micro-batch `index` (stream 0: training, 1: evaluation)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0] >> 1))


class TrainLoader:
    """Infinite iterator of corrupted micro-batches for one rank; `state_dict` resumes it exactly.
    With `pin_memory` (training on CUDA) the batches come in page-locked memory, so the trainer's
    non-blocking copy to the device does not hold the host up."""

    def __init__(self, blocks: Blocks, batch_size: int, seed: int, corrupt: Callable,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> None:
        if len(blocks) == 0:
            raise ValueError("the training split is empty")
        self.blocks, self.batch_size, self.seed, self.corrupt = blocks, batch_size, seed, corrupt
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        self.next_index = 0          # the next global micro-batch to be consumed by rank 0's group
        self._orders: dict[int, np.ndarray] = {}

    def _samples(self, g: int) -> np.ndarray:
        n = len(self.blocks)
        positions = np.arange(g * self.batch_size, (g + 1) * self.batch_size)
        epochs, offsets = positions // n, positions % n
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            if e not in self._orders:
                self._orders = {k: v for k, v in self._orders.items() if k >= e - 1}
                self._orders[int(e)] = _epoch_order(n, self.seed, int(e))
            sel = epochs == e
            out[sel] = self._orders[int(e)][offsets[sel]]
        return out

    def epoch(self) -> float:
        return self.next_index * self.batch_size / len(self.blocks)

    def __iter__(self) -> Iterator[TokenBatch]:
        return self

    def __next__(self) -> TokenBatch:
        g = self.next_index + self.rank
        self.next_index += self.world_size
        batch = self.corrupt(self.blocks.gather(self._samples(g)), corruption_rng(self.seed, g))
        return batch.pin_memory() if self.pin_memory else batch

    def state_dict(self) -> dict:
        return {"next_index": self.next_index, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["batch_size"] != self.batch_size or state["seed"] != self.seed:
            raise ValueError("the loader state was saved with another batch size or seed")
        self.next_index = int(state["next_index"])


def eval_batches(blocks: Blocks, batch_size: int, num_batches: int, seed: int, corrupt: Callable,
                 rank: int = 0, world_size: int = 1) -> Iterator[TokenBatch]:
    """The first held-out blocks in order, with fixed corruption, so every evaluation of a run scores
    the same tokens. Rank r takes batches r, r+W, ...; every rank gets the same number of batches
    (FSDP's forward is collective), so the count is rounded down to a multiple of W (and a held-out
    split smaller than W batches is shared round-robin, some batches scored twice)."""
    available = min(num_batches, -(-len(blocks) // batch_size))
    per_rank = max(1, available // world_size) if available else 0
    for k in range(per_rank):
        g = (rank + k * world_size) % available
        idx = np.arange(g * batch_size, min((g + 1) * batch_size, len(blocks)))
        yield corrupt(blocks.gather(idx), corruption_rng(seed, g, stream=1))
