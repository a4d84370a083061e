"""MAE-LM: masked autoencoder language modelling (Meng et al. 2023, "Representation Deficiency in
Masked Language Modeling", ICLR 2024, the MAE-LM method section; arXiv 2302.02060).

MLM pretraining spends model dimensions on [MASK] tokens that never occur in downstream data (the
paper's representation-deficiency analysis; `unimask analyze rank` measures it). MAE-LM removes the
masked tokens from the encoder's input instead of replacing them:

- corruption (in the data loader): 15% of the ordinary tokens are chosen, no 80/10/10. The encoder
  input is the remaining tokens in their original order, each carrying its original position id,
  so the absolute embedding and the relative bias see the true geometry; encoder compute falls by
  the masked fraction. Every full block loses the same number of tokens (round(mask_prob x length),
  as in the official data pipeline), so batches are rectangular (B, K) without padding; rows that
  cannot (short or padded blocks) are right-padded to K with an attention mask.
- decoder (the MAE-LM architecture figure and text): the encoder output is scattered back to the full length T with the
  [MASK] token's embedding (the shared word-embedding row, as in the official code) at the masked
  slots; the decoder adds its own learned absolute positions, normalises, and runs its own blocks
  (default 4 layers at the encoder's width, dropout 0, no relative bias); an LM head tied to the
  encoder's word embeddings predicts the original tokens at the masked positions only.

Fine-tuning and export use the encoder alone; the decoder and head stay in pretraining checkpoints
under `objective.*`. Metrics are named like MLM's so runs compare directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..model import flops
from ..model.encoder import BlockStack, Encoder, EncoderConfig, embedding_width, init_bert_weights
from ..model.heads import LMHead
from . import masking
from .base import Objective, ObjectiveOutput, TokenBatch, Vocab
from .mlm import predict_masked, with_perplexity


@dataclass
class MAELMConfig:
    mask_prob: float = 0.15          # fraction of each block's tokens removed and predicted
    decoder_layers: int = 4          # official default (gen_decoder_layers=4)
    decoder_dropout: float = 0.0     # hidden and attention dropout in the decoder (official: zero)

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), not {self.mask_prob}")
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be at least 1, not {self.decoder_layers}")
        if not 0 <= self.decoder_dropout < 1:
            raise ValueError(f"decoder_dropout must be in [0, 1), not {self.decoder_dropout}")


def decoder_config(encoder_cfg: EncoderConfig, cfg: MAELMConfig) -> EncoderConfig:
    """The decoder's block config: the encoder's width, heads, FFN and norm placement, `decoder_layers`
    blocks, `decoder_dropout`, learned absolute positions and no relative bias (official defaults)."""
    return dataclasses.replace(encoder_cfg, num_layers=cfg.decoder_layers, dropout=cfg.decoder_dropout,
                               attention_dropout=cfg.decoder_dropout, absolute_positions=True,
                               relative_buckets=0, type_vocab_size=0)


class MAELMDecoder(nn.Module):
    """Full-length hidden states (B, T, D) -> (B, T, D): + own position embedding, LayerNorm, blocks."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = BlockStack(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def forward(self, x: Tensor, position_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        x = self.dropout(self.norm(x + self.position(position_ids)))        # (B, T, D)
        return self.blocks(x, position_ids, attention_mask)


