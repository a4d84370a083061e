"""Masked language modelling: BERT (Devlin et al. 2019, section 3.1) / RoBERTa (Liu et al. 2019).

15% of tokens are chosen (token, whole-word or span granularity); of those 80% become [MASK],
10% a random token and 10% stay. The vocabulary projection runs on the chosen positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch
import torch.nn.functional as F

from ..model.encoder import Encoder, EncoderConfig
from ..model.heads import LMHead
from . import masking
from .base import Objective, ObjectiveOutput, TokenBatch, Vocab, ratio


@dataclass
class MLMConfig:
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    masking: Literal["token", "whole_word", "span"] = "token"

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), not {self.mask_prob}")
        if self.mask_token_prob + self.random_token_prob > 1 or min(self.mask_token_prob, self.random_token_prob) < 0:
            raise ValueError("mask_token_prob + random_token_prob must lie in [0, 1]")
        if self.masking not in ("token", "whole_word", "span"):
            raise ValueError(f"masking must be token, whole_word or span, not {self.masking!r}")


def choose_mask(batch: TokenBatch, cfg: MLMConfig, vocab: Vocab, rng: torch.Generator) -> torch.Tensor:
    """(B, T) bool: the positions to predict, at the configured granularity."""
    candidates = masking.candidate_mask(batch.input_ids, vocab.special_ids)
    if cfg.masking == "whole_word" and vocab.word_start is not None:
        return masking.whole_word_mask(batch.input_ids, candidates, vocab.word_start, cfg.mask_prob, rng)
    if cfg.masking == "span":
        return masking.span_mask(candidates, cfg.mask_prob, rng)
    return masking.token_mask(candidates, cfg.mask_prob, rng)


class MLM(Objective):
    name = "mlm"
    Config = MLMConfig

    def __init__(self, cfg: MLMConfig, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__(cfg, encoder_cfg, vocab)
        self.head = LMHead(encoder_cfg.hidden_size, encoder_cfg.vocab_size, encoder_cfg.layer_norm_eps)

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        mask = choose_mask(batch, self.cfg, self.vocab, rng)                              # (B, T)
        corrupted = masking.apply_bert_replacement(
            batch.input_ids, mask, self.vocab.mask, self.vocab.size, rng,
            self.cfg.mask_token_prob, self.cfg.random_token_prob)
        labels = torch.where(mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
        return batch.replace(input_ids=corrupted, labels=labels)

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        hidden = encoder(batch.input_ids, position_ids=batch.position_ids,
                         token_type_ids=batch.token_type_ids, attention_mask=batch.attention_mask)  # (B, T, D)
        selected = batch.labels.ne(-100)                                                   # (B, T)
        targets = batch.labels[selected]                                                   # (N,)
        logits = self.head(hidden[selected], encoder.word_embeddings.weight)              # (N, V)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        n = selected.sum()
        correct = (logits.argmax(-1) == targets).sum()
        return ObjectiveOutput(loss, n, {"mlm_loss": ratio(loss, n), "mlm_acc": ratio(correct, n)})

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        if "mlm_loss" in means:
            means = {**means, "mlm_ppl": math.exp(min(means["mlm_loss"], 50.0))}
        return means
