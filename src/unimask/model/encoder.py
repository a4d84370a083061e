"""A BERT-style Transformer encoder that returns hidden states and nothing else.

Post-LN (BERT, Devlin et al. 2019) or pre-LN (Xiong et al. 2020) blocks; learned absolute positions
and/or a T5-style relative position bias (Raffel et al. 2020, section 2.1) with one bucket table
shared by all layers, as in COCO-LM. Attention runs through `scaled_dot_product_attention`, or,
for a relative bias or an attention layout (PMLM, seq2seq) on CUDA, through `flex_attention`
(`BlockStack.attention_kernel`, see `FlexLayout`): the bias becomes a score_mod and the layout a block
mask instead of a dense (B, H, T, T) float mask, which SDPA's fused kernels do not all take.

The parameter names follow a fixed rename table to `transformers.BertModel` (see export/hf.py), so a
post-LN absolute-position encoder exports without any other transformation.

Incremental decoding (`Encoder.step`): new tokens attend to the cached keys/values of earlier tokens
plus their own, under a (B, T_new, P + T_new) "may attend" mask, with the relative bias computed from
the new tokens' position ids against every key's. UniLM-style left-to-right generation (Dong et al.
2019; UniLMv2, Bao et al. 2020, fine-tuning for generation) encodes the source once and then feeds
one target token and one pseudo [MASK] per step (tasks/decoding.py). Only keys/values are cached: with a
layout in which earlier tokens never attend to later ones, this equals running the whole sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:                                            # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:                             # pragma: no cover - older torch: SDPA only
    BlockMask = create_block_mask = flex_attention = None

ATTENTION_KERNELS = ("auto", "sdpa", "flex")
FLEX_MIN_QUERIES = 128      # "auto": flex for passes of at least one flex block of queries (see BlockStack)


@dataclass
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    norm: Literal["post", "pre"] = "post"
    absolute_positions: bool = True
    relative_buckets: int = 0            # 0: no relative bias; COCO-LM/T5 use 32
    relative_max_distance: int = 128
    pad_token_id: int = 0
    embedding_size: int = 0              # 0: hidden_size; else embeddings this wide, then a Linear to hidden_size (ELECTRA)
    position_offset: int = 0             # position i reads row i + offset of the table (RoBERTa: pad_token_id + 1)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)}")
        if self.type_vocab_size < 0 or self.relative_buckets < 0:
            raise ValueError("type_vocab_size and relative_buckets must be >= 0 (0 turns them off)")
        if not (0 <= self.dropout < 1 and 0 <= self.attention_dropout < 1):
            raise ValueError("dropout and attention_dropout must be in [0, 1)")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0 or self.relative_max_distance <= 0:
            raise ValueError("layer_norm_eps, initializer_range and relative_max_distance must be > 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not self.absolute_positions and self.relative_buckets <= 0:
            raise ValueError("the encoder needs position information: set absolute_positions=true "
                             "or relative_buckets>0")
        if self.embedding_size < 0 or self.position_offset < 0:
            raise ValueError("embedding_size and position_offset must be >= 0 (0: hidden_size / no offset)")
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', not {self.norm!r}")


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional log-spaced buckets: half for each sign, exact below num_buckets/4."""
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


