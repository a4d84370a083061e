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
    """(B, T) bool: whole words (a start token and the pieces that continue it) up to round(prob * n).

    input_ids: (B, T) long; candidates: (B, T) bool, the maskable tokens; word_start: (V,) bool,
    True where a token begins a word in the tokenizer's convention (data.store.word_start_table:
    no "##" prefix for WordPiece, a "▁" or "Ġ" prefix for Metaspace / byte-level tokenizers). A
    candidate after a non-candidate also starts a word, so a block that opens mid-word is fine.

    The selection rule of BERT's whole-word-masking release (google-research/bert,
    create_pretraining_data.py, create_masked_lm_predictions): words in a uniformly random order;
    a word that would take the count past the budget is skipped and later, shorter words are still
    tried; stop at the budget. A row therefore never exceeds round(prob * n) and falls short only
    when no remaining word fits the gap. One departure: a row with candidates where no word fits at
    all (every word is longer than the budget) masks the first word of its random order, so no row
    is left without a target; that is the only way a row goes over its budget.
    """
    B, T = input_ids.shape
    device = input_ids.device
    previous = torch.cat([torch.zeros_like(candidates[:, :1]), candidates[:, :-1]], dim=1)  # no wrap-around
    starts = candidates & (word_start[input_ids] | ~previous)              # (B, T) a row may open mid-word
    word = torch.cumsum(starts.long(), dim=1) - 1                          # (B, T) word index per token
    word = torch.where(candidates, word, torch.full_like(word, T))         # non-candidates -> dummy T
    length = torch.zeros(B, T + 1, dtype=torch.long, device=device)
    length.scatter_add_(1, word, torch.ones_like(word))                    # (B, T+1) tokens per word
    length = length[:, :T]                                                 # (B, T) 0 = no such word
    scores = torch.rand(B, T, generator=rng, device=device).masked_fill(length == 0, 2.0)
    order = scores.argsort(dim=-1)                                         # (B, T) words in random order
    length_sorted = length.gather(1, order)                                # (B, T) their lengths, 0s last
    budget = budget_for(candidates, prob)                                  # (B,)
    masked = torch.zeros(B, dtype=torch.long, device=device)               # (B,) tokens taken so far
    take_sorted = torch.zeros(B, T, dtype=torch.bool, device=device)       # (B, T) in the random order
    for k in range(T):                                                     # BERT's loop, all rows at once
        if bool((masked >= budget).all()):                                 # nothing can fit any more
            break
        fits = (length_sorted[:, k] > 0) & (masked + length_sorted[:, k] <= budget)  # (B,) else skip it
        take_sorted[:, k] = fits
        masked += torch.where(fits, length_sorted[:, k], 0)
    take_sorted[:, 0] |= (masked == 0) & (length_sorted[:, 0] > 0)         # no word fits: the first one
    taken = torch.zeros(B, T + 1, dtype=torch.bool, device=device)
    taken[:, :T].scatter_(1, order, take_sorted)                           # (B, T+1) per word index
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


