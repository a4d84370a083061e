"""ELECTRA: replaced-token detection (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators", ICLR 2020, section 2 "Method" and section 3.2).

A small masked-LM generator (`MLMGenerator`, sharing the discriminator's token / position / type
embeddings and their LayerNorm, section 3.2 "Weight Sharing" and "Smaller Generators") fills 15% of
the positions with tokens sampled from its softmax; the discriminator (the main encoder, the one kept
for fine-tuning and export) predicts for every real token whether it was replaced. The sampling is
discrete and carries no gradient: the generator learns from its own MLM loss only (section 2).
A sampled token equal to the original counts as "original" (section 2: a correctly generated
token is considered "real").

    loss = generator_weight * MLM(generator) + rtd_weight * BCE(discriminator over all real tokens)

Recipe facts from the official code (google-research/electra): `pretrain_helpers.mask` puts [MASK]
at 85% of the chosen positions and leaves 15% unchanged (no random tokens); `configure_pretraining`
has mask_prob 0.15, gen_weight 1, disc_weight 50, temperature 1, generator 1/4 of the hidden size
(small) or 1/3 (base) at full depth; `run_pretraining._get_discriminator_output` runs dense -> GELU
-> dense(1) on every position and averages the sigmoid cross-entropy over the input mask, [CLS] and
[SEP] included. Differences: the masking budget here is round(15% of the maskable tokens) per row
(unimask's `token_mask`), not of all real tokens capped at max_predictions_per_seq, and sampling is
inverse-CDF (`masking.sample_tokens`) instead of Gumbel-max: the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import flops
from ..model.encoder import Encoder, EncoderConfig, init_bert_weights
from . import masking
from .base import Objective, ObjectiveOutput, TokenBatch, Vocab, ratio
from .generator import MLMGenerator, generator_config
from .mlm import check_masking, mask_and_label, summed_cross_entropy


@dataclass
class ElectraConfig:
    mask_prob: float = 0.15              # fraction of maskable tokens the generator predicts
    mask_token_prob: float = 0.85        # of those: [MASK] (official ELECTRA: 85%) ...
    random_token_prob: float = 0.0       # ... a uniform random token (ELECTRA: none); the rest stay
    masking: Literal["token", "whole_word", "span"] = "token"
    generator_hidden_size: int = 0       # 0: discriminator width // 3 rounded down to a multiple of 64 (64..width)
    generator_layers: int = 0            # 0: as many layers as the discriminator (ELECTRA's default)
    temperature: float = 1.0             # sampling temperature of the generator's softmax
    generator_weight: float = 1.0        # weight of the generator's MLM loss (mean over masked tokens)
    rtd_weight: float = 50.0             # weight of the replaced-token-detection loss (mean over real tokens)

    def __post_init__(self) -> None:
        check_masking(self)
        for name in ("generator_hidden_size", "generator_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (automatic) or positive, not {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        for name in ("generator_weight", "rtd_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")


def generator_shape(cfg: ElectraConfig, main: EncoderConfig) -> tuple[int, int]:
    """(hidden size, layers) of the generator. Automatic width: D // 3 rounded down to a multiple of
    64 (whole 64-wide heads), at least 64 and at most D: 768 -> 256 (ELECTRA-Base's 1/3), 512 -> 128 and
    256 -> 64 (ELECTRA-Small's 1/4), 1024 -> 320. Automatic depth: the discriminator's (the official
    generator_layers = 1.0)."""
    hidden = cfg.generator_hidden_size or min(main.hidden_size, max(64, main.hidden_size // 3 // 64 * 64))
    return hidden, cfg.generator_layers or main.num_layers


def replace_tokens(input_ids: Tensor, selected: Tensor, sampled: Tensor, originals: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's input and labels (ELECTRA section 2).

    input_ids (B, T) the generator's input, selected (B, T) bool the masked positions, sampled (N,)
    and originals (N,) at those positions in row-major order -> (new (B, T) ids with the samples
    written in, (B, T) bool "replaced": True where the token differs from the original text. A
    sample equal to the original is labelled original.
    """
    fake = input_ids.masked_scatter(selected, sampled)                               # (B, T), new tensor
    replaced = torch.zeros_like(selected).masked_scatter(selected, sampled != originals)  # (B, T)
    return fake, replaced


def sample_rows(logits: Tensor, temperature: float, rng: torch.Generator | None) -> Tensor:
    """`masking.sample_tokens` over chunks of rows (about 2 MB of fp32 each) that stay in the CPU's
    cache: (N, V) logits -> (N,) ids, no gradient. On 614 x 30522 logits (batch 32 x 128) one whole
    pass took 70 ms here, 17-row chunks 20 ms: the fp32 softmax and cumsum no longer stream through
    memory. Other devices take one pass (on a GPU, 36 chunks would be 36 x 6 small kernels)."""
    chunk = max(1, (1 << 19) // logits.shape[-1])
    if logits.shape[0] <= chunk or logits.device.type != "cpu":
        return masking.sample_tokens(logits, temperature, rng)
    return torch.cat([masking.sample_tokens(logits[s:s + chunk], temperature, rng)
                      for s in range(0, logits.shape[0], chunk)])


class RTDHead(nn.Module):
    """ELECTRA's discriminator head: dense -> GELU -> dense(1), one logit per position (B, T, D) -> (B, T)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1)


class Electra(Objective):
    """Generator MLM + rtd_weight x replaced-token detection, as one summed loss and one count.

    num_targets is the number of masked (generator-predicted) tokens n; the loss is
    generator_weight * (CE summed over the n masked tokens) + rtd_weight * (BCE summed over the R real
    tokens) * n / R, so that loss / num_targets = generator_weight * gen_mean + rtd_weight * rtd_mean
    within each micro-batch: the per-part means of the official loss. Across micro-batches and
    workers the trainer's division by the summed n weights each micro-batch's parts by its n, which
    is exact when n / R is the same everywhere: the fixed-count masking (round(15%) of the maskable
    tokens of every row) over full blocks makes it so, up to the odd extra [SEP] in a block. The
    fairseq-based ELECTRA / COCO-LM criteria scale the binary loss the same way (by
    sample_size / num_tokens).
    """

    name = "electra"
    Config = ElectraConfig

    def __init__(self, cfg: ElectraConfig, encoder_cfg: EncoderConfig, vocab: Vocab) -> None:
        super().__init__(cfg, encoder_cfg, vocab)
        if cfg.masking == "whole_word" and vocab.word_start is None:
            raise ValueError("whole_word masking needs the tokenizer's word_start table in Vocab")
        hidden, layers = generator_shape(cfg, encoder_cfg)
        try:
            gen_cfg = generator_config(encoder_cfg, hidden, layers)
        except ValueError as e:
            raise ValueError(f"objective.generator_hidden_size={hidden}: {e} (use a multiple of 64, "
                             f"or of model.num_heads={encoder_cfg.num_heads})") from None
        self.generator = MLMGenerator(encoder_cfg, gen_cfg)
        self.rtd_head = RTDHead(encoder_cfg.hidden_size)
        self.rtd_head.apply(lambda m: init_bert_weights(m, encoder_cfg.initializer_range))

    def corrupt(self, batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
        """The generator's input: 15% chosen, [MASK] / random / kept as configured; labels there."""
        return mask_and_label(batch, self.cfg, self.vocab, rng)

    def _sampling_rng(self, batch: TokenBatch) -> torch.Generator | None:
        """Training samples from the global RNG (per-rank seeded, saved in checkpoints). Evaluation
        uses a generator seeded from the batch, so it neither draws from nor depends on the training
        stream: eval figures are reproducible and the training curve does not depend on eval_every."""
        if self.training:
            return None
        seed = int(batch.input_ids.sum()) % (2 ** 31)
        return torch.Generator(device=batch.input_ids.device).manual_seed(seed)

    def forward(self, encoder: Encoder, batch: TokenBatch) -> ObjectiveOutput:
        cfg = self.cfg
        selected = batch.labels.ne(-100)                                                    # (B, T)
        targets = batch.labels[selected]                                                    # (N,)

        # generator: MLM on the masked positions only, through the shared embeddings
        gen_hidden = self.generator(encoder, batch.input_ids, batch.position_ids, batch.token_type_ids,
                                    batch.attention_mask)                                  # (B, T, Dg)
        gen_logits = self.generator.logits(gen_hidden[selected], encoder)                  # (N, V)
        gen_sum, predicted = summed_cross_entropy(gen_logits, targets)                     # fp32, (N,)

        # replacements: sampled without gradient; the discriminator's input is a new tensor
        sampled = sample_rows(gen_logits.detach(), cfg.temperature, self._sampling_rng(batch))   # (N,)
        fake_ids, replaced = replace_tokens(batch.input_ids, selected, sampled, targets)   # (B, T), (B, T)

        # discriminator: one logit per position, BCE over the real (non-pad) tokens in fp32
        hidden = encoder(fake_ids, position_ids=batch.position_ids, token_type_ids=batch.token_type_ids,
                         attention_mask=batch.attention_mask)                              # (B, T, D)
        rtd_logits = self.rtd_head(hidden).float()                                         # (B, T)
        real = batch.input_ids.ne(self.vocab.pad)              # (B, T); a sample may be [PAD] itself
        if batch.attention_mask is not None and batch.attention_mask.dim() == 2:
            real &= batch.attention_mask.bool()
        labels = replaced.float()                                                          # (B, T)
        rtd_sum = F.binary_cross_entropy_with_logits(rtd_logits, labels, weight=real.float(), reduction="sum")

        n = selected.sum()
        n_real = real.sum()
        loss = cfg.generator_weight * gen_sum + cfg.rtd_weight * rtd_sum * n / n_real.clamp(min=1)

        with torch.no_grad():
            flagged = (rtd_logits > 0) & real                                              # predicted "replaced"
            positives = replaced & real
            true_pos = (flagged & positives).sum()
            metrics = {
                "gen_loss": ratio(gen_sum, n),
                "gen_acc": ratio((predicted == targets).sum(), n),
                "sampled_acc": ratio((sampled == targets).sum(), n),
                "replaced_frac": ratio(positives.sum(), n_real),
                "rtd_loss": ratio(rtd_sum, n_real),
                "rtd_acc": ratio(((rtd_logits > 0) == replaced).logical_and(real).sum(), n_real),
                "rtd_precision": ratio(true_pos, flagged.sum()),
                "rtd_recall": ratio(true_pos, positives.sum()),
            }
        return ObjectiveOutput(loss, n, metrics)

    def train_flops_per_token(self, seq_len: int, predicted_fraction: float) -> float:
        """Per text token (model/flops.py): discriminator + RTD head on every token, generator (+ its
        input projection) on every token, generator LM head on the masked fraction."""
        main, gen = self.encoder_cfg, self.generator.blocks.config
        D, Dg = main.hidden_size, gen.hidden_size
        return (flops.stack_flops(main, seq_len) + flops.TRAIN * (D * D + D)
                + flops.stack_flops(gen, seq_len) + (flops.TRAIN * D * Dg if self.generator.project is not None else 0)
                + predicted_fraction * flops.lm_head_flops(Dg, D, main.vocab_size))

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        if "gen_loss" in means:
            means = {**means, "gen_ppl": math.exp(min(means["gen_loss"], 50.0))}
        return means
