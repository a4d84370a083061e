"""Import tables of the transformers model families whose encoders unimask's `Encoder` can hold.

Each `Family` says, for a transformers `model_type`: how its config fields become `EncoderConfig`
fields, how unimask's tensor names map onto its names (the encoder under `prefix` in the
*ForMaskedLM / *ForPreTraining classes, bare in *Model), which of its heads unimask can carry
(BERT's and RoBERTa's tied MLM head -> `LMHead`, ELECTRA's discriminator head -> the RTD head, BERT's
pooler -> the dense layer of the [CLS] classification head), and its special tokens by role. Read forwards by export (unimask -> transformers) and backwards by
`export.hf.load_hf_model` (transformers -> unimask); no tensor is transformed, only renamed.

- BERT (`BertModel`, `BertForMaskedLM`): unimask's post-LN absolute-position encoder under other names.
- RoBERTa (`RobertaModel`, `RobertaForMaskedLM`): the same blocks; its position table keeps rows
  0..pad_token_id for the padding index, so real tokens read row i + pad_token_id + 1
  (`EncoderConfig.position_offset`); one token type (type_vocab_size 1); `<s> </s> <pad> <mask>`.
- ELECTRA discriminator (`ElectraModel`, `ElectraForPreTraining`): BERT's blocks with embeddings of
  `embedding_size`, projected to the hidden size by `embeddings_project` when narrower
  (`EncoderConfig.embedding_size`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import Tensor

from .encoder import EncoderConfig

ENCODER_TO_BERT: tuple[tuple[str, str], ...] = (
    (r"embeddings\.word\.weight", r"embeddings.word_embeddings.weight"),
    (r"embeddings\.position\.weight", r"embeddings.position_embeddings.weight"),
    (r"embeddings\.token_type\.weight", r"embeddings.token_type_embeddings.weight"),
    (r"embeddings\.norm\.(weight|bias)", r"embeddings.LayerNorm.\1"),
    (r"layers\.(\d+)\.attn\.(query|key|value)\.(weight|bias)", r"encoder.layer.\1.attention.self.\2.\3"),
    (r"layers\.(\d+)\.attn\.out\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"layers\.(\d+)\.attn_norm\.(weight|bias)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"layers\.(\d+)\.mlp\.up\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"layers\.(\d+)\.mlp\.down\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"layers\.(\d+)\.mlp_norm\.(weight|bias)", r"encoder.layer.\1.output.LayerNorm.\2"),
)
"""unimask `Encoder` names -> `transformers.BertModel` names (BertForMaskedLM prefixes them with "bert.")."""

ENCODER_TO_ELECTRA: tuple[tuple[str, str], ...] = ENCODER_TO_BERT + (
    (r"embeddings\.project\.(weight|bias)", r"embeddings_project.\1"),
)
"""unimask `Encoder` names -> `transformers.ElectraModel` names: BERT's plus the embedding projection."""

LM_HEAD_TO_BERT: tuple[tuple[str, str], ...] = (
    (r"dense\.(weight|bias)", r"cls.predictions.transform.dense.\1"),
    (r"norm\.(weight|bias)", r"cls.predictions.transform.LayerNorm.\1"),
    (r"bias", r"cls.predictions.bias"),
)
"""unimask `LMHead` names -> `BertForMaskedLM` names. `cls.predictions.decoder.weight` is tied to
`bert.embeddings.word_embeddings.weight` and `cls.predictions.decoder.bias` to `cls.predictions.bias`,
so neither is written (transformers' own `save_pretrained` writes neither)."""

LM_HEAD_TO_ROBERTA: tuple[tuple[str, str], ...] = (
    (r"dense\.(weight|bias)", r"lm_head.dense.\1"),
    (r"norm\.(weight|bias)", r"lm_head.layer_norm.\1"),
    (r"bias", r"lm_head.bias"),
)
"""unimask `LMHead` names -> `RobertaForMaskedLM` names (`lm_head.decoder.*` is tied, not written)."""

