"""unimask encoders for Hugging Face transformers (remote code, `trust_remote_code=True`).

`unimask export` copies this file next to the weights of every encoder that transformers' BERT cannot
hold (pre-LN blocks, no absolute positions, a T5 relative position bias) and names its classes in
config.json's `auto_map`, the mechanism of transformers' "Customizing models" guide
(https://huggingface.co/docs/transformers/custom_models):

    from transformers import AutoModel
    model = AutoModel.from_pretrained("hf/coco", trust_remote_code=True)

It imports only torch and transformers, so the directory works where unimask is not installed. It is
the transformers-side mirror of unimask's `model/encoder.py` (and of `model/heads.py` LMHead, the
`tasks/glue.py` ClassificationHead and the `tasks/squad.py` span head); unimask's
tests/test_export_remote.py checks that both compute the same hidden states and logits (1e-4, eager and
sdpa, padded batches) for every variant.

The architecture, per `UnimaskConfig`:
- embeddings: word + learned absolute position (`absolute_positions`) + token type (`type_vocab_size`
  > 0; with none given, type 0) -> LayerNorm -> dropout;
- blocks: BERT's post-LN (Devlin et al. 2019) or pre-LN (`norm="pre"`, Xiong et al. 2020) with a
  final LayerNorm after the last block; exact GELU;
- attention scores plus a T5 relative position bias (Raffel et al. 2020, section 2.1; bidirectional
  log-spaced buckets, `relative_buckets` > 0) looked up in one (buckets, heads) table shared by all
  layers, as in COCO-LM, and computed from position ids rather than sequence indices.

Parameter names are BERT's wherever the architecture agrees (`embeddings.word_embeddings.weight`,
`encoder.layer.N.attention.self.query.weight`, ..., heads under the "unimask." prefix as BERT's under
"bert."). What BERT lacks is named after transformers' own models:
    encoder.relative_attention_bias.weight          (buckets, heads), as T5's relative_attention_bias
    encoder.layer.N.attention.LayerNorm.*           pre-LN: before attention   } as RoBERTa-PreLayerNorm
    encoder.layer.N.intermediate.LayerNorm.*        pre-LN: before the FFN     }
    LayerNorm.*                                     pre-LN: after the last block }
    cls.predictions.*                               the tied MLM head, as BertForMaskedLM
    classifier.dense.*, classifier.out_proj.*       the sentence head, as RobertaClassificationHead
    qa_outputs.*                                    the span head, as BertForQuestionAnswering
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)

NORMS = ("post", "pre")
POOLINGS = ("cls", "mean")


class UnimaskConfig(PretrainedConfig):
    """The fields of unimask's `EncoderConfig` under BERT's names (num_layers -> num_hidden_layers,
    max_positions -> max_position_embeddings, dropout -> hidden_dropout_prob, ...), plus the
    sequence head's `classifier_pooling` ("cls": [CLS]'s hidden state; "mean": the average over the
    attention mask's tokens) and `classifier_dropout` (None: hidden_dropout_prob)."""

    model_type = "unimask"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        norm: str = "post",
        absolute_positions: bool = True,
        relative_buckets: int = 0,
        relative_max_distance: int = 128,
        pad_token_id: int = 0,
        classifier_pooling: str = "cls",
        classifier_dropout: Optional[float] = None,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if classifier_pooling not in POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {POOLINGS}, not {classifier_pooling!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if not absolute_positions and relative_buckets <= 0:
            raise ValueError("the encoder needs position information: absolute_positions or relative_buckets > 0")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.norm = norm
        self.absolute_positions = absolute_positions
        self.relative_buckets = relative_buckets
        self.relative_max_distance = relative_max_distance
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
        # pad_token_id and tie_word_embeddings go through the base class: transformers 4 sets them there
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional log-spaced buckets (Raffel et al. 2020, section 2.1): half for each sign of
    key - query, exact below num_buckets/4, logarithmic up to max_distance. unimask's
    model/encoder.py `relative_position_bucket`, line for line."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    is_small = distance < exact
    log_bucket = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return bucket + torch.where(is_small, distance, log_bucket)


class UnimaskEmbeddings(nn.Module):
    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d) if config.absolute_positions else None
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                token_type_ids: Optional[torch.Tensor]) -> torch.Tensor:
        x = inputs_embeds  # (B, T, D)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            # without token_type_ids every token is type 0; a model without types ignores them
            types = self.token_type_embeddings
            x = x + (types(token_type_ids) if token_type_ids is not None else types.weight[0])
        return self.dropout(self.LayerNorm(x))


