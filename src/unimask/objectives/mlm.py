"""Masked language modelling: BERT (Devlin et al. 2019, section 3.1) / RoBERTa (Liu et al. 2019).

15% of tokens are chosen (token, whole-word or span granularity); of those 80% become [MASK],
10% a random token and 10% stay. The vocabulary projection runs on the chosen positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..model.encoder import Encoder, EncoderConfig, embedding_width
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
        check_masking(self)


def check_masking(cfg) -> None:
    """Validate the masking fields that MLM, ELECTRA and COCO-LM configs share."""
    if not 0 < cfg.mask_prob < 1:
        raise ValueError(f"mask_prob must be in (0, 1), not {cfg.mask_prob}")
    if cfg.mask_token_prob + cfg.random_token_prob > 1 or min(cfg.mask_token_prob, cfg.random_token_prob) < 0:
        raise ValueError("mask_token_prob + random_token_prob must lie in [0, 1]")
    if cfg.masking not in ("token", "whole_word", "span"):
        raise ValueError(f"masking must be token, whole_word or span, not {cfg.masking!r}")


def mask_and_label(batch: TokenBatch, cfg, vocab: Vocab, rng: torch.Generator) -> TokenBatch:
    """Choose positions, replace them ([MASK] / random / kept as `cfg` says) and label them."""
    mask = choose_mask(batch, cfg, vocab, rng)                                             # (B, T)
    corrupted = masking.apply_bert_replacement(batch.input_ids, mask, vocab.mask, vocab.size, rng,
                                               cfg.mask_token_prob, cfg.random_token_prob)
    labels = torch.where(mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
    return batch.replace(input_ids=corrupted, labels=labels)


def choose_mask(batch: TokenBatch, cfg: MLMConfig, vocab: Vocab, rng: torch.Generator) -> torch.Tensor:
    """(B, T) bool: the positions to predict, at the configured granularity."""
    candidates = masking.candidate_mask(batch.input_ids, vocab.special_ids)
    if cfg.masking == "whole_word":
        return masking.whole_word_mask(batch.input_ids, candidates, vocab.word_start, cfg.mask_prob, rng)
    if cfg.masking == "span":
        return masking.span_mask(candidates, cfg.mask_prob, rng)
    return masking.token_mask(candidates, cfg.mask_prob, rng)


class _RowCrossEntropy(torch.autograd.Function):
    """CE(logits_i, target_i) per row in fp32, computed in row chunks that stay in cache.

    The same math as `F.cross_entropy(logits.float(), targets, reduction="none")`: per row
    logsumexp(x) - x[target] with x upcast to fp32, gradient (softmax(x) - onehot) * grad, but
    without materialising the fp32 copy of the (N, V) logits, its log-softmax and its fp32 gradient
    (three N x V x 4-byte tensors, plus the casts back to bf16 under autocast): each chunk of rows is
    upcast, reduced and (in backward) turned into its gradient while it is in cache, and the gradient
    is written straight in the logits' dtype. Also returns the argmax per row (identical to
    `logits.argmax(-1)`: the upcast to fp32 is exact), which the accuracy metric needs.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk: int):
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)          # (N,)
        predicted = torch.empty(n, dtype=torch.long, device=logits.device)       # (N,)
        for s in range(0, n, chunk):
            x = logits[s:s + chunk].float()                                      # (c, V) fp32
            torch.logsumexp(x, dim=-1, out=lse[s:s + chunk])
            torch.argmax(x, dim=-1, out=predicted[s:s + chunk])
        target_logit = logits.gather(1, targets[:, None]).squeeze(1).float()     # (N,)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(predicted)
        return lse - target_logit, predicted

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: Tensor, _grad_predicted):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)                                          # (N, V), logits' dtype
        c = ctx.chunk
        # On the CPU, where each pass over a chunk costs memory bandwidth, a positive row gradient g
        # (the usual case: a summed or mean loss) is folded into the exponent, softmax * g =
        # exp(x - (lse - log g)): a chunk takes two passes over memory instead of five in fp32 (the
        # result is written in place), four in bf16; otherwise, and on CUDA (no host sync), softmax * g.
        fold = logits.device.type == "cpu" and bool((grad_rows > 0).all())
        shift = lse - grad_rows.log() if fold else lse                           # (N,) fp32
        for s in range(0, logits.shape[0], c):
            x, g = logits[s:s + c], grad_rows[s:s + c]                           # (c, V), (c,)
            if x.dtype == torch.float32:
                p = torch.sub(x, shift[s:s + c, None], out=grad[s:s + c])        # (c, V), in the output
            else:                                  # a bf16 - fp32 subtraction is slower than upcast, sub_
                p = x.to(torch.float32, copy=True).sub_(shift[s:s + c, None])    # (c, V) fp32
            p.exp_()                                                             # softmax (x g when folded)
            rows = torch.arange(p.shape[0], device=p.device)
            p[rows, targets[s:s + c]] -= g if fold else 1.0                      # - onehot (x g)
            if not fold:
                p.mul_(g[:, None])
            if x.dtype != torch.float32:                                         # fp32 was written in place
                grad[s:s + c] = p                                                # cast to the logits' dtype
        return grad, None, None