POOLER_TO_BERT: tuple[tuple[str, str], ...] = ((r"(weight|bias)", r"pooler.dense.\1"),)
"""The dense layer of unimask's [CLS] `ClassificationHead` -> `BertModel`'s pooler (under "bert." in the
*For* classes): `BertForSequenceClassification` starts from the pretrained pooler, so fine-tuning does."""

LM_HEAD_TO_ELECTRA: tuple[tuple[str, str], ...] = (
    (r"dense\.(weight|bias)", r"generator_predictions.dense.\1"),
    (r"norm\.(weight|bias)", r"generator_predictions.LayerNorm.\1"),
    (r"bias", r"generator_lm_head.bias"),
)
"""unimask `LMHead` (hidden -> embedding width) -> `ElectraForMaskedLM` names (`generator_lm_head.weight`
is tied to the word embeddings, not written)."""

RTD_HEAD_TO_ELECTRA: tuple[tuple[str, str], ...] = (
    (r"dense\.(weight|bias)", r"discriminator_predictions.dense.\1"),
    (r"out\.(weight|bias)", r"discriminator_predictions.dense_prediction.\1"),
)
"""unimask ELECTRA `RTDHead` names -> `ElectraForPreTraining` names."""

GENERATOR_TO_ELECTRA: tuple[tuple[str, str], ...] = (
    (r"project\.(weight|bias)", r"electra.embeddings_project.\1"),
    *((r"blocks\." + ours, "electra." + theirs) for ours, theirs in ENCODER_TO_BERT if ours.startswith(r"layers")),
    (r"head\.dense\.(weight|bias)", r"generator_predictions.dense.\1"),
    (r"head\.norm\.(weight|bias)", r"generator_predictions.LayerNorm.\1"),
    (r"head\.bias", r"generator_lm_head.bias"),
)
"""unimask `MLMGenerator` names -> `transformers.ElectraForMaskedLM` names (an ELECTRA generator
directory). The generator's embedding tables (`electra.embeddings.*`) are the discriminator's, shared
(ELECTRA section 3.2), and `generator_lm_head.weight` is tied to them: neither is the generator's own."""

BERT_TO_ENCODER_CONFIG: dict[str, str] = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_positions", "type_vocab_size": "type_vocab_size",
    "hidden_dropout_prob": "dropout", "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range", "pad_token_id": "pad_token_id",
}
"""transformers `BertConfig` fields -> `EncoderConfig` fields (RoBERTa's and ELECTRA's share them)."""

BERT_SPECIAL_TOKENS: dict[str, str] = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIAL_TOKENS: dict[str, str] = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}


