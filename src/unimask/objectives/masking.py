"""Corruption as pure functions of (tensors, explicit torch.Generator): no global RNG, no state.

Every function here is deterministic given its inputs and the generator's state, so the data
loader can re-create any batch's corruption from (seed, epoch, micro-batch index).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def candidate_mask(input_ids: Tensor, special_ids: list[int]) -> Tensor:
    """(B, T) True at ordinary tokens that may be masked ([CLS], [SEP], [PAD]... may not)."""
    special = torch.tensor(special_ids, device=input_ids.device)
    return ~torch.isin(input_ids, special)


def _take_lowest(scores: Tensor, budget: Tensor) -> Tensor:
    """(B, N) scores, (B,) budget -> (B, N) bool: the `budget[b]` lowest-scoring entries of row b."""
    rank = scores.argsort(dim=-1).argsort(dim=-1)
    return rank < budget[:, None]


def budget_for(candidates: Tensor, prob: float) -> Tensor:
    """(B,) number of tokens to mask per row: round(prob * candidates), at least 1 if any candidate."""
    n = candidates.sum(-1)
    return torch.where(n > 0, (n.float() * prob).round().long().clamp(min=1), n)


def token_mask(candidates: Tensor, prob: float, rng: torch.Generator) -> Tensor:
    """Exactly round(prob * n) uniformly chosen candidate tokens per row (BERT, section 3.1)."""
    scores = torch.rand(candidates.shape, generator=rng, device=candidates.device)
    scores = scores.masked_fill(~candidates, 2.0)
    return _take_lowest(scores, budget_for(candidates, prob)) & candidates


def whole_word_mask(input_ids: Tensor, candidates: Tensor, word_start: Tensor, prob: float,
                    rng: torch.Generator) -> Tensor:
    """Mask whole words (a start token and its "##" continuations) until round(prob * n) tokens.

    Words are taken in random order while the running token count stays within the budget, as in
    BERT's whole-word-masking release; the first word is always taken.
    """
    B, T = input_ids.shape
    previous = torch.cat([torch.zeros_like(candidates[:, :1]), candidates[:, :-1]], dim=1)  # no wrap-around
    starts = candidates & (word_start[input_ids] | ~previous)              # a row may open mid-word
    word = torch.cumsum(starts.long(), dim=1) - 1                          # (B, T) word index per token
    word = torch.where(candidates, word, torch.full_like(word, T))         # non-candidates -> dummy T
    length = torch.zeros(B, T + 1, dtype=torch.long, device=input_ids.device)
    length.scatter_add_(1, word, torch.ones_like(word))                    # (B, T+1) tokens per word
    length = length[:, :T]
    exists = length > 0
    scores = torch.rand(B, T, generator=rng, device=input_ids.device).masked_fill(~exists, 2.0)
    order = scores.argsort(dim=-1)                                         # words in random order
    running = torch.cumsum(length.gather(1, order), dim=1)                 # (B, T) tokens so far
    budget = budget_for(candidates, prob)
    take_sorted = (running <= budget[:, None]) | (torch.arange(T, device=input_ids.device) == 0)
    take_sorted &= exists.gather(1, order)
    taken = torch.zeros(B, T + 1, dtype=torch.bool, device=input_ids.device)
    taken[:, :T].scatter_(1, order, take_sorted)
    return taken.gather(1, word) & candidates


def span_mask(candidates: Tensor, prob: float, rng: torch.Generator, geometric_p: float = 0.2,
              max_length: int = 10) -> Tensor:
    """SpanBERT-style spans (Joshi et al. 2020, section 3.1) over tokens: lengths ~ Geometric(p)
    clipped to max_length, random starts, until round(prob * n) tokens per row are masked."""
    B, T = candidates.shape
    budget = budget_for(candidates, prob).tolist()
    out = torch.zeros_like(candidates)
    for b in range(B):
        allowed = candidates[b]
        need = budget[b]
        for _ in range(4 * T):
            if need <= 0:
                break
            u = torch.rand(2, generator=rng).tolist()
            length = min(max_length, 1 + int(math.log(1 - u[0]) / math.log(1 - geometric_p)))
            length = min(length, need)
            start = int(u[1] * (T - length + 1))
            span = allowed[start:start + length] & ~out[b, start:start + length]
            out[b, start:start + length] |= span
            need -= int(span.sum())
    return out


def apply_bert_replacement(input_ids: Tensor, mask: Tensor, mask_id: int, vocab_size: int,
                           rng: torch.Generator, mask_token_prob: float = 0.8,
                           random_token_prob: float = 0.1) -> Tensor:
    """BERT's 80/10/10: of the masked positions, [MASK] / a uniform random token / unchanged."""
    u = torch.rand(input_ids.shape, generator=rng, device=input_ids.device)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=rng, device=input_ids.device)
    out = torch.where(mask & (u < mask_token_prob), torch.full_like(input_ids, mask_id), input_ids)
    use_random = mask & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    return torch.where(use_random, random_ids, out)


def sample_tokens(logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """(N, V) logits -> (N,) ids sampled from softmax(logits / temperature) by inverse CDF.

    One uniform per row and a binary search in the cumulative distribution: about 20x cheaper than
    torch.multinomial on the CPU for BERT-sized vocabularies (DESIGN.md section 9). No gradient.
    """
    with torch.no_grad():
        probs = torch.softmax(logits.float() / temperature, dim=-1)      # (N, V)
        cdf = probs.cumsum_(dim=-1)
        u = torch.rand(logits.shape[0], 1, device=logits.device, generator=generator) * cdf[:, -1:]
        return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=logits.shape[-1] - 1)
