"""Race unimask's ELECTRA against transformers' ElectraForMaskedLM + ElectraForPreTraining, interleaved.

    python benchmarks/hf_electra_compare.py --size small --batch 32 --seq 128 --dtype bf16 --with-mlm
    python benchmarks/hf_electra_compare.py --size mini --dtype fp32 --with-mlm --quiet-wait 30   # shared machine

Both engines get the same discriminator (an ElectraConfig built from unimask's size preset, never from
the hub, embedding_size = hidden_size like unimask's encoder) and the same generator (unimask's
default `generator_shape`: width D // 3 rounded down to a multiple of 64, so 64 at mini and 128 at
small, heads of 64 dimensions, FFN 4x, full depth, its input projected from the shared embedding
width). transformers' pair is tied the way the ELECTRA pretraining examples built on it do: the
generator uses the discriminator's embedding module (token, position and type tables and their
LayerNorm) and its LM head's weight is the shared word embedding table.

Both run the same step on the same corrupted batches (15% of the tokens, 85% [MASK] / 15% kept, labels
-100 elsewhere): generator MLM loss (mean CE over the masked positions) + 50 x the discriminator's BCE
(mean over real tokens), replacements sampled from the generator's softmax at the masked positions
with unimask's sampler (`electra.sample_rows`) without gradient, a sample equal to the original
labelled original. transformers computes the generator's vocabulary projection at every position (its
ElectraForMaskedLM does; the sampling then reads the masked rows), unimask at the masked ones only.
Same fused AdamW (`build_optimizer`), dropout 0.1, autocast, and the trainer's `train_step`;
`attn_implementation="sdpa"`. The timed steps alternate in blocks (`--block`) because the timing
noise between runs on a small shared machine is up to 2x (`--quiet-wait S` also waits, up to S seconds
per round, until other processes leave the CPUs idle); `--with-mlm` adds unimask's MLM with the same
discriminator size to the rotation, for the ELECTRA / MLM step-cost ratio. Ratio lines give the
median, mean and min figures and `paired`: the median over rounds of the within-round ratio.

Prints one JSON line per engine (the fields of `unimask bench`; `train_flops_per_token` here counts
discriminator + generator + both heads, the work each engine actually does) and ratio lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch import nn

from unimask import bench
from unimask.cli import bench_common_arguments
from unimask.objectives import ObjectiveOutput
from unimask.objectives.electra import ElectraConfig as UnimaskElectraConfig
from unimask.objectives.electra import generator_shape, replace_tokens, sample_rows
from unimask.objectives.generator import generator_config


def electra_flops_per_token(disc, gen, seq_len: int, head_fraction: float) -> float:
    """Training matmul FLOPs per input token (x3 for forward + backward, as `bench.train_flops_per_token`):
    discriminator and generator encoders (+ attention 12 L T D each), the generator's input projection
    D -> Dg on every token, its LM head (Dg -> D dense + tied V x D) on `head_fraction` of the tokens,
    and the discriminator head (D x D + D x 1) on every token."""
    D, Dg, V = disc.hidden_size, gen.hidden_size, disc.vocab_size
    encoders = sum(6 * bench.encoder_matmul_params(c) + 12 * c.num_layers * seq_len * c.hidden_size
                   for c in (disc, gen))
    project = 6 * D * Dg if Dg != D else 0
    return float(encoders + project + 6 * head_fraction * (Dg * D + V * D) + 6 * (D * D + D))


def hf_configs(disc, gen):
    from transformers import ElectraConfig

    def one(c, embedding_size):
        return ElectraConfig(
            vocab_size=disc.vocab_size, embedding_size=embedding_size, hidden_size=c.hidden_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, intermediate_size=c.intermediate_size,
            hidden_act="gelu", hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attention_dropout,
            max_position_embeddings=disc.max_positions, type_vocab_size=disc.type_vocab_size,
            layer_norm_eps=disc.layer_norm_eps, initializer_range=disc.initializer_range,
            pad_token_id=disc.pad_token_id, tie_word_embeddings=True, attn_implementation="sdpa")
    return one(disc, disc.hidden_size), one(gen, disc.hidden_size)


class HFElectra(nn.Module):
    """transformers' generator + discriminator pair behind the trainer's contract (summed loss, count)."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, rtd_weight: float, temperature: float) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.rtd_weight, self.temperature = rtd_weight, temperature

    def forward(self, batch) -> ObjectiveOutput:
        selected = batch.labels.ne(-100)                                                  # (B, T)
        targets = batch.labels[selected]                                                  # (N,)
        gen = self.generator(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             labels=batch.labels)                                         # logits (B, T, V)
        sampled = sample_rows(gen.logits[selected].detach(), self.temperature, None)     # (N,)
        fake, replaced = replace_tokens(batch.input_ids, selected, sampled, targets)      # (B, T)
        # the padding mask unimask's encoder gets (None for full blocks); HF's BCE averages over it
        mask = None if batch.attention_mask is None else batch.attention_mask.long()
        disc = self.discriminator(input_ids=fake, attention_mask=mask, labels=replaced.long())
        n = selected.sum()
        return ObjectiveOutput((gen.loss + self.rtd_weight * disc.loss.float()) * n, n)