@dataclass(frozen=True)
class Family:
    name: str                                        # transformers' model_type
    prefix: str                                      # the encoder's prefix in *ForMaskedLM / *ForPreTraining
    encoder_table: tuple[tuple[str, str], ...]       # Encoder names -> family names (without `prefix`)
    heads: dict[str, tuple[tuple[str, str], ...]]    # "lm" (LMHead) / "rtd" (RTDHead) -> family names
    special_tokens: dict[str, str]                   # role (pad unk cls sep mask) -> token
    tokenizer_class: str                             # transformers' fast tokenizer class
    architectures: dict[str, str] = field(default_factory=dict)  # head kind carried ("" none) -> transformers class
    extra_config: dict[str, str] = field(default_factory=dict)   # family-only config fields -> EncoderConfig

    def encoder_config(self, config: dict) -> EncoderConfig:
        """The `EncoderConfig` of a transformers config.json dict; ValueError/TypeError when unusable."""
        values = {ours: config[theirs] for theirs, ours in {**BERT_TO_ENCODER_CONFIG, **self.extra_config}.items()
                  if theirs in config}
        if self.name == "roberta":
            offset = int(config.get("pad_token_id", 1)) + 1          # positions start at padding_idx + 1
            values["position_offset"] = offset
            values["max_positions"] = int(config.get("max_position_embeddings", 514)) - offset
        if self.name == "electra" and values.get("embedding_size") == values.get("hidden_size", 256):
            values["embedding_size"] = 0
        return EncoderConfig(**values)

    def config_dict(self, cfg: EncoderConfig) -> dict:
        """The transformers config.json fields of an encoder of `cfg` (`encoder_config` backwards): exact
        GELU, at least one token type (a zero table stands in for none), RoBERTa's position table
        max_positions + position_offset rows long, ELECTRA's embedding_size (the hidden size when 0)."""
        values = {theirs: getattr(cfg, ours) for theirs, ours in {**BERT_TO_ENCODER_CONFIG, **self.extra_config}.items()}
        values.update(model_type=self.name, hidden_act="gelu", type_vocab_size=max(cfg.type_vocab_size, 1),
                      tie_word_embeddings=True)
        if self.name == "roberta":
            values["max_position_embeddings"] = cfg.max_positions + cfg.position_offset
        if self.name == "electra":
            values["embedding_size"] = cfg.embedding_size or cfg.hidden_size
        return values

    def check_holds(self, cfg: EncoderConfig) -> list[str]:
        """Why this family cannot hold an encoder of `cfg` (empty when it can)."""
        reasons = []
        if cfg.norm != "post":
            reasons.append("it is pre-LN (norm='pre') and the family normalises after each residual (post-LN)")
        if not cfg.absolute_positions:
            reasons.append("it has no absolute position embeddings")
        if cfg.relative_buckets > 0:
            reasons.append("it uses a relative position bias (relative_buckets>0)")
        if cfg.embedding_size and cfg.embedding_size != cfg.hidden_size and self.name != "electra":
            reasons.append(f"its embeddings ({cfg.embedding_size}) are narrower than its hidden size and only ELECTRA "
                           "has an embedding projection")
        expected_offset = cfg.pad_token_id + 1 if self.name == "roberta" else 0
        if cfg.position_offset != expected_offset:
            reasons.append(f"its position_offset is {cfg.position_offset} and {self.name} uses {expected_offset}")
        return reasons


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "bert.", ENCODER_TO_BERT, {"lm": LM_HEAD_TO_BERT, "pooler": POOLER_TO_BERT},
                   BERT_SPECIAL_TOKENS, "BertTokenizerFast", {"lm": "BertForMaskedLM", "": "BertModel"}),
    "roberta": Family("roberta", "roberta.", ENCODER_TO_BERT, {"lm": LM_HEAD_TO_ROBERTA}, ROBERTA_SPECIAL_TOKENS,
                      "RobertaTokenizerFast", {"lm": "RobertaForMaskedLM", "": "RobertaModel"}),
    "electra": Family("electra", "electra.", ENCODER_TO_ELECTRA, {"rtd": RTD_HEAD_TO_ELECTRA, "lm": LM_HEAD_TO_ELECTRA},
                      BERT_SPECIAL_TOKENS, "ElectraTokenizerFast",
                      {"rtd": "ElectraForPreTraining", "lm": "ElectraForMaskedLM", "": "ElectraModel"},
                      extra_config={"embedding_size": "embedding_size"}),
}
"""transformers model_type -> its import table. ELECTRA here is the discriminator (ElectraModel,
ElectraForPreTraining); an ELECTRA generator directory (ElectraForMaskedLM) is read by pretrain's
--init-generator, not as an encoder."""

FAMILY_TITLES: dict[str, str] = {"bert": "BERT", "roberta": "RoBERTa", "electra": "ELECTRA"}


def rename(state: dict[str, Tensor], table: tuple[tuple[str, str], ...], prefix: str = "") -> dict[str, Tensor]:
    """Apply `table` (full-match regex, replacement) to every key; a key no rule matches is a KeyError."""
    renamed = {}
    for key, tensor in state.items():
        match = next((m.expand(r) for p, r in table if (m := re.fullmatch(p, key))), None)
        if match is None:
            raise KeyError(f"no rename rule for {key!r}")
        renamed[prefix + match] = tensor
    return renamed
