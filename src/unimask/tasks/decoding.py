"""Left-to-right generation for UniLM-style sequence-to-sequence models: beam search over a decoder
state that either reuses keys/values (one new target token and one pseudo [MASK] per step) or
recomputes the whole prefix.

A fine-tuned model (tasks/seq2seq.py) predicts target token t at a pseudo [MASK] token that sits at
t's position and attends to the source, the target tokens before t, and itself (UniLM, Dong et al.
2019, the sequence-to-sequence mask and its decoding; UniLMv2, Bao et al. 2020, fine-tuning for
generation with pseudo masks, as in the s2s-ft code). Decoding therefore

    1. encodes the source once, bidirectionally, and caches its keys/values at every layer;
    2. step 0: feeds [MASK] at position S (S = source length) and reads the first token's distribution;
    3. step t > 0: feeds [y(t-1) at position S+t-1, MASK at position S+t]; y(t-1) attends to the cache
       and itself, the MASK to the cache, y(t-1) and itself; the MASK's output predicts y(t); only
       y(t-1)'s keys/values join the cache (a pseudo token is never seen by a later token).

Because no token ever attends to a later one, this equals recomputing the prefix at every step
(`RecomputingDecoder`, the `--no-cache` path and the test reference). Beam search follows fairseq:
hypotheses are ranked by summed log-probability / length ** length_penalty (length counts the [SEP]
that ends them), a beam source stops once it holds `beam_size` finished hypotheses, repeated n-grams
can be blocked, [SEP] is forbidden before `min_length` tokens and forced after `max_length`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .configs import GenerationConfig  # noqa: F401 (re-exported)


class DecoderState(Protocol):
    """What beam search needs from a model: next-token log-probabilities per row, and row selection."""

    def step(self, tokens: Tensor | None) -> Tensor:
        """Append `tokens` (N,) to every row's output (None at the first step) and return the
        log-probabilities of the next token (N, V)."""

    def reorder(self, rows: Tensor) -> None:
        """Keep rows `rows` (N',) of the current N, in that order (duplicates allowed). A state may
        have a `device` attribute: the device of `tokens` and `rows` (default CPU)."""


@dataclass(frozen=True)
class Seq2SeqIds:
    """The token ids and token types that the decoder feeds."""

    mask: int
    sep: int
    source_type: int = 0
    target_type: int = 1


class _Base:
    def __init__(self, encoder: nn.Module, head: nn.Module, source_ids: Tensor, source_lengths: Tensor,
                 ids: Seq2SeqIds) -> None:
        self.encoder, self.head, self.ids = encoder, head, ids
        self.source_ids, self.source_lengths = source_ids, source_lengths   # (N, S), (N,)
        self.t = 0                                                            # tokens appended so far

    @property
    def device(self) -> torch.device:
        return self.source_ids.device

    def _log_probs(self, hidden: Tensor) -> Tensor:
        return F.log_softmax(self.head(hidden).float(), dim=-1)             # (N, D) -> (N, V)


class CachedDecoder(_Base):
    """Keys/values of the source and of every generated token are computed once (Encoder.step)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, source_ids: Tensor, source_lengths: Tensor,
                 ids: Seq2SeqIds) -> None:
        super().__init__(encoder, head, source_ids, source_lengths, ids)
        N, S = source_ids.shape
        positions = torch.arange(S, device=source_ids.device).expand(N, S)                  # (N, S)
        self.valid = positions < source_lengths[:, None]                                   # (N, P) keys that exist
        # the source attends to the (real) source only: bidirectional, as in training
        _, self.past = encoder.step(source_ids, position_ids=positions, attention_mask=self.valid,
                                    token_type_ids=torch.full_like(source_ids, ids.source_type))
        self.past_positions = positions                                                    # (N, P)

    def step(self, tokens: Tensor | None) -> Tensor:
        N, P = self.valid.shape
        device = self.valid.device
        pseudo = self.source_lengths + self.t                                               # (N,) next position
        mask_ids = torch.full((N, 1), self.ids.mask, device=device)
        if tokens is None:
            new_ids, positions = mask_ids, pseudo[:, None]                                  # (N, 1)
            own = torch.ones(1, 1, dtype=torch.bool, device=device)
        else:
            new_ids = torch.cat([tokens[:, None], mask_ids], 1)                             # (N, 2) [y(t-1), MASK]
            positions = torch.stack([pseudo - 1, pseudo], 1)                                # (N, 2)
            own = torch.tensor([[True, False], [True, True]], device=device)               # y sees itself; MASK sees y and itself
        T = new_ids.shape[1]
        mask = torch.cat([self.valid[:, None, :].expand(N, T, P), own.expand(N, T, T)], 2)  # (N, T, P + T)
        hidden, new = self.encoder.step(new_ids, position_ids=positions, attention_mask=mask,
                                        token_type_ids=torch.full_like(new_ids, self.ids.target_type),
                                        past=self.past, past_position_ids=self.past_positions)
        if tokens is not None:   # only the true token joins the cache; the pseudo token is forgotten
            self.past = [(torch.cat([k, nk[:, :, :1]], 2), torch.cat([v, nv[:, :, :1]], 2))
                         for (k, v), (nk, nv) in zip(self.past, new)]                        # (N, H, P + 1, Dh)
            self.past_positions = torch.cat([self.past_positions, positions[:, :1]], 1)
            self.valid = torch.cat([self.valid, torch.ones(N, 1, dtype=torch.bool, device=device)], 1)
        self.t += 1
        return self._log_probs(hidden[:, -1])

    def reorder(self, rows: Tensor) -> None:
        self.past = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.past]
        self.past_positions = self.past_positions.index_select(0, rows)
        self.valid = self.valid.index_select(0, rows)
        self.source_ids = self.source_ids.index_select(0, rows)
        self.source_lengths = self.source_lengths.index_select(0, rows)


