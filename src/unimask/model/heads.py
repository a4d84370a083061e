"""Output heads that objectives and tasks put on top of the encoder's hidden states."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LMHead(nn.Module):
    """BERT's masked-LM head: dense -> GELU -> LayerNorm -> projection tied to the input embeddings.

    Call it on the hidden states of the predicted positions only, (N, D) -> (N, V): the vocabulary
    projection dominates the step at small sizes (DESIGN.md section 9), so never on every position.
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12,
                 embedding_size: int | None = None) -> None:
        """`embedding_size`: the width of the tied table when it differs from the hidden states'
        (an ELECTRA generator narrower than the embeddings it shares)."""
        super().__init__()
        embedding_size = embedding_size or hidden_size
        self.dense = nn.Linear(hidden_size, embedding_size)
        self.norm = nn.LayerNorm(embedding_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: Tensor, embedding_weight: Tensor) -> Tensor:
        # hidden: (N, D), embedding_weight: (V, E) -> logits (N, V)
        return F.linear(self.norm(F.gelu(self.dense(hidden))), embedding_weight, self.bias)