class MAELM(Objective):
    """Encoder on the unmasked tokens, shallow decoder on the full length, tied LM head on the masked
    positions (Meng et al. 2023, the MAE-LM method section). Loss: cross-entropy summed over masked tokens."""

    name = "maelm"
    Config = MAELMConfig

    def __init__(self, cfg: MAELMConfig, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__(cfg, encoder_cfg, vocab)
        if embedding_width(encoder_cfg) != encoder_cfg.hidden_size:
            raise ValueError(f"MAE-LM fills the decoder's masked positions with the [MASK] embedding, so it needs "
                             f"model.embedding_size equal to hidden_size ({encoder_cfg.hidden_size}), "
                             f"not {encoder_cfg.embedding_size}")
        dec = decoder_config(encoder_cfg, cfg)
        self.decoder = MAELMDecoder(dec)
        self.head = LMHead(dec.hidden_size, encoder_cfg.vocab_size, dec.layer_norm_eps)

    # ---- corruption (data loader) ---------------------------------------------------------------

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        """Remove the masked tokens. Returns a batch whose encoder fields are (B, K):

        input_ids / position_ids / token_type_ids  the kept tokens in their original order, their
                                                   original position ids; [PAD] beyond a row's count
        attention_mask                             (B, K) valid slots, or None when every row is full
        labels                                     (B, T) original ids at the masked positions, -100
        extras["source_index"]                     (B, T) for each full-length slot, its kept slot
                                                   (0..K-1), or K for a masked / padding slot
        extras["decoder_position_ids"]             (B, T) the full-length position ids
        extras["decoder_attention_mask"]           (B, T) the input's padding mask, if it had one
        """
        ids = batch.input_ids                                                       # (B, T)
        B, T = ids.shape
        if batch.attention_mask is not None and batch.attention_mask.dim() != 2:
            raise ValueError("MAE-LM takes a (B, T) padding mask, not an attention layout")
        real = (batch.attention_mask.bool() if batch.attention_mask is not None
                else torch.ones_like(ids, dtype=torch.bool))                               # (B, T)
        candidates = masking.candidate_mask(ids, self.vocab.special_ids) & real     # (B, T)
        budget = torch.minimum(masking.mask_budget(real.sum(-1), self.cfg.mask_prob), candidates.sum(-1))  # (B,)
        scores = torch.rand((B, T), generator=rng, device=ids.device).masked_fill(~candidates, 2.0)
        rank = scores.argsort(dim=-1).argsort(dim=-1)                              # (B, T)
        masked = (rank < budget[:, None]) & candidates                             # (B, T)
        keep = real & ~masked                                                      # (B, T)

        count = keep.sum(-1)                                                       # (B,)
        full = T - int(masking.mask_budget(torch.tensor([T]), self.cfg.mask_prob))         # a full row's count
        K = max(full, int(count.max()))                                            # static for full blocks
        # kept tokens first, in their original order (stable sort of the drop flag)
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :K]   # (B, K)
        valid = torch.arange(K, device=ids.device) < count[:, None]                      # (B, K)
        positions = batch.position_ids if batch.position_ids is not None else \
            torch.arange(T, device=ids.device).expand(B, T)                              # (B, T)
        source = torch.where(keep, keep.long().cumsum(-1) - 1, torch.full_like(ids, K))  # (B, T)

        extras = {**batch.extras, "source_index": source, "decoder_position_ids": positions}
        if batch.attention_mask is not None:
            extras["decoder_attention_mask"] = real
        return TokenBatch(
            input_ids=ids.gather(1, order).masked_fill(~valid, self.vocab.pad),        # (B, K)
            attention_mask=None if bool(valid.all()) else valid,
            position_ids=positions.gather(1, order),
            token_type_ids=batch.token_type_ids.gather(1, order) if batch.token_type_ids is not None else None,
            labels=torch.where(masked, ids, torch.full_like(ids, -100)),                 # (B, T)
            extras=extras,
        )

    # ---- forward --------------------------------------------------------------------------------

    def decode(self, encoder: Encoder, batch: TokenBatch) -> Tensor:
        """Encoder on the kept tokens, scattered back with [MASK] embeddings, decoder: (B, T, D)."""
        hidden = encoder(batch.input_ids, position_ids=batch.position_ids,
                         token_type_ids=batch.token_type_ids, attention_mask=batch.attention_mask)  # (B, K, D)
        B, K, D = hidden.shape
        source = batch.extras["source_index"]                                     # (B, T)
        mask_embedding = encoder.word_embeddings.weight[self.vocab.mask].to(hidden.dtype)  # (D,)
        pool = torch.cat([hidden, mask_embedding.expand(B, 1, D)], dim=1)        # (B, K + 1, D)
        x = pool.gather(1, source[..., None].expand(-1, -1, D))                  # (B, T, D)
        return self.decoder(x, batch.extras["decoder_position_ids"], batch.extras.get("decoder_attention_mask"))

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        return predict_masked(self.head, self.decode(encoder, batch), batch.labels, encoder)

    def train_flops_per_token(self, seq_len: int, predicted_fraction: float) -> float:
        """Per text token (model/flops.py): the encoder on the kept tokens only, the decoder on every
        position, the LM head on the masked fraction."""
        kept = seq_len - int(masking.mask_budget(torch.tensor([seq_len]), self.cfg.mask_prob))
        D, V = self.encoder_cfg.hidden_size, self.encoder_cfg.vocab_size
        return (kept / seq_len * flops.stack_flops(self.encoder_cfg, kept)
                + flops.stack_flops(self.decoder.blocks.config, seq_len)
                + predicted_fraction * flops.lm_head_flops(D, D, V))

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        return with_perplexity(means)