class RelativePositionBias(nn.Module):
    """One (buckets, heads) table shared across layers; the bias is computed from position ids,
    not sequence indices, so re-ordered or appended tokens (MAE-LM, PMLM) keep their geometry."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.table = nn.Embedding(cfg.relative_buckets, cfg.num_heads)

    def forward(self, position_ids: Tensor, key_position_ids: Tensor | None = None) -> Tensor:
        # position_ids: (B, Tq) of the queries; key_position_ids: (B, Tk) of the keys, default the queries'
        # -> bias (B, H, Tq, Tk), entry [b, h, i, j] for query i and key j
        keys = position_ids if key_position_ids is None else key_position_ids
        relative = keys[:, None, :] - position_ids[:, :, None]  # (B, Tq, Tk) = key - query
        buckets = relative_position_bucket(relative, self.num_buckets, self.max_distance)
        return self.table(buckets).permute(0, 3, 1, 2)

    def by_distance(self) -> Tensor:
        """(2M + 1, H): row M + d is the bias of key - query = d, for |d| <= M = max_distance. Every
        distance beyond M falls in the same (last) bucket as +-M, so clamping to [-M, M] is exact."""
        M = self.max_distance
        relative = torch.arange(-M, M + 1, device=self.table.weight.device)              # (2M + 1,)
        return self.table(relative_position_bucket(relative, self.num_buckets, M))       # (2M + 1, H)


def embedding_width(cfg: EncoderConfig) -> int:
    """The width E of the token / position / type embeddings (and of the tied LM projection)."""
    return cfg.embedding_size or cfg.hidden_size


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout; (B, T, E) -> (B, T, D).

    `embedding_size` E narrower than the hidden size D adds ELECTRA's `embeddings_project`, a Linear
    E -> D after the LayerNorm (Clark et al. 2020, section 3.2 / the official ELECTRA-Small).
    `position_offset` shifts the rows the position ids read: RoBERTa's (fairseq's) table keeps rows
    0..pad_token_id for the padding index, a real token at position i reads row i + pad_token_id + 1
    (transformers' `create_position_ids_from_input_ids` on a right-padded batch); the table holds
    max_positions + position_offset rows so that max_positions stays the usable length."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        E = embedding_width(cfg)
        self.offset = cfg.position_offset
        self.word = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_positions + cfg.position_offset, E) if cfg.absolute_positions else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.project = nn.Linear(E, cfg.hidden_size) if E != cfg.hidden_size else None

    def forward(self, inputs_embeds: Tensor, position_ids: Tensor, token_type_ids: Tensor | None,
                project: bool = True) -> Tensor:
        """(B, T, E) word embeddings -> (B, T, D), or (B, T, E) with `project=False` (what an ELECTRA
        generator reads: it shares the tables and LayerNorm, and projects them to its own width)."""
        x = inputs_embeds  # (B, T, E)
        if self.position is not None:
            x = x + self.position(position_ids + self.offset if self.offset else position_ids)
        if self.token_type is not None:
            x = x + (self.token_type(token_type_ids) if token_type_ids is not None else self.token_type.weight[0])
        x = self.dropout(self.norm(x))
        return self.project(x) if self.project is not None and project else x   # (B, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x: Tensor, mask: Tensor | FlexLayout | None) -> Tensor:
        return self.step(x, mask)[0]

    def step(self, x: Tensor, mask: Tensor | FlexLayout | None,
             past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, D) attending to the cached `past` keys/values ((B, H, P, Dh) each) and to itself;
        mask (B, 1|H, T|1, P + T) for SDPA, or a FlexLayout. Returns the output (B, T, D) and the new
        tokens' own (k, v)."""
        B, T, D = x.shape
        H = self.num_heads
        q = self.query(x).view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
        k = self.key(x).view(B, T, H, D // H).transpose(1, 2)
        v = self.value(x).view(B, T, H, D // H).transpose(1, 2)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))  # (B, H, P+T, Dh)
        if isinstance(mask, FlexLayout):          # no attention dropout there (BlockStack checks)
            y = mask.attend(q, keys, values)                                             # (B, H, T, Dh)
        else:
            dropout = self.attention_dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=dropout)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(B, T, D)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | FlexLayout | None) -> Tensor:
        return self.step(x, mask)[0]

    def step(self, x: Tensor, mask: Tensor | FlexLayout | None,
             past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The block over new tokens x (B, T, D) with cached keys/values `past` (see Attention.step);
        returns (B, T, D) and the new tokens' (k, v) of this layer."""
        if self.pre_norm:
            a, kv = self.attn.step(self.attn_norm(x), mask, past)
            x = x + self.dropout(a)
            return x + self.dropout(self.mlp(self.mlp_norm(x))), kv
        a, kv = self.attn.step(x, mask, past)
        x = self.attn_norm(x + self.dropout(a))
        return self.mlp_norm(x + self.dropout(self.mlp(x))), kv


def attention_bias(attention_mask: Tensor | None, relative_bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Combine a padding / layout mask and a relative bias into what SDPA takes.

    attention_mask: None, (B, T) key padding, (B, T, T) or (B, 1, T, T) boolean "may attend".
    Returns None, a boolean (B, 1, Tq|1, T) mask, or an additive float (B, H|1, T, T) bias.
    Queries and keys may differ in number (incremental decoding): (B, Tk), (B, Tq, Tk), (B, 1, Tq, Tk).
    """
    mask = None
    if attention_mask is not None:
        mask = attention_mask.bool()
        mask = mask[:, None, None, :] if mask.dim() == 2 else (mask[:, None] if mask.dim() == 3 else mask)
    if relative_bias is None:
        return mask
    bias = relative_bias.to(dtype)
    if mask is not None:
        bias = bias.masked_fill(~mask, torch.finfo(dtype).min)
    return bias


@dataclass(frozen=True)
class FlexLayout:
    """What `flex_attention` takes instead of `attention_bias`'s dense mask: a block mask from the
    boolean "may attend" mask (blocks nobody may attend are skipped) and the relative bias as a
    score_mod that reads one (2M + 1, H) row per key - query distance (`RelativePositionBias.by_distance`).

    Built once per pass by `BlockStack.attention_inputs`; the score_mod is made in `attend`, inside the
    (possibly compiled) block, from the tensors held here. flex_attention has no dropout, and on the
    CPU no backward (torch 2.13): the "auto" kernel uses it only on CUDA, without attention dropout.
    A query row with no key it may attend gives 0 here and NaN / a uniform average under SDPA."""

    block_mask: BlockMask | None     # None: every key
    bias: Tensor | None              # (2M + 1, H) or None: no relative bias
    query_positions: Tensor | None   # (B, Tq) position ids of the queries (with `bias`)
    key_positions: Tensor | None     # (B, Tk) ... of the keys
    max_distance: int = 0            # M

    def score_mod(self, dtype: torch.dtype) -> Callable | None:
        """score (a scalar per query i, key j of row b, head h) + bias[clamp(key pos - query pos, -M, M) + M, h]."""
        if self.bias is None:
            return None
        bias, qpos, kpos, M = self.bias.to(dtype), self.query_positions, self.key_positions, self.max_distance

        def add_relative_bias(score: Tensor, b: Tensor, h: Tensor, i: Tensor, j: Tensor) -> Tensor:
            return score + bias[(kpos[b, j] - qpos[b, i]).clamp(-M, M) + M, h]
        return add_relative_bias

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, H, Tq, Dh) queries over (B, H, Tk, Dh) keys and values -> (B, H, Tq, Dh)."""
        return _flex_kernel(q)(q, k, v, score_mod=self.score_mod(q.dtype), block_mask=self.block_mask)

    @staticmethod
    def build(attention_mask: Tensor | None, relative_bias: RelativePositionBias | None, position_ids: Tensor,
              key_position_ids: Tensor) -> FlexLayout:
        """attention_mask as `attention_bias` takes it ((B, Tk), (B, Tq, Tk) or (B, 1, Tq, Tk) bool);
        position_ids (B, Tq) and key_position_ids (B, Tk) place queries and keys for the bias."""
        (B, Tq), Tk = position_ids.shape, key_position_ids.shape[1]
        block_mask = None
        if attention_mask is not None:
            allowed = attention_mask.bool()
            if allowed.dim() == 2:                                               # (B, Tk) key padding
                def may_attend(b, h, i, j):
                    return allowed[b, j]
            else:
                allowed = allowed[:, 0] if allowed.dim() == 4 else allowed       # (B, Tq, Tk)

                def may_attend(b, h, i, j):
                    return allowed[b, i, j]
            block_mask = create_block_mask(may_attend, B, None, Tq, Tk, device=position_ids.device)
        if relative_bias is None:
            return FlexLayout(block_mask, None, None, None)
        return FlexLayout(block_mask, relative_bias.by_distance(), position_ids, key_position_ids,
                          relative_bias.max_distance)


_COMPILED_FLEX: list = []


def _flex_kernel(q: Tensor) -> Callable:
    """flex_attention compiled on CUDA (its fused kernel; eager flex materialises the scores), as is
    inside an already compiled region, eager on the CPU (forward only: tests and analysis)."""
    if not q.is_cuda or torch.compiler.is_compiling():
        return flex_attention
    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention))
    return _COMPILED_FLEX[0]


