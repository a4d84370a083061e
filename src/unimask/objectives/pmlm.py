"""UniLMv2's pseudo-masked language model, PMLM (Bao et al. 2020, "UniLMv2: Pseudo-Masked Language
Models for Unified Language Model Pre-Training", ICML 2020, section 3; arXiv 2002.12804).

One forward pass (the text, then the appended slots against its cached keys/values: `hidden_states`)
trains two objectives on the same masked blocks:

- AE, autoencoding (section 3.1): the corrupted text, with [M] at the masked positions (80% [MASK],
  10% a random token, 10% kept, as BERT), predicts every masked token at once, as MLM does;
- PAR, partially autoregressive (section 3.2): the masked blocks are predicted one block at a time
  in a random factorization order, block k from the context and the blocks before it in the order.

Masking is blockwise (section 3, Algorithm 1; `masking.blockwise_mask`): blocks of 2..6 tokens with
probability 0.4, else single tokens, until 15% of the text. For PAR, every masked block is appended
twice after the text: once with its original tokens (the context of later steps) and once as [P]
pseudo masks, one per token (the slots where the block is predicted). Appended tokens reuse the
position ids of the tokens they stand for, so the absolute embedding and the relative bias (which
is computed from position ids, not sequence indices) place them where they belong. A (T', T')
attention layout (`masking.pseudo_mask_attention`, section 3.2) makes the single pass equal to the
step-by-step factorization: the text never sees what is appended, [P] never sees its own block's
original tokens, and nothing sees a block later in the order.

[P] uses the [MASK] token id (and so its embedding), as the paper does: pseudo masks are told apart
from [M] slots by their position in the layout, not by their embedding. Both losses use the same
LM head, tied to the word embeddings; the total is AE + PAR (each weight a config value; a weight
of 0 switches its part off, the paper's ablation rows). AE metrics are named like MLM's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import flops
from ..model.encoder import Encoder, EncoderConfig, embedding_width
from ..model.heads import LMHead
from . import masking
from .base import Objective, ObjectiveOutput, TokenBatch, Vocab, ratio
from .mlm import row_cross_entropy, with_perplexity


@dataclass
class PMLMConfig:
    mask_prob: float = 0.15             # fraction of each block's tokens masked (in blocks)
    mask_token_prob: float = 0.8        # of the masked positions in the text: [MASK] ...
    random_token_prob: float = 0.1      # ... a random token (the rest keep their token)
    long_block_prob: float = 0.4        # probability that a block is longer than one token
    min_long_length: int = 2            # tokens; a long block's length is uniform in [min, max]
    max_long_length: int = 6            # tokens
    ae_weight: float = 1.0              # autoencoding loss at the [M] slots (0: off)
    par_weight: float = 1.0             # partially autoregressive loss at the [P] slots (0: off)

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), not {self.mask_prob}")
        if min(self.mask_token_prob, self.random_token_prob) < 0 or self.mask_token_prob + self.random_token_prob > 1:
            raise ValueError("mask_token_prob + random_token_prob must lie in [0, 1], each non-negative")
        if not 0 <= self.long_block_prob <= 1:
            raise ValueError(f"long_block_prob must be in [0, 1], not {self.long_block_prob}")
        if not 1 <= self.min_long_length <= self.max_long_length:
            raise ValueError(f"need 1 <= min_long_length <= max_long_length, not "
                             f"{self.min_long_length} and {self.max_long_length}")
        for name in ("ae_weight", "par_weight"):
            weight = getattr(self, name)
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {weight}")
        if self.ae_weight == 0 and self.par_weight == 0:
            raise ValueError("ae_weight and par_weight cannot both be 0: nothing would be trained")


def pseudo_masked_batch(batch: TokenBatch, corrupted: Tensor, block: Tensor, mask_id: int, pad_id: int,
                        append: bool = True) -> TokenBatch:
    """The PMLM input for text `batch` (its ids the originals), its corrupted ids and block order.

    corrupted: (B, L) the text with [M] slots (80/10/10 done); block: (B, L) each masked position's
    block in the factorization order, -1 elsewhere. With N the largest masked count of a row, the
    sequence is T' = L + 2N slots:

        [ text: context and [M], L | originals, N | [P] pseudo masks, N ]

    appended slots in factorization order (by position within a block); slot L + j and slot
    L + N + j stand for the same text position and carry its position id (and token type). Where
    rows mask fewer than N tokens (short, padded rows) the rest is [PAD]: attended by nobody,
    predicted nowhere. The order of the appended slots changes no output: the layout and the
    position ids alone decide what each slot sees.

    Returns input_ids / position_ids / token_type_ids (B, T'), attention_mask (B, T', T') bool,
    labels (B, L) the AE targets (original ids at the masked positions, -100 elsewhere: so
    `num_tokens` counts the L text tokens), extras["pseudo_labels"] (B, N) the PAR targets at the
    [P] slots, -100 at padding, and extras["block_index"] (B, L) = `block` (for analysis and tests).
    With append=False (PAR off) nothing is appended: N = 0 and the text keeps its padding mask.
    """
    ids = batch.input_ids                                                        # (B, L) originals
    B, L = ids.shape
    device = ids.device
    masked = block.ge(0)                                                         # (B, L)
    labels = torch.where(masked, ids, torch.full_like(ids, -100))                # (B, L)
    counts = masked.sum(-1)                                                      # (B,)
    N = int(counts.max()) if append and B else 0
    if N == 0:
        return batch.replace(input_ids=corrupted, labels=labels,
                             extras={**batch.extras, "pseudo_labels": ids.new_full((B, 0), -100),
                                     "block_index": block})
    real = (batch.attention_mask.bool() if batch.attention_mask is not None
            else torch.ones_like(ids, dtype=torch.bool))                                 # (B, L)
    positions = (batch.position_ids if batch.position_ids is not None
                 else torch.arange(L, device=device).expand(B, L))                       # (B, L)
    # masked positions sorted by (block order, position); unmasked ones last
    key = torch.where(masked, block * L + torch.arange(L, device=device), L * L)         # (B, L)
    source = torch.sort(key, dim=-1, stable=True).indices[:, :N]                         # (B, N) text slot
    valid = torch.arange(N, device=device) < counts[:, None]                             # (B, N)
    originals = ids.gather(1, source).masked_fill(~valid, pad_id)                        # (B, N)
    pseudo = torch.full_like(originals, mask_id).masked_fill(~valid, pad_id)             # (B, N)
    step = block.gather(1, source)                                                       # (B, N)
    appended_positions = positions.gather(1, source).masked_fill(~valid, 0)              # (B, N)

    token_types = None
    if batch.token_type_ids is not None:
        appended_types = batch.token_type_ids.gather(1, source)                          # (B, N)
        token_types = torch.cat([batch.token_type_ids, appended_types, appended_types], dim=1)
    return TokenBatch(
        input_ids=torch.cat([corrupted, originals, pseudo], dim=1),                      # (B, T')
        attention_mask=masking.pseudo_mask_attention(real, step, valid),                 # (B, T', T')
        position_ids=torch.cat([positions, appended_positions, appended_positions], dim=1),
        token_type_ids=token_types,
        labels=labels,
        extras={**batch.extras, "pseudo_labels": originals.masked_fill(~valid, -100), "block_index": block},
    )


class PMLM(Objective):
    """AE + PAR in one pass over [text | originals | pseudo masks] (Bao et al. 2020, section 3).
    Loss: ae_weight x CE summed at the [M] slots + par_weight x CE summed at the [P] slots, over
    the number of masked tokens (so the logged loss is AE + PAR per masked token)."""

    name = "pmlm"
    Config = PMLMConfig

    def __init__(self, cfg: PMLMConfig, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__(cfg, encoder_cfg, vocab)
        self.head = LMHead(encoder_cfg.hidden_size, encoder_cfg.vocab_size, encoder_cfg.layer_norm_eps,
                           embedding_size=embedding_width(encoder_cfg))

    # ---- corruption (data loader) ---------------------------------------------------------------

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        """Blockwise masking of round(mask_prob x row length) tokens (specials never: [CLS], [SEP],
        [PAD]), a factorization order, 80/10/10 at the [M] slots, and the pseudo-masked layout.

        The budget is a function of the row's length, as MAE-LM's, not of its [SEP] count, so full
        blocks all mask the same number of tokens and T' = L + 2N is the same for every batch."""
        ids = batch.input_ids                                                      # (B, L)
        if batch.attention_mask is not None and batch.attention_mask.dim() != 2:
            raise ValueError("PMLM takes a (B, L) padding mask, not an attention layout")
        real = (batch.attention_mask.bool() if batch.attention_mask is not None
                else torch.ones_like(ids, dtype=torch.bool))                              # (B, L)
        candidates = masking.candidate_mask(ids, self.vocab.special_ids) & real           # (B, L)
        cfg = self.cfg
        mask, block = masking.blockwise_mask(candidates, cfg.mask_prob, rng, cfg.long_block_prob,
                                             cfg.min_long_length, cfg.max_long_length,
                                             budget=masking.mask_budget(real.sum(-1), cfg.mask_prob))
        corrupted = masking.apply_bert_replacement(ids, mask, self.vocab.mask, self.vocab.size, rng,
                                                   cfg.mask_token_prob, cfg.random_token_prob)  # (B, L)
        return pseudo_masked_batch(batch, corrupted, block, self.vocab.mask, self.vocab.pad,
                                   append=cfg.par_weight > 0)

    # ---- forward --------------------------------------------------------------------------------

    def hidden_states(self, encoder: Encoder, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        """The encoder's states of the text (B, L, D) and of the [P] slots (B, N, D) for a
        `pseudo_masked_batch`: the one-pass computation over its (T', T') layout, in two calls.

        The layout's text rows never see an appended slot, so the text is encoded alone, as a plain
        (padded) bidirectional pass; the appended slots then attend, layer by layer, to the text's
        keys/values (`Encoder.step`'s cache) and to each other under the layout's lower rows. Same
        states as one `encoder(...)` call over T' tokens (tests/test_pmlm.py), with L^2 + 2N T'
        attention scores instead of T'^2: on the CPU (no fused attention with dropout) the scores,
        their softmax and dropout are a large share of a small model's step."""
        L, N = batch.labels.shape[1], batch.extras["pseudo_labels"].shape[1]
        ids, layout, types = batch.input_ids, batch.attention_mask, batch.token_type_ids  # (B, T'), (B, T', T')
        if N == 0:                                  # PAR off: nothing appended, a plain padded pass
            text = encoder(ids, position_ids=batch.position_ids, token_type_ids=types, attention_mask=layout)  # (B, L, D)
            return text, text[:, :0]
        positions = batch.position_ids              # (B, T'): always set when slots are appended
        text_mask = layout[:, :L, :L]                                              # (B, L, L)
        text, past = encoder.step(ids[:, :L], position_ids=positions[:, :L],
                                  token_type_ids=None if types is None else types[:, :L],
                                  attention_mask=None if bool(text_mask.all()) else text_mask)  # (B, L, D)
        appended, _ = encoder.step(ids[:, L:], position_ids=positions[:, L:],
                                   token_type_ids=None if types is None else types[:, L:],
                                   attention_mask=layout[:, L:], past=past,
                                   past_position_ids=positions[:, :L])           # (B, 2N, D)
        return text, appended[:, N:]

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        text, pseudo = self.hidden_states(encoder, batch)                        # (B, L, D), (B, N, D)
        ae_labels, par_labels = batch.labels, batch.extras["pseudo_labels"]        # (B, L), (B, N)
        parts = []                                             # (name, weight, (B, S, D) hidden, (B, S) labels)
        if self.cfg.ae_weight > 0:
            parts.append(("mlm", self.cfg.ae_weight, text, ae_labels))
        if self.cfg.par_weight > 0:
            parts.append(("par", self.cfg.par_weight, pseudo, par_labels))
        selected = [labels.ne(-100) for _, _, _, labels in parts]                  # (B, S) each
        rows = torch.cat([h[s] for (_, _, h, _), s in zip(parts, selected)])       # (M, D)
        targets = torch.cat([labels[s] for (_, _, _, labels), s in zip(parts, selected)])  # (M,)
        # one vocabulary projection for both parts (the same tied head), then split the rows
        ce, predicted = row_cross_entropy(self.head(rows, encoder.word_embeddings.weight), targets)  # (M,)
        loss = ce.new_zeros(())
        metrics: dict[str, Tensor] = {}
        start = 0
        for (name, weight, _, _), s in zip(parts, selected):
            n = int(s.sum())
            part_ce = ce[start:start + n].sum()
            correct = (predicted[start:start + n] == targets[start:start + n]).sum()
            loss = loss + weight * part_ce
            count = s.sum()
            metrics[f"{name}_loss"], metrics[f"{name}_acc"] = ratio(part_ce, count), ratio(correct, count)
            start += n
        return ObjectiveOutput(loss, ae_labels.ne(-100).sum(), metrics)

    def train_flops_per_token(self, seq_len: int, predicted_fraction: float) -> float:
        """Per text token (model/flops.py): the encoder over the text plus the appended originals and
        pseudo masks, T' = T (1 + 2 f) tokens (f = the masked fraction of the text), where the T text
        queries score T keys and the 2 f T appended ones all T' (`hidden_states`), and the LM head
        on the [M] and [P] rows (2 f per text token)."""
        D, V = self.encoder_cfg.hidden_size, self.encoder_cfg.vocab_size
        appended = 2 * predicted_fraction * seq_len if self.cfg.par_weight > 0 else 0.0
        extended = seq_len + appended
        keys_per_query = (seq_len * seq_len + appended * extended) / extended
        rows = predicted_fraction * ((self.cfg.ae_weight > 0) + (self.cfg.par_weight > 0))
        return extended / seq_len * flops.stack_flops(self.encoder_cfg, keys_per_query) + rows * flops.lm_head_flops(D, D, V)

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        means = with_perplexity(means)
        if "par_loss" in means:
            means = {**means, "par_ppl": math.exp(min(means["par_loss"], 50.0))}
        return means