class RecomputingDecoder(_Base):
    """Runs [source | y(0) .. y(t-1) | MASK] through the whole encoder at every step (no cache)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, source_ids: Tensor, source_lengths: Tensor,
                 ids: Seq2SeqIds) -> None:
        super().__init__(encoder, head, source_ids, source_lengths, ids)
        self.output = source_ids.new_zeros((source_ids.shape[0], 0))                         # (N, t)

    def step(self, tokens: Tensor | None) -> Tensor:
        if tokens is not None:
            self.output = torch.cat([self.output, tokens[:, None]], 1)
        (N, S), t, device = self.source_ids.shape, self.output.shape[1], self.source_ids.device
        lengths = self.source_lengths
        input_ids = torch.cat([self.source_ids, self.output, torch.full((N, 1), self.ids.mask, device=device)], 1)
        L = S + t + 1
        index = torch.arange(L, device=device)
        # position ids: source 0..S-1; y(i) and the MASK continue from the source's real length
        positions = torch.where(index < S, index, lengths[:, None] + index - S)            # (N, L)
        types = torch.where(index < S, self.ids.source_type, self.ids.target_type).expand(N, L)
        key_is_source = (index < S)[None, :] & (index[None, :] < lengths[:, None])         # (N, L) real source keys
        causal = (index[None, :] >= S) & (index[None, :] <= index[:, None])                # (L, L) target keys up to the query
        query_is_source = (index < S)[:, None]                                             # (L, 1)
        mask = key_is_source[:, None, :] | (causal & ~query_is_source)[None]               # (N, L, L)
        hidden = self.encoder(input_ids, position_ids=positions, token_type_ids=types, attention_mask=mask)
        self.t += 1
        return self._log_probs(hidden[:, -1])

    def reorder(self, rows: Tensor) -> None:
        self.source_ids = self.source_ids.index_select(0, rows)
        self.source_lengths = self.source_lengths.index_select(0, rows)
        self.output = self.output.index_select(0, rows)


def _blocked(hypothesis: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of `hypothesis` if appended to it (fairseq's rule)."""
    if n <= 0 or len(hypothesis) < n - 1:
        return []
    if n == 1:
        return list(set(hypothesis))
    tail = tuple(hypothesis[len(hypothesis) - n + 1:])
    return [hypothesis[i + n - 1] for i in range(len(hypothesis) - n + 1)
            if tuple(hypothesis[i:i + n - 1]) == tail]