class UnimaskSelfAttention(nn.Module):
    """Multi-head attention with an additive bias (padding and relative positions) or a boolean mask:
    `torch.nn.functional.scaled_dot_product_attention` under attn_implementation "sdpa", an explicit
    softmax under "eager"."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.num_heads = config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        # x: (B, T, D); bias: None, bool (B, 1, 1|T, T) "may attend", or float (B, H|1, T, T) added to the scores
        B, T, D = x.shape
        H = self.num_heads
        q = self.query(x).view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
        k = self.key(x).view(B, T, H, D // H).transpose(1, 2)
        v = self.value(x).view(B, T, H, D // H).transpose(1, 2)
        if self.config._attn_implementation == "eager":
            scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)  # (B, H, T, T)
            if bias is not None and bias.dtype == torch.bool:
                scores = scores.masked_fill(~bias, torch.finfo(scores.dtype).min)
            elif bias is not None:
                scores = scores + bias
            y = self.dropout(scores.softmax(-1)) @ v  # (B, H, T, Dh)
        else:
            dropout = self.dropout.p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)  # (B, H, T, Dh)
        return y.transpose(1, 2).reshape(B, T, D)


class UnimaskSelfOutput(nn.Module):
    """attention.output: the output projection, dropout, residual, and (post-LN) LayerNorm."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm == "post" else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = residual + self.dropout(self.dense(hidden))
        return self.LayerNorm(x) if self.LayerNorm is not None else x


class UnimaskAttention(nn.Module):
    """Pre-LN: x + attn(LayerNorm(x)); post-LN: LayerNorm(x + attn(x))."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm == "pre" else None
        self.self = UnimaskSelfAttention(config)
        self.output = UnimaskSelfOutput(config)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        inputs = self.LayerNorm(x) if self.LayerNorm is not None else x
        return self.output(self.self(inputs, bias), x)


class UnimaskIntermediate(nn.Module):
    """The FFN's up projection and exact GELU ((pre-LN) after a LayerNorm)."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm == "pre" else None
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(self.LayerNorm(x) if self.LayerNorm is not None else x))  # (B, T, F)


class UnimaskOutput(UnimaskSelfOutput):
    """output: the FFN's down projection, dropout, residual, and (post-LN) LayerNorm."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class UnimaskLayer(nn.Module):
    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.attention = UnimaskAttention(config)
        self.intermediate = UnimaskIntermediate(config)
        self.output = UnimaskOutput(config)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.attention(x, bias)  # (B, T, D)
        return self.output(self.intermediate(x), x)


class UnimaskEncoder(nn.Module):
    """The blocks and the relative position bias table they share."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.config = config
        self.relative_attention_bias = (
            nn.Embedding(config.relative_buckets, config.num_attention_heads) if config.relative_buckets > 0 else None
        )
        self.layer = nn.ModuleList(UnimaskLayer(config) for _ in range(config.num_hidden_layers))

    def attention_bias(self, position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       dtype: torch.dtype) -> Optional[torch.Tensor]:
        """What every layer's attention takes: None, a boolean (B, 1, 1|T, T) mask, or an additive float
        (B, H, T, T) bias: the relative bias with masked keys at the dtype's minimum (unimask's
        `attention_bias`). attention_mask: None, (B, T) 1 at real tokens, or (B, T, T) / (B, 1, T, T)
        boolean "may attend"."""
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()
            mask = mask[:, None, None, :] if mask.dim() == 2 else (mask[:, None] if mask.dim() == 3 else mask)
        if self.relative_attention_bias is None:
            return mask
        relative = position_ids[:, None, :] - position_ids[:, :, None]  # (B, Tq, Tk) = key - query position
        buckets = relative_position_bucket(relative, self.config.relative_buckets, self.config.relative_max_distance)
        bias = self.relative_attention_bias(buckets).permute(0, 3, 1, 2).to(dtype)  # (B, H, Tq, Tk)
        return bias if mask is None else bias.masked_fill(~mask, torch.finfo(dtype).min)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor],
                output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden_states = (x,) if output_hidden_states else ()
        for layer in self.layer:
            x = layer(x, bias)
            if output_hidden_states:
                hidden_states += (x,)
        return x, hidden_states


class UnimaskPreTrainedModel(PreTrainedModel):
    config_class = UnimaskConfig
    base_model_prefix = "unimask"
    _supports_sdpa = True
    _no_split_modules = ["UnimaskEmbeddings", "UnimaskLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation (unimask's `init_bert_weights`): N(0, initializer_range) weights, zero
        biases, unit LayerNorm; only for weights a directory does not hold (a new task head)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, UnimaskLMPredictionHead):
            nn.init.zeros_(module.bias)