def set_attention_kernel(module: nn.Module, kernel: str) -> None:
    """Every BlockStack in `module` (encoder, generators, decoders) takes `kernel`: "auto" (flex where
    it helps and works: CUDA, a relative bias or a layout, no attention dropout, at least
    FLEX_MIN_QUERIES queries), "sdpa" or "flex" (always; for tests and measurements)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, not {kernel!r}")
    if kernel == "flex" and flex_attention is None:
        raise ValueError(f"flex attention needs torch >= 2.5 (this is {torch.__version__})")
    for m in module.modules():
        if isinstance(m, BlockStack):
            m.attention_kernel = kernel


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: N(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BlockStack(nn.Module):
    """The Transformer blocks over already-embedded inputs (B, T, D) -> (B, T, D): the shared
    relative bias, the blocks, and the final LayerNorm of pre-LN stacks. Auxiliary networks that
    read another module's embeddings (ELECTRA/COCO-LM generators, MAE-LM's decoder) are BlockStacks."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.relative_bias = RelativePositionBias(cfg) if cfg.relative_buckets > 0 else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None
        self.attention_kernel = "auto"        # not a config field: a kernel choice (set_attention_kernel)

    def attention_inputs(self, x: Tensor, position_ids: Tensor, attention_mask: Tensor | None = None,
                         key_position_ids: Tensor | None = None) -> Tensor | FlexLayout | None:
        """What every block's attention takes for queries x (B, Tq, D) at `position_ids` (B, Tq) over keys
        at `key_position_ids` (B, Tk, default the queries'): for SDPA None, a boolean mask or the additive
        bias (`attention_bias`), for flex_attention a `FlexLayout` (see `set_attention_kernel`)."""
        keys = position_ids if key_position_ids is None else key_position_ids
        if self._uses_flex(x, attention_mask):
            return FlexLayout.build(attention_mask, self.relative_bias, position_ids, keys)
        rel = self.relative_bias(position_ids, keys) if self.relative_bias is not None else None  # (B, H, Tq, Tk)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        return attention_bias(attention_mask, rel, dtype)

    def _uses_flex(self, x: Tensor, attention_mask: Tensor | None) -> bool:
        dropout = self.training and self.config.attention_dropout > 0
        if self.attention_kernel == "flex":
            if dropout:
                raise ValueError("flex attention has no attention dropout: set model.attention_dropout=0 "
                                 "or use the sdpa kernel")
            return True
        dense = self.relative_bias is not None or (attention_mask is not None and attention_mask.dim() > 2)
        return (self.attention_kernel == "auto" and flex_attention is not None and x.is_cuda and dense
                and not dropout and x.shape[1] >= FLEX_MIN_QUERIES)

    def forward(self, x: Tensor, position_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        mask = self.attention_inputs(x, position_ids, attention_mask)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x) if self.final_norm is not None else x

    def step(self, x: Tensor, position_ids: Tensor, attention_mask: Tensor | None = None,
             past: list[tuple[Tensor, Tensor]] | None = None,
             past_position_ids: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """`forward` for new tokens x (B, T, D) that also attend to cached earlier tokens.

        past: per layer (k, v), each (B, H, P, Dh), as returned by earlier calls (concatenated along
        dim 2 by the caller, which keeps only the tokens it wants later tokens to see);
        past_position_ids: (B, P), their position ids (the relative bias needs them);
        attention_mask: None, (B, P + T) key padding or (B, T, P + T) boolean "may attend".
        Returns the hidden states (B, T, D) and per layer the new tokens' (k, v), (B, H, T, Dh) each.
        """
        keys = position_ids if past is None else torch.cat([past_position_ids, position_ids], 1)  # (B, P+T)
        mask = self.attention_inputs(x, position_ids, attention_mask, keys)
        present = []
        for i, layer in enumerate(self.layers):
            x, kv = layer.step(x, mask, None if past is None else past[i])
            present.append(kv)
        return (self.final_norm(x) if self.final_norm is not None else x), present


class Encoder(BlockStack):
    """Token ids (or embeddings) -> hidden states (B, T, D). Never sees labels or objectives."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg)
        self.embeddings = Embeddings(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The input embedding table: LM heads tie their output projection to it."""
        return self.embeddings.word

    def embed(self, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
              position_ids: Tensor | None = None, token_type_ids: Tensor | None = None,
              project: bool = True) -> tuple[Tensor, Tensor]:
        """The embedding layer's output (B, T, D) and the position ids it used (B, T); with
        `project=False` the output before ELECTRA's embedding projection, (B, T, E)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word(input_ids)  # (B, T, D)
        B, T, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=inputs_embeds.device).expand(B, T)
        return self.embeddings(inputs_embeds, position_ids, token_type_ids, project), position_ids

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        x, position_ids = self.embed(input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids,
                                     token_type_ids=token_type_ids)
        return super().forward(x, position_ids, attention_mask)

    def step(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        past: list[tuple[Tensor, Tensor]] | None = None,
        past_position_ids: Tensor | None = None,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Incremental forward: new tokens (B, T) attend to the cached keys/values of earlier tokens
        (`past`, per layer (k, v) of shape (B, H, P, Dh), with their position ids (B, P)) and to each
        other as `attention_mask` allows ((B, P + T) or (B, T, P + T) boolean). Position ids default to
        P, P + 1, ... Returns hidden states (B, T, D) and per layer the new tokens' (k, v) (B, H, T, Dh);
        append the ones later tokens may see to `past` (torch.cat along dim 2). With `past=None` this is
        `forward` plus the keys/values. Running a sequence in chunks this way equals one `forward` when
        no token attends to a later one."""
        if past is not None and past_position_ids is None:
            raise ValueError("pass past_position_ids with past (the relative bias and positions need them)")
        if position_ids is None:
            ref = input_ids if input_ids is not None else inputs_embeds
            start = 0 if past is None else past_position_ids.shape[1]
            position_ids = (start + torch.arange(ref.shape[1], device=ref.device)).expand(ref.shape[0], -1)
        x, position_ids = self.embed(input_ids, inputs_embeds=inputs_embeds, position_ids=position_ids,
                                     token_type_ids=token_type_ids)
        return super().step(x, position_ids, attention_mask, past, past_position_ids)