def build_hf_engine(args, info, ours: bench.Engine) -> bench.Engine:
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from unimask.runtime import autocast_for
    from unimask.train.loop import TrainConfig
    from unimask.train.optim import build_optimizer

    disc_cfg = bench.encoder_config(args.size, args.vocab)
    ecfg = UnimaskElectraConfig()
    gen_cfg = generator_config(disc_cfg, *generator_shape(ecfg, disc_cfg))
    d_conf, g_conf = hf_configs(disc_cfg, gen_cfg)
    torch.manual_seed(args.seed)
    discriminator, generator = ElectraForPreTraining(d_conf), ElectraForMaskedLM(g_conf)
    # tie as the ELECTRA pretraining examples on transformers do: one embedding module, tied LM head
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    assert generator.generator_lm_head.weight is discriminator.electra.embeddings.word_embeddings.weight
    assert hasattr(generator.electra, "embeddings_project") == (gen_cfg.hidden_size != disc_cfg.hidden_size)
    assert discriminator.config._attn_implementation == "sdpa" and generator.config._attn_implementation == "sdpa"
    model = HFElectra(generator, discriminator, ecfg.rtd_weight, ecfg.temperature)
    model.to(info.device)
    model.train()
    tcfg = TrainConfig()
    optimizer = build_optimizer(model, tcfg.lr, (tcfg.beta1, tcfg.beta2), tcfg.adam_eps, tcfg.weight_decay)
    emb = discriminator.electra.embeddings
    total, non_emb = bench.count_params(model, (emb.word_embeddings, emb.position_embeddings,
                                                emb.token_type_embeddings))
    flops = electra_flops_per_token(disc_cfg, gen_cfg, args.seq, 1.0)      # vocabulary projection everywhere
    return bench.Engine("transformers", model, optimizer, ours.batches, autocast_for(args.dtype, info.device),
                        info, total, non_emb, flops, tcfg.clip_norm)


def paired_ratio(slow: list[float], fast: list[float], block: int) -> float:
    """Median over rounds of (mean step time of `slow` / that of `fast`) within the round: adjacent
    blocks share the machine's load of that moment, so slow drifts of the load cancel."""
    rounds = [statistics.fmean(slow[i:i + block]) / statistics.fmean(fast[i:i + block])
              for i in range(0, min(len(slow), len(fast)), block)]
    return statistics.median(rounds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_common_arguments(p)
    p.add_argument("--block", type=int, default=1, help="consecutive timed steps per engine per turn")
    p.add_argument("--first", choices=["unimask", "transformers"], default="transformers",
                   help="which engine runs the first block")
    p.add_argument("--with-mlm", action="store_true",
                   help="also time unimask's MLM with the same discriminator size (ELECTRA / MLM step ratio)")
    args = p.parse_args(argv)
    bench.check_arguments(args)
    import transformers

    info = bench.device_info(args.device)
    args.dtype = bench.dtype_that_runs(args.dtype, info.device)
    bench.wait_until_quiet(args.quiet_wait)
    ours = bench.build_engine("electra", args.size, args.batch, args.seq, args.warmup + args.steps,
                              args.dtype, args.vocab, info, args.seed)
    disc_cfg = bench.encoder_config(args.size, args.vocab)
    gen_cfg = ours.model.objective.generator.blocks.config
    ours.flops_per_token = electra_flops_per_token(disc_cfg, gen_cfg, args.seq, bench.predicted_fraction(ours.batches))
    theirs = build_hf_engine(args, info, ours)                   # the very same corrupted batches
    engines = [theirs, ours] if args.first == "transformers" else [ours, theirs]
    if args.with_mlm:
        mlm = bench.build_engine("mlm", args.size, args.batch, args.seq, args.warmup + args.steps,
                                 args.dtype, args.vocab, info, args.seed)
        mlm.name = "unimask-mlm"
        engines.append(mlm)
    rounds = bench.run_interleaved(engines, args.warmup, args.steps, args.block, args.quiet_wait)
    rss = bench.peak_rss_mb()
    bench.wait_until_quiet(args.quiet_wait)
    peak = bench.measure_peak_tflops(bench.DTYPES[args.dtype], info.device)
    recs = {}
    for e in engines:
        rec = {"size": args.size, "objective": "mlm" if e.name == "unimask-mlm" else "electra",
               "generator_hidden": gen_cfg.hidden_size, "generator_layers": gen_cfg.num_layers,
               **e.report(args.dtype, peak, rss)}
        if e is theirs:
            rec["transformers"] = transformers.__version__
        recs[e.name] = rec
        print(json.dumps(rec), flush=True)

    def ratio_line(name: str, fast: bench.Engine, slow: bench.Engine, **extra) -> None:
        """tokens/s of `fast` / tokens/s of `slow` (= slow's step time / fast's): median, mean, min
        and paired (per-round) figures."""
        a, b = recs[fast.name], recs[slow.name]
        print(json.dumps({
            "ratio": name, "size": args.size, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
            "tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
            "tokens_per_s_mean": round(a["tokens_per_s_mean"] / b["tokens_per_s_mean"], 3),
            "step_ms_min": round(b["step_ms_min"] / a["step_ms_min"], 3),
            "paired": round(paired_ratio(slow.times, fast.times, args.block), 3),
            "rounds": rounds["rounds"], "quiet_rounds": rounds["quiet_rounds"], **extra}), flush=True)

    ratio_line("unimask/transformers", ours, theirs, peak_rss_mb_process=rss)
    if args.with_mlm:   # > 1: an ELECTRA step costs that many MLM steps
        ratio_line("electra step / mlm step", mlm, ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
