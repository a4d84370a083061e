"""The auxiliary MLM generator shared by ELECTRA and COCO-LM.

ELECTRA (Clark et al. 2020, section 3.2) and COCO-LM (Meng et al. 2021, section 4) corrupt text
with a small masked LM that shares the main model's embedding layer (token, position and token-type
embeddings and their LayerNorm). The generator reads the main encoder's embedding output before the
main model's own projection (width E, `embedding_size` or the hidden size), projects it to its width
when that differs (ELECTRA's `embeddings_project` of the generator), runs its own blocks and predicts with an LM head tied to the shared word
embeddings; it is owned by the objective and discarded after pretraining.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..model.encoder import BlockStack, Encoder, EncoderConfig, embedding_width, init_bert_weights
from ..model.heads import LMHead


def generator_config(main: EncoderConfig, hidden_size: int, num_layers: int, dropout: float | None = None) -> EncoderConfig:
    """The generator's block config: width `hidden_size` (heads of 64 dims, FFN 4x), `num_layers`,
    the main model's norm placement and relative bias geometry."""
    heads = max(1, hidden_size // 64) if hidden_size % 64 == 0 else main.num_heads
    drop = main.dropout if dropout is None else dropout
    return EncoderConfig(vocab_size=main.vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                         num_heads=heads, intermediate_size=4 * hidden_size, max_positions=main.max_positions,
                         type_vocab_size=main.type_vocab_size, dropout=drop, attention_dropout=drop,
                         layer_norm_eps=main.layer_norm_eps, initializer_range=main.initializer_range,
                         norm=main.norm, absolute_positions=main.absolute_positions,
                         relative_buckets=main.relative_buckets, relative_max_distance=main.relative_max_distance,
                         pad_token_id=main.pad_token_id)


class MLMGenerator(nn.Module):
    def __init__(self, main: EncoderConfig, cfg: EncoderConfig) -> None:
        super().__init__()
        E = embedding_width(main)
        self.project = nn.Linear(E, cfg.hidden_size) if cfg.hidden_size != E else None
        self.blocks = BlockStack(cfg)
        self.head = LMHead(cfg.hidden_size, main.vocab_size, cfg.layer_norm_eps, embedding_size=embedding_width(main))
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    def forward(self, encoder: Encoder, input_ids: Tensor, position_ids: Tensor | None,
                token_type_ids: Tensor | None, attention_mask: Tensor | None) -> Tensor:
        """Hidden states (B, T, Dg) of the generator on `input_ids`, through the shared embeddings."""
        x, position_ids = encoder.embed(input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                                        project=False)                      # (B, T, E)
        if self.project is not None:
            x = self.project(x)                                             # (B, T, E) -> (B, T, Dg)
        return self.blocks(x, position_ids, attention_mask)

    def logits(self, hidden: Tensor, encoder: Encoder) -> Tensor:
        """(N, Dg) hidden states of the predicted positions -> (N, V) logits (tied projection)."""
        return self.head(hidden, encoder.word_embeddings.weight)