def row_cross_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, V) logits (any float dtype), (N,) targets -> ((N,) fp32 CE per row, (N,) argmax predictions)."""
    # elements per chunk: 16 MB of fp32 on the CPU stays in L3 and under glibc's largest mmap
    # threshold (freed chunks are reused without page faults), yet makes few enough kernels that an
    # oversubscribed machine does not stall the threads at every one of them
    budget = (1 << 22) if logits.device.type == "cpu" else (1 << 26)
    chunk = max(1, budget // max(1, logits.shape[-1]))
    return _RowCrossEntropy.apply(logits, targets, chunk)


def summed_cross_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N, V) logits, (N,) targets -> (fp32 summed CE, (N,) argmax predictions)."""
    rows, predicted = row_cross_entropy(logits, targets)
    return rows.sum(), predicted


def predict_masked(head: LMHead, hidden: Tensor, labels: Tensor, encoder: Encoder) -> ObjectiveOutput:
    """The tied LM head at the labelled positions only: summed CE, count, mlm_loss / mlm_acc."""
    selected = labels.ne(-100)                                                       # (B, T)
    targets = labels[selected]                                                       # (N,)
    logits = head(hidden[selected], encoder.word_embeddings.weight)                  # (N, V)
    loss, predicted = summed_cross_entropy(logits, targets)                          # fp32, (N,)
    n = selected.sum()
    correct = (predicted == targets).sum()
    return ObjectiveOutput(loss, n, {"mlm_loss": ratio(loss, n), "mlm_acc": ratio(correct, n)})


def with_perplexity(means: dict[str, float]) -> dict[str, float]:
    if "mlm_loss" in means:
        means = {**means, "mlm_ppl": math.exp(min(means["mlm_loss"], 50.0))}
    return means


class MLM(Objective):
    name = "mlm"
    Config = MLMConfig

    def __init__(self, cfg: MLMConfig, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__(cfg, encoder_cfg, vocab)
        if cfg.masking == "whole_word" and vocab.word_start is None:
            raise ValueError("whole_word masking needs the tokenizer's word_start table in Vocab")
        self.head = LMHead(encoder_cfg.hidden_size, encoder_cfg.vocab_size, encoder_cfg.layer_norm_eps,
                           embedding_size=embedding_width(encoder_cfg))

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        return mask_and_label(batch, self.cfg, self.vocab, rng)

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        hidden = encoder(batch.input_ids, position_ids=batch.position_ids,
                         token_type_ids=batch.token_type_ids, attention_mask=batch.attention_mask)  # (B, T, D)
        return predict_masked(self.head, hidden, batch.labels, encoder)

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return with_perplexity(means)
