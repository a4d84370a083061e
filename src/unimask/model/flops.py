"""Analytic matmul FLOPs of the model's parts, for `unimask bench`'s achieved TFLOP/s and MFU.

Convention (Kaplan et al. 2020; PaLM appendix B): a forward pass costs 2 FLOPs per weight and
token, plus 4 T D per token and layer for attention's Q K^T and P V; a training pass (forward and
backward w.r.t. inputs and weights) costs 3x that. Embedding lookups, LayerNorm, softmax, GELU,
dropout and the optimizer are memory-bound and not counted. Masks do not save attention FLOPs
(SDPA computes the full T x T scores), so a layout over T tokens costs the T x T attention.
"""

from __future__ import annotations

from .encoder import EncoderConfig

FORWARD, TRAIN = 2, 6   # FLOPs per weight and token: forward only, forward + backward


def stack_matmul_params(cfg: EncoderConfig) -> int:
    """Weights that multiply every token once per layer: Q, K, V, out (4 D^2) and the MLP (2 D I)."""
    D, I = cfg.hidden_size, cfg.intermediate_size
    return cfg.num_layers * (4 * D * D + 2 * D * I)


def stack_flops(cfg: EncoderConfig, seq_len: float, per: int = TRAIN) -> float:
    """FLOPs per token of a BlockStack over sequences of `seq_len` tokens (`per` = TRAIN or FORWARD)."""
    return per * stack_matmul_params(cfg) + per * cfg.num_layers * 2 * seq_len * cfg.hidden_size


def lm_head_flops(hidden: int, embedding: int, vocab: int, per: int = TRAIN) -> float:
    """FLOPs per predicted row of LMHead: dense hidden -> embedding width, tied projection to the vocabulary."""
    return per * (hidden * embedding + embedding * vocab)