def blockwise_mask(candidates: Tensor, prob: float, rng: torch.Generator, long_block_prob: float = 0.4,
                   min_long_length: int = 2, max_long_length: int = 6,
                   budget: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """UniLMv2's blockwise masking (Bao et al. 2020, section 3, Algorithm 1) and one random
    factorization order over the blocks.

    Per row, repeat: a block length, uniform in [min_long_length, max_long_length] with probability
    `long_block_prob`, else 1; a uniform start in the span of the candidates; the block is rejected
    if it covers a non-candidate or an already masked position. Until `budget` tokens are masked,
    round(prob * candidates) by default (at least 1); a block longer than what is left of the budget
    is cut to it, so rows never overshoot. Then the K blocks of the row are numbered 0..K-1 in a
    uniformly random order (the factorization order: block k is predicted from blocks < k).

    candidates: (B, T) bool; budget: optional (B,) long, clipped to each row's candidate count.
    Returns (mask (B, T) bool, block (B, T) long: the block's place in the order, -1 where unmasked).
    """
    B, T = candidates.shape
    counts = candidates.sum(-1)                                                   # (B,)
    budget = budget_for(candidates, prob) if budget is None else budget.to(counts.device)
    budget = torch.minimum(budget, counts).tolist()
    block = torch.full((B, T), -1, dtype=torch.long)                              # (B, T), on the CPU
    cpu = candidates.cpu()
    index = torch.arange(T).expand(B, T)                                          # (B, T)
    lo = torch.where(cpu, index, T).amin(-1).tolist()                             # first candidate
    hi = (torch.where(cpu, index, -1).amax(-1) + 1).tolist()                      # last candidate + 1
    allowed_rows = cpu.tolist()
    n_long = max_long_length - min_long_length + 1
    for b in range(B):
        need = budget[b]
        free = list(allowed_rows[b])                                              # candidate and unmasked
        starts: list[tuple[int, int]] = []
        chunks = 0
        while need > 0:
            # (c, 3) uniforms per chunk: long or not, long length, start; python floats from here on
            for u_long, u_length, u_start in torch.rand(2 * need + 8, 3, generator=rng).tolist():
                length = min_long_length + int(u_length * n_long) if u_long < long_block_prob else 1
                length = min(length, need)                                       # never overshoot
                start = lo[b] + int(u_start * (hi[b] - lo[b] - length + 1))
                if all(free[start:start + length]):
                    free[start:start + length] = [False] * length
                    starts.append((start, length))
                    need -= length
                    if need == 0:
                        break
            chunks += 1
            if chunks > 100 * T + 100:     # a guard: every proposal has a chance while need <= free
                raise RuntimeError("blockwise_mask: could not place the masking budget")
        order = torch.randperm(len(starts), generator=rng).tolist()               # factorization order
        for k, (start, length) in zip(order, starts):
            block[b, start:start + length] = k
    block = block.to(candidates.device)
    return block.ge(0), block


def pseudo_mask_attention(real: Tensor, step: Tensor, valid: Tensor) -> Tensor:
    """The one-pass attention layout of partially autoregressive pseudo-masked LM (UniLMv2, Bao et
    al. 2020, section 3.2 and its self-attention mask figure), as a (B, T', T') bool "may attend".

    The sequence is [text, L | originals, N | pseudo masks, N], T' = L + 2N (see
    pmlm.pseudo_masked_batch). real: (B, L) text that is not padding; step: (B, N) the block's place
    in the factorization order of each appended pair (original slot L + j, [P] slot L + N + j);
    valid: (B, N) False where a row has fewer than N masked tokens. Query i may attend key j:
    - text keys (context and [M]) to every non-padding query; text queries see nothing else (the
      ordinary bidirectional MLM, untouched by what is appended);
    - original keys of block s to original queries of blocks >= s and [P] queries of blocks > s
      (earlier steps are known; [P] never sees its own block's originals: no explicit leakage);
    - [P] keys of block s to [P] queries of block s only (a block is predicted at once);
    - padding keys to nobody but themselves, and a padding query only to itself (finite, unused).
    No token sees a later block, not even through context tokens (no implicit leakage).
    """
    B, L = real.shape
    N = step.shape[1]
    out = torch.zeros(B, L + 2 * N, L + 2 * N, dtype=torch.bool, device=real.device)  # (B, T', T')
    query = torch.cat([real, valid, valid], dim=1)                                # (B, T') not padding
    out[:, :, :L] = query[:, :, None] & real[:, None, :]                          # text keys
    pair = valid[:, :, None] & valid[:, None, :]                                  # (B, N, N) query, key
    qs, ks = step[:, :, None], step[:, None, :]
    out[:, L:L + N, L:L + N] = pair & (ks <= qs)                                  # originals -> originals
    out[:, L + N:, L:L + N] = pair & (ks < qs)                                    # [P] -> earlier originals
    out[:, L + N:, L + N:] = pair & (ks == qs)                                    # [P] -> own block's [P]
    out.diagonal(dim1=1, dim2=2).logical_or_(~query)                              # padding: itself only
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


def mask_budget(lengths: Tensor, mask_prob: float) -> Tensor:
    """(B,) tokens to remove per row: round(mask_prob x length), at least 1 for a non-empty row.

    A function of the row's length only (the official pipeline masks mask_prob x the sample size),
    not of how many [SEP] tokens the block happens to contain, so every full block keeps the same
    number of tokens and the encoder input has one static shape.
    """
    budget = (lengths.to(torch.float64) * mask_prob).round().long()
    return torch.where(lengths > 0, budget.clamp(min=1), budget)
