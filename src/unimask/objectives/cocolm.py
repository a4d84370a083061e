"""COCO-LM: corrective language modelling + sequence contrastive learning (Meng et al. 2021,
"COCO-LM: Correcting and Contrasting Text Sequences for Language Model Pretraining", NeurIPS 2021).

Section 3 / figure 2 of the paper: an auxiliary MLM (the "generator", section 3 "Auxiliary model")
fills the masked positions with tokens sampled from its softmax; the main model then learns
- Corrective Language Modeling (CLM, section 3.1): a binary copy head on every token predicts
  whether the token is the original one, and an LM head over the whole vocabulary, tied to the word
  embeddings, recovers the original token at the masked positions. The LM loss of position i is
  weighted by (1 - p_copy(i)), detached, so the LM head learns to correct what the copy head does
  not trust (the "stop gradient" in equation 3);
- Sequence Contrastive Learning (SCL, section 3.2): the [CLS] embedding of the corrupted sequence
  and that of an uncorrupted random crop of the same text form a positive pair; the other 2B - 2
  sequences of the batch are the negatives (InfoNCE with temperature, diagonal excluded).
The generator, the heads and the projection are discarded after pretraining; only the encoder is
fine-tuned and exported.

Recipe facts checked in the official fairseq code (microsoft/COCO-LM):
- `fairseq/models/cocolm/model.py`: generator = `generator_layers` (4 for base) full-width post-LN
  layers sharing the token embeddings (and, except in "zero-dropout" mode, the position embeddings
  and the embedding LayerNorm); its LM head is dense -> GELU -> LayerNorm -> tied projection.
  `generator_sample_mode` default "eval": the replacements come from a separate no-grad pass with
  the generator in eval mode (no dropout); the training pass with dropout gives the MLM loss.
  Sampling is at temperature 1 from the fp32 softmax. The main model's `BinaryHead` is a single
  Linear(D, 1) on every non-pad token; the `CLMHead` is the tied projection + its own bias, with
  no dense/LayerNorm transform; the `SCLHead` is dense(D, seq_contrast_dim=D) -> GELU ->
  LayerNorm on the first token. Defaults: binary_loss_weight 50, scl_loss_weight 1,
  temperature 1, relative position bias 32 buckets / max distance 128 (plus learned absolute
  positions), dropout 0.1, no segment embeddings.
- the "cocolm" criterion: masked positions = the [MASK] tokens of the input, sample_size = their
  number; gen loss = CE summed over them; binary loss = BCE averaged over the non-pad tokens
  (target 1 = not replaced; a sample equal to the original counts as not replaced) x sample_size;
  CLM loss = sum over masked positions of CE x (1 - sigmoid(binary logit)) computed under no_grad;
  SCL on L2-normalised embeddings, 2B x 2B similarity / temperature with -inf on the diagonal,
  0.5 x summed CE over the 2B rows, then / B x sample_size; total = gen + 50 binary + clm + scl.
  Negatives are local to each GPU (no all-gather).
- the "cocolm" task and `data/mask_tokens_dataset2.py`: 15% of the tokens, all replaced by [MASK]
  (leave_unmasked_prob = random_token_prob = 0), [CLS] never masked; `data/span_dataset.py`: the
  SCL view is a random contiguous crop of int(span x length) tokens of the *original* block. The
  released code ships no pretraining command, so `--span` has no value there: crop_fraction = 0.9
  here is our reading of the paper (section 3.2), not checked against code.

Differences, all deliberate: the masking budget is exactly round(15% of the maskable tokens) per
row (unimask's `token_mask`; official: probabilistic rounding over all tokens), so num_targets is
fixed; the crop is taken from the tokens after [CLS] and a [CLS] is always put in front (the
official `add_span_cls` option; without it a crop usually loses [CLS] and SCL would read an
arbitrary first token); sampling is inverse-CDF (`masking.sample_tokens`, the same distribution as
torch.multinomial); the "zero_dropout" mode keeps sharing the position embeddings and embedding
LayerNorm (official: only the token embeddings) and turns their dropout off for the generator pass.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import flops
from ..model.encoder import Encoder, EncoderConfig, embedding_width, init_bert_weights
from . import masking
from .base import Objective, ObjectiveOutput, TokenBatch, Vocab, ratio
from .generator import MLMGenerator, generator_config
from .mlm import check_masking, mask_and_label, row_cross_entropy, summed_cross_entropy


@dataclass
class CocoLMConfig:
    # corruption: official COCO-LM masks 15% and puts [MASK] at all of them (no random / kept tokens)
    mask_prob: float = 0.15              # fraction of maskable tokens the generator predicts
    mask_token_prob: float = 1.0         # of those: [MASK] ...
    random_token_prob: float = 0.0       # ... a uniform random token; the rest stay unchanged
    masking: Literal["token", "whole_word", "span"] = "token"
    # auxiliary generator (paper section 3; official generator_layers=4 at the main model's width)
    generator_layers: int = 4
    generator_width_ratio: float = 1.0   # generator hidden size / main hidden size
    generator_weight: float = 1.0        # weight of its MLM loss (mean over masked tokens); 0 = frozen
    generator_temperature: float = 1.0   # softmax temperature of the replacement sampling
    # "eval": separate no-grad, no-dropout sampling pass (official default); "train": sample from the
    # training pass's logits (one pass, with dropout, as ELECTRA); "zero_dropout": generator without
    # dropout, one pass
    generator_sample_mode: Literal["eval", "train", "zero_dropout"] = "eval"
    # corrective LM (section 3.1)
    copy_weight: float = 50.0            # weight of the copy-head BCE (mean over real tokens)
    clm_weight: float = 1.0              # weight of the LM correction loss (mean over masked tokens); 0 = off
    copy_weighting: bool = True          # scale each position's LM loss by (1 - p_copy).detach()
    # sequence contrastive learning (section 3.2)
    scl_weight: float = 1.0              # weight of the SCL loss (mean over the 2B views); 0 = off
    scl_temperature: float = 1.0
    crop_fraction: float = 0.9           # fraction of a block's tokens (after [CLS]) kept in its SCL view
    scl_negatives: Literal["local", "global"] = "local"   # "global": views of all ranks as negatives (training)

    def __post_init__(self) -> None:
        check_masking(self)
        if self.generator_layers < 1:
            raise ValueError(f"generator_layers must be at least 1, not {self.generator_layers}")
        if not 0 < self.generator_width_ratio <= 4:
            raise ValueError(f"generator_width_ratio must be in (0, 4], not {self.generator_width_ratio}")
        if self.generator_sample_mode not in ("eval", "train", "zero_dropout"):
            raise ValueError(f"generator_sample_mode must be eval, train or zero_dropout, "
                             f"not {self.generator_sample_mode!r}")
        for name in ("generator_temperature", "scl_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("generator_weight", "copy_weight", "clm_weight", "scl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")
        if self.copy_weight + self.clm_weight + self.scl_weight == 0:
            raise ValueError("copy_weight, clm_weight and scl_weight are all 0: the main model would learn nothing")
        if self.copy_weighting and self.clm_weight > 0 and self.copy_weight == 0:
            raise ValueError("copy_weighting=true needs a trained copy head: set copy_weight > 0, "
                             "or copy_weighting=false")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], not {self.crop_fraction}")
        if self.scl_negatives not in ("local", "global"):
            raise ValueError(f"scl_negatives must be local or global, not {self.scl_negatives!r}")


# ---- pure pieces -----------------------------------------------------------------------------------

def view_length(seq_len: int, crop_fraction: float) -> int:
    """Tokens in the SCL view of a full block of `seq_len`: [CLS] + int(fraction x (seq_len - 1))."""
    return 1 + max(1, int(crop_fraction * (seq_len - 1)))


def crop_view(input_ids: Tensor, attention_mask: Tensor | None, crop_fraction: float, vocab: Vocab,
              rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """SCL's positive view (section 3.2): a random contiguous crop of each row's original text.

    input_ids (B, T) = [CLS] + s_b real tokens (+ [PAD]), attention_mask (B, T) or None (all real)
    -> view ids (B, T) = [CLS] + tokens[1 + start_b : 1 + start_b + v_b] + [PAD]..., and its (B, T)
    bool padding mask, with v_b = max(1, int(crop_fraction x s_b)) and start_b uniform in
    [0, s_b - v_b]. Static shapes: the view keeps the block's width, padded. Row b's view occupies
    positions 0..v_b, so with full blocks every view is exactly `view_length(T, fraction)` long.
    """
    B, T = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=device)
    elif attention_mask.dim() == 2:
        lengths = attention_mask.bool().sum(-1)                                  # (B,) real tokens
    else:
        raise ValueError("COCO-LM's SCL view needs a (B, T) padding mask, not a layout mask")
    stream = (lengths - 1).clamp(min=0)                                          # (B,) after [CLS]
    keep = (stream.double() * crop_fraction).floor().long().clamp(min=1)         # float64: as Python's int()
    keep = torch.minimum(keep, stream)                                           # (B,)
    u = torch.rand(B, generator=rng, device=device, dtype=torch.float64)
    start = (u * (stream - keep + 1).double()).floor().long()                    # (B,) in [0, s - v]
    j = torch.arange(T - 1, device=device)                                       # (T-1,)
    source = (1 + start[:, None] + j).clamp(max=T - 1)                           # (B, T-1)
    inside = j < keep[:, None]                                                   # (B, T-1)
    body = torch.where(inside, input_ids.gather(1, source), torch.full_like(source, vocab.pad))
    view = torch.cat([torch.full((B, 1), vocab.cls, dtype=input_ids.dtype, device=device), body], dim=1)
    mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=device), inside], dim=1)
    return view, mask


def scl_loss(z_a: Tensor, z_b: Tensor, temperature: float,
             all_gather: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, int]:
    """Sequence contrastive loss (section 3.2, equation 4) over B positive pairs.

    z_a, z_b: (B, E) projections of the two views of each text (not yet normalised). The 2B
    L2-normalised views are the queries; each is scored against every other view (its own entry
    excluded) by cosine / temperature, and the target is its partner. Returns (CE summed over the
    2B queries in fp32, number of queries whose best match is the partner, 2B).

    With `all_gather` ((N, E) -> (world * N, E), differentiable), the keys are the views of all ranks,
    so each query has 2 x world x B - 2 negatives; the queries stay local (each rank sums its own).
    """
    with torch.autocast(z_a.device.type, enabled=False):
        z = F.normalize(torch.cat([z_a, z_b]).float(), dim=-1)                       # (2B, E)
        n, B = z.shape[0], z_a.shape[0]
        rows = torch.arange(n, device=z.device)
        partner = (rows + B) % n                                                     # (2B,)
        if all_gather is None:
            keys, offset = z, 0
        else:
            keys = all_gather(z)                                                     # (W*2B, E)
            # this rank's block: the one equal to z (all_gather copies it bit for bit); no rank id needed
            own = (keys.detach().view(-1, n, z.shape[1]) == z.detach()).flatten(1).all(1)   # (W,)
            offset = own.long().argmax() * n
        sim = z @ keys.t() / temperature                                             # (2B, K)
        self_col = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, (offset + rows)[:, None], True)
        sim = sim.masked_fill(self_col, float("-inf"))
        target = offset + partner                                                    # (2B,)
        loss = F.cross_entropy(sim, target, reduction="sum")
        correct = (sim.detach().argmax(-1) == target).sum()
    return loss, correct, n


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    """Dropout off in `modules` for the duration (the official generator_sample_mode "eval")."""
    before = [m.training for m in modules]
    for m in modules:
        m.train(False)
    try:
        yield
    finally:
        for m, mode in zip(modules, before):
            m.train(mode)


class SequenceProjection(nn.Module):
    """SCL's projection of the [CLS] state: dense -> GELU -> LayerNorm (official `SCLHead`); the loss
    L2-normalises it. (B, D) -> (B, D)."""

    def __init__(self, hidden_size: int, layer_norm_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, cls_hidden: Tensor) -> Tensor:
        return self.norm(F.gelu(self.dense(cls_hidden)))


# ---- the objective ---------------------------------------------------------------------------------

class CocoLM(Objective):
    """Generator MLM + corrective LM + sequence contrastive learning as one summed loss and one count.

    num_targets = n, the number of masked tokens. With R real (non-pad) tokens and 2B SCL views:

        loss = generator_weight * sum_masked CE_gen
             + copy_weight * sum_real BCE_copy * n / R
             + clm_weight  * sum_masked CE_clm x (1 - sigmoid(copy_logit)).detach()
             + scl_weight  * sum_views CE_scl * n / 2B

    so loss / n = the sum of the weighted per-part means (gen_loss, copy_loss, clm_loss, scl_loss
    metrics) within a micro-batch: the official criterion's loss / sample_size. Across micro-batches
    and workers the trainer divides by the summed n, which weights each micro-batch's parts by its n;
    with fixed-count masking and full blocks, n / R and n / 2B are the same in every micro-batch and
    this is exactly the mean of the parts over the global batch.

    Parts switched off (weight 0) are not built: no parameters, no compute, no metrics (so DDP sees
    no unused parameters). generator_weight = 0 freezes the generator's own weights (a random
    corrupter; the embeddings it shares still move with the main model).
    """

    name = "cocolm"
    Config = CocoLMConfig

    def __init__(self, cfg: CocoLMConfig, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__(cfg, encoder_cfg, vocab)
        if cfg.masking == "whole_word" and vocab.word_start is None:
            raise ValueError("whole_word masking needs the tokenizer's word_start table in Vocab")
        D = encoder_cfg.hidden_size
        if embedding_width(encoder_cfg) != D:
            raise ValueError(f"COCO-LM's corrective LM projects hidden states onto the word embeddings, so it "
                             f"needs model.embedding_size equal to hidden_size ({D}), not {encoder_cfg.embedding_size}")
        width = round(cfg.generator_width_ratio * D)
        dropout = 0.0 if cfg.generator_sample_mode == "zero_dropout" else None
        try:
            gen_cfg = generator_config(encoder_cfg, width, cfg.generator_layers, dropout)
        except ValueError as e:
            raise ValueError(f"objective.generator_width_ratio={cfg.generator_width_ratio} gives width {width}: "
                             f"{e}") from None
        self.generator = MLMGenerator(encoder_cfg, gen_cfg)
        if cfg.generator_weight == 0:
            self.generator.requires_grad_(False)
        # does a no-dropout sampling pass differ from the training pass? (embedding or generator dropout)
        self._sampling_pass_differs = max(gen_cfg.dropout, gen_cfg.attention_dropout, encoder_cfg.dropout) > 0

        init = lambda m: init_bert_weights(m, encoder_cfg.initializer_range)  # noqa: E731
        self.copy_head = nn.Linear(D, 1) if cfg.copy_weight > 0 else None
        self.clm_bias = nn.Parameter(torch.zeros(encoder_cfg.vocab_size)) if cfg.clm_weight > 0 else None
        self.scl_head = SequenceProjection(D, encoder_cfg.layer_norm_eps) if cfg.scl_weight > 0 else None
        for head in (self.copy_head, self.scl_head):
            if head is not None:
                head.apply(init)

    # -- data loader side --

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        """The generator's input (15% chosen, all [MASK] by default), labels there, and, with SCL on,
        the uncorrupted cropped view in extras["scl_view_ids"] / extras["scl_view_mask"] (B, T)."""
        masked = mask_and_label(batch, self.cfg, self.vocab, rng)
        extras = dict(batch.extras)
        if self.scl_head is not None:
            view, view_mask = crop_view(batch.input_ids, batch.attention_mask, self.cfg.crop_fraction, self.vocab, rng)
            extras["scl_view_ids"], extras["scl_view_mask"] = view, view_mask
        return masked.replace(extras=extras)

    # -- model side --

    def _sampling_rng(self, batch: TokenBatch) -> torch.Generator | None:
        """Training samples from the global RNG (per-rank seeded, saved in checkpoints). Evaluation
        uses a generator seeded from the batch, so eval figures are reproducible and evaluating does
        not shift the training stream (as in electra.py)."""
        if self.training:
            return None
        seed = int(batch.input_ids.sum()) % (2 ** 31)
        return torch.Generator(device=batch.input_ids.device).manual_seed(seed)

    def _generate(self, encoder: Encoder, batch: TokenBatch, selected: Tensor, targets: Tensor):
        """Generator MLM loss and the replacements. Returns (summed CE or None when frozen, (N,)
        generator argmax, (N,) sampled ids). The sampled ids carry no gradient by construction."""
        cfg = self.cfg
        args = (encoder, batch.input_ids, batch.position_ids, batch.token_type_ids, batch.attention_mask)
        gen_sum = None
        sample_logits = None
        if cfg.generator_weight > 0:
            no_dropout = cfg.generator_sample_mode == "zero_dropout"             # the shared embeddings' too
            with _eval_mode(encoder.embeddings) if no_dropout else contextlib.nullcontext():
                hidden = self.generator(*args)                                           # (B, T, Dg)
            logits = self.generator.logits(hidden[selected], encoder)                    # (N, V)
            gen_sum, predicted = summed_cross_entropy(logits, targets)                   # fp32, (N,)
            sample_logits = logits.detach()
        separate_pass = cfg.generator_weight == 0 or (
            cfg.generator_sample_mode == "eval" and self.training and self._sampling_pass_differs)
        if separate_pass:
            with torch.no_grad(), _eval_mode(self.generator, encoder.embeddings):
                hidden = self.generator(*args)                                           # (B, T, Dg)
                sample_logits = self.generator.logits(hidden[selected], encoder)         # (N, V)
            if gen_sum is None:
                predicted = sample_logits.argmax(-1)
        sampled = masking.sample_tokens(sample_logits, cfg.generator_temperature, self._sampling_rng(batch))
        return gen_sum, predicted, sampled

    def compute_parts(self, encoder: Encoder, batch: TokenBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The unweighted summed parts {"gen", "copy", "clm", "scl"} (only those switched on) with
        their gradients, and the detached metrics. `forward` weights and adds them."""
        cfg = self.cfg
        selected = batch.labels.ne(-100)                                                    # (B, T)
        targets = batch.labels[selected]                                                    # (N,)
        n = selected.sum()
        parts: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}

        # 1. auxiliary MLM and the replacements (no gradient through the sampling)
        gen_sum, gen_predicted, sampled = self._generate(encoder, batch, selected, targets)
        if gen_sum is not None:
            parts["gen"] = gen_sum
            metrics["gen_loss"] = ratio(gen_sum, n)
        replaced_ids = batch.input_ids.masked_scatter(selected, sampled)                   # (B, T)
        original = torch.zeros_like(selected).masked_scatter(selected, sampled == targets)  # (B, T) at masked
        original |= ~selected                                                               # unmasked: original
        metrics["gen_acc"] = ratio((gen_predicted == targets).sum(), n)
        metrics["sampled_acc"] = ratio((sampled == targets).sum(), n)                      # as ELECTRA's

        # 2. main model on the corrupted sequence
        hidden = encoder(replaced_ids, position_ids=batch.position_ids, token_type_ids=batch.token_type_ids,
                         attention_mask=batch.attention_mask)                              # (B, T, D)
        real = torch.ones_like(selected)                                                    # (B, T)
        if batch.attention_mask is not None and batch.attention_mask.dim() == 2:
            real = batch.attention_mask.bool()
        copy_logits = None
        if self.copy_head is not None:
            copy_logits = self.copy_head(hidden).squeeze(-1).float()                       # (B, T)
            n_real = real.sum()
            copy_sum = F.binary_cross_entropy_with_logits(
                copy_logits, original.float(), weight=real.float(), reduction="sum")
            parts["copy"] = copy_sum
            parts["copy_scale"] = n / n_real.clamp(min=1)                                  # n / R
            metrics["copy_loss"] = ratio(copy_sum, n_real)
            metrics["replaced_frac"] = ratio((~original).logical_and(real).sum(), n_real)  # as ELECTRA's
            metrics["copy_acc"] = ratio(((copy_logits > 0) == original).logical_and(real).sum(), n_real)
            flagged = (copy_logits <= 0) & real                                            # predicted "replaced"
            replaced = ~original & real
            true_pos = (flagged & replaced).sum()
            metrics["copy_precision"] = ratio(true_pos, flagged.sum())                      # as ELECTRA's rtd_*
            metrics["copy_recall"] = ratio(true_pos, replaced.sum())

        # 3. corrective LM at the masked positions, tied projection + own bias (official CLMHead)
        if self.clm_bias is not None:
            logits = F.linear(hidden[selected], encoder.word_embeddings.weight, self.clm_bias)   # (N, V)
            ce, predicted = row_cross_entropy(logits, targets)                             # (N,) fp32
            if cfg.copy_weighting and copy_logits is not None:
                weights = 1.0 - torch.sigmoid(copy_logits[selected].detach())              # (N,) stop-gradient
                clm_sum = (ce * weights).sum()
            else:
                clm_sum = ce.sum()
            parts["clm"] = clm_sum
            metrics["clm_loss"] = ratio(clm_sum, n)
            metrics["clm_ce"] = ratio(ce.detach().sum(), n)
            metrics["clm_acc"] = ratio((predicted == targets).sum(), n)

        # 4. sequence contrastive learning: corrupted sequence vs its uncorrupted crop
        if self.scl_head is not None:
            view_ids = batch.extras["scl_view_ids"]
            width = view_length(view_ids.shape[1], cfg.crop_fraction)                     # static
            view_mask = batch.extras["scl_view_mask"][:, :width] if batch.attention_mask is not None else None
            view_hidden = encoder(view_ids[:, :width], attention_mask=view_mask)           # (B, Tv, D)
            z_main = self.scl_head(hidden[:, 0])                                           # (B, D)
            z_view = self.scl_head(view_hidden[:, 0])                                      # (B, D)
            # cross-rank negatives in training only: evaluation gives ranks unequal numbers of batches
            # (loader.eval_batches), and a collective inside forward would then wait forever
            gather = self.all_gather if cfg.scl_negatives == "global" and self.training else None
            scl_sum, scl_correct, views = scl_loss(z_main, z_view, cfg.scl_temperature, gather)
            parts["scl"] = scl_sum
            parts["scl_scale"] = n / views                                                 # n / 2B
            metrics["scl_loss"] = ratio(scl_sum, scl_sum.new_tensor(views))
            metrics["scl_acc"] = ratio(scl_correct, scl_sum.new_tensor(views))
        parts["n"] = n
        return parts, metrics

    def train_flops_per_token(self, seq_len: int, predicted_fraction: float) -> float:
        """Per text token (model/flops.py): the generator's training pass (forward only when frozen)
        and, in "eval" sample mode, its no-grad sampling pass; the main model on the corrupted text
        with the copy head on every token and the CLM projection on the masked fraction; with SCL, the
        main model again on the cropped view."""
        cfg, main, gen = self.cfg, self.encoder_cfg, self.generator.blocks.config
        D, Dg, V, f = main.hidden_size, gen.hidden_size, main.vocab_size, predicted_fraction
        project = D * Dg if self.generator.project is not None else 0

        def generator(per: int) -> float:
            return flops.stack_flops(gen, seq_len, per) + per * project + f * flops.lm_head_flops(Dg, D, V, per)

        total = generator(flops.TRAIN if cfg.generator_weight > 0 else flops.FORWARD)
        if cfg.generator_sample_mode == "eval" and self._sampling_pass_differs:
            total += generator(flops.FORWARD)
        total += flops.stack_flops(main, seq_len)
        total += flops.TRAIN * D if self.copy_head is not None else 0
        total += f * flops.TRAIN * D * V if self.clm_bias is not None else 0
        if self.scl_head is not None:
            view = view_length(seq_len, cfg.crop_fraction)
            total += view / seq_len * flops.stack_flops(main, view)
        return float(total)

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        cfg = self.cfg
        parts, metrics = self.compute_parts(encoder, batch)
        n = parts["n"]
        loss = torch.zeros((), device=n.device)
        if "gen" in parts:
            loss = loss + cfg.generator_weight * parts["gen"]
        if "copy" in parts:
            loss = loss + cfg.copy_weight * parts["copy"] * parts["copy_scale"]
        if "clm" in parts:
            loss = loss + cfg.clm_weight * parts["clm"]
        if "scl" in parts:
            loss = loss + cfg.scl_weight * parts["scl"] * parts["scl_scale"]
        return ObjectiveOutput(loss, n, metrics)

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        extra = {}
        if "clm_ce" in means:
            extra["clm_ppl"] = math.exp(min(means["clm_ce"], 50.0))
        if "gen_loss" in means:
            extra["gen_ppl"] = math.exp(min(means["gen_loss"], 50.0))
        return {**means, **extra}