@torch.no_grad()
def beam_search(state: DecoderState, num_sources: int, cfg: GenerationConfig, eos: int, max_length: int,
                banned: Sequence[int] = ()) -> list[tuple[list[int], float]]:
    """(tokens without the final [SEP], score) per source: the best finished hypothesis by
    sum of log-probabilities / (len + 1) ** length_penalty. `state` starts with one row per source;
    `max_length` bounds the tokens before [SEP]; `banned` ids are never generated.

    Per step, every live beam's next-token log-probabilities are added to its score; of the 2K best
    continuations of a source (K = beam size), [SEP]-ending ones among the first K finish, the first
    K others live on. A source is done when it has K finished hypotheses (or at `max_length`, where
    [SEP] is forced). Beam size 1 is greedy decoding.
    """
    K, n = cfg.beam_size, cfg.blocked_ngram_size
    device = getattr(state, "device", torch.device("cpu"))
    state.reorder(torch.arange(num_sources, device=device).repeat_interleave(K))
    active = list(range(num_sources))                       # source of each live group of K rows
    scores = torch.full((num_sources, K), float("-inf"))
    scores[:, 0] = 0.0                                      # (A, K) the K copies start as one beam
    output = torch.zeros((num_sources, K, 0), dtype=torch.long)   # (A, K, t) tokens so far
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(num_sources)]
    last: Tensor | None = None
    for t in range(max_length + 1):
        lp = state.step(last).float().cpu()                 # (A*K, V)
        A, V = len(active), lp.shape[-1]
        lp = lp.view(A, K, V)
        if banned:
            lp[..., list(banned)] = float("-inf")
        if t < cfg.min_length:
            lp[..., eos] = float("-inf")
        if t == max_length:                                 # out of room: only [SEP]
            forced = torch.full_like(lp, float("-inf"))
            forced[..., eos] = lp[..., eos]
            lp = forced
        if n and t >= n - 1:
            rows = output.tolist()
            for a in range(A):
                for k in range(K):
                    if scores[a, k] > float("-inf"):
                        blocked = _blocked(rows[a][k], n)
                        if blocked:
                            lp[a, k, blocked] = float("-inf")
        candidates = (scores[:, :, None] + lp).view(A, K * V)               # (A, K*V)
        top, index = candidates.topk(min(2 * K, K * V), dim=1)              # (A, 2K) best first
        beam, token = index // V, index % V
        is_eos = token == eos
        for a, k in (is_eos[:, :K] & torch.isfinite(top[:, :K])).nonzero().tolist():
            finished[active[a]].append((top[a, k].item() / (t + 1) ** cfg.length_penalty,
                                        output[a, beam[a, k]].tolist()))
        # the first K candidates that do not end the hypothesis live on (at most K of the 2K end in [SEP])
        order = (is_eos.long() * top.shape[1] + torch.arange(top.shape[1])).argsort(dim=1)[:, :K]   # (A, K)
        scores, beam, token = top.gather(1, order), beam.gather(1, order), token.gather(1, order)
        scores = scores.masked_fill(token == eos, float("-inf"))
        keep = [a for a in range(A) if t < max_length and len(finished[active[a]]) < K
                and bool(torch.isfinite(scores[a]).any())]
        if not keep:
            break
        keep_t = torch.tensor(keep)
        output = torch.cat([output[keep_t[:, None], beam[keep_t]], token[keep_t, :, None]], 2)   # (A', K, t+1)
        rows = (keep_t[:, None] * K + beam[keep_t]).flatten()               # rows of the state to keep
        state.reorder(rows.to(device))
        scores, last = scores[keep_t], token[keep_t].flatten().to(device)
        active = [active[a] for a in keep]
    results = []
    for hyps in finished:
        if hyps:
            score, tokens = max(hyps, key=lambda h: h[0])
            results.append((tokens, score))
        else:
            results.append(([], float("-inf")))
    return results


@torch.no_grad()
def generate(encoder: nn.Module, head: nn.Module, sources: list[list[int]], ids: Seq2SeqIds,
             cfg: GenerationConfig, max_length: int, batch_size: int = 32, pad_id: int = 0,
             banned: Sequence[int] = (), device: torch.device | str | None = None) -> list[list[int]]:
    """Token ids of the output for every source (ids with [CLS] ... [SEP] already added), in order.

    Sources are decoded in batches of `batch_size` sorted by length (less padding); `max_length`
    bounds the tokens before [SEP]. The caller puts encoder and head in eval mode.
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    positions = encoder.config.max_positions
    if encoder.config.absolute_positions and sources:
        longest = max(len(s) for s in sources)
        if longest + max_length + 1 > positions:
            raise UserError(f"a {longest}-token source plus {max_length} output tokens and [SEP] exceed the "
                            f"model's {positions} positions; lower the maximum output or source length")
    decoder = CachedDecoder if cfg.kv_cache else RecomputingDecoder
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    outputs: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(sources[i]) for i in chunk)
        source_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            source_ids[row, :len(sources[i])] = torch.tensor(sources[i])
        lengths = torch.tensor([len(sources[i]) for i in chunk])
        state = decoder(encoder, head, source_ids.to(device), lengths.to(device), ids)
        for i, (tokens, _) in zip(chunk, beam_search(state, len(chunk), cfg, ids.sep, max_length, banned)):
            outputs[i] = tokens
    return outputs