class UnimaskModel(UnimaskPreTrainedModel):
    """Token ids (or embeddings) -> hidden states (B, T, D), as unimask's `Encoder`.

    `hidden_states` (output_hidden_states=True): the embeddings' output, then each block's; for pre-LN
    the last entry is after the final LayerNorm (= last_hidden_state). Position ids default to 0..T-1;
    the absolute embedding and the relative bias both read them, so tokens given out of order (MAE-LM's
    unmasked subset) keep their geometry."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__(config)
        self.embeddings = UnimaskEmbeddings(config)
        self.encoder = UnimaskEncoder(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm == "pre" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)  # (B, T, D)
        B, T, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=inputs_embeds.device).expand(B, T)
        x = self.embeddings(inputs_embeds, position_ids, token_type_ids)  # (B, T, D)
        bias = self.encoder.attention_bias(position_ids, attention_mask, x.dtype)
        x, hidden_states = self.encoder(x, bias, bool(output_hidden_states))
        if self.LayerNorm is not None:
            x = self.LayerNorm(x)
            hidden_states = hidden_states[:-1] + (x,) if hidden_states else ()
        output = BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states or None)
        return output if return_dict else output.to_tuple()


class UnimaskPredictionHeadTransform(nn.Module):
    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class UnimaskLMPredictionHead(nn.Module):
    """dense -> GELU -> LayerNorm -> projection tied to the word embeddings + bias (unimask's LMHead,
    BERT's BertLMPredictionHead)."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.transform = UnimaskPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # one tensor under two names (transformers 5 ties it again by _tied_weights_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))  # (B, T, V)


class UnimaskOnlyMLMHead(nn.Module):
    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        self.predictions = UnimaskLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class UnimaskForMaskedLM(UnimaskPreTrainedModel):
    """The encoder and its tied MLM head: logits (B, T, V) at every position; with `labels` (B, T),
    the mean cross-entropy over labels != -100."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "unimask.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__(config)
        self.unimask = UnimaskModel(config)
        self.cls = UnimaskOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.unimask(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_hidden_states, return_dict=True)
        logits = self.cls(outputs.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


class UnimaskClassificationHead(nn.Module):
    """Pooled -> dense -> tanh -> dropout -> out_proj (unimask's tasks/glue.py ClassificationHead;
    RoBERTa's names). Pooled: [CLS]'s hidden state, or ("mean") the average over the attention mask's
    tokens, summed in float32."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__()
        dropout = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
        self.pooling = config.classifier_pooling
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        # hidden: (B, T, D), attention_mask: None or (B, T), 1 at real tokens -> (B, num_labels)
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, D)
        else:
            if attention_mask is not None and attention_mask.dim() != 2:
                raise ValueError("classifier_pooling='mean' needs a (batch, length) attention_mask")
            real = (torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None
                    else attention_mask.float())[..., None]  # (B, T, 1)
            # summed in float32: bf16 counts and sums lose precision past 256 tokens
            pooled = ((hidden.float() * real).sum(1) / real.sum(1)).to(hidden.dtype)  # (B, D)
        return self.out_proj(self.dropout(torch.tanh(self.dense(pooled))))


class UnimaskForSequenceClassification(UnimaskPreTrainedModel):
    """The encoder and a sentence head: logits (B, num_labels); with `labels`, transformers' usual
    loss for `config.problem_type` (regression: MSE; single_label_classification: cross-entropy;
    multi_label_classification: BCE with logits; unset: inferred as BertForSequenceClassification)."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.unimask = UnimaskModel(config)
        self.classifier = UnimaskClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.unimask(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.last_hidden_state, attention_mask)  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                loss = (F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype)) if self.num_labels == 1
                        else F.mse_loss(logits, labels.to(logits.dtype)))
            elif self.config.problem_type == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


class UnimaskForQuestionAnswering(UnimaskPreTrainedModel):
    """The encoder and a span head: a Linear(hidden, 2) on every hidden state -> start and end logits
    (B, T) each (unimask's tasks/squad.py head; padding is not masked, as in BertForQuestionAnswering);
    with start_positions and end_positions, the mean of the two cross-entropies."""

    def __init__(self, config: UnimaskConfig) -> None:
        super().__init__(config)
        self.unimask = UnimaskModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        start_positions: Optional[torch.Tensor] = None,
        end_positions: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.unimask(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_hidden_states, return_dict=True)
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0].contiguous(), logits[..., 1].contiguous()  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # positions outside the sequence are ignored, as in BertForQuestionAnswering
            ignored = start_logits.shape[1]
            start, end = start_positions.view(-1).clamp(0, ignored), end_positions.view(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        output = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()


AUTO_MAP = {
    "AutoConfig": "modeling_unimask.UnimaskConfig",
    "AutoModel": "modeling_unimask.UnimaskModel",
    "AutoModelForMaskedLM": "modeling_unimask.UnimaskForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_unimask.UnimaskForSequenceClassification",
    "AutoModelForQuestionAnswering": "modeling_unimask.UnimaskForQuestionAnswering",
}
"""config.json's `auto_map`: which class of this file each transformers Auto class builds."""
