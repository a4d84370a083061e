"""Race unimask's MLM against transformers' BertForMaskedLM, interleaved in one process.

    python benchmarks/hf_compare.py --size tiny --batch 32 --seq 128 --dtype bf16
    python benchmarks/hf_compare.py --size base --batch 8 --seq 128 --dtype bf16 --warmup 3 --steps 5
    python benchmarks/hf_compare.py --size mini --batch 32 --seq 128 --dtype fp32 --quiet-wait 60   # shared machine

Both engines get the same architecture (BertConfig built from unimask's size preset, never from the
hub), the same corrupted batches (15% of positions, 80/10/10, labels -100 elsewhere), the same loss
(mean cross-entropy over the masked positions: HF's default loss with -100 labels), the same AdamW
(`build_optimizer`: fused, BERT's decay groups), dropout 0.1 on both, the same autocast, and the same
step function: the trainer's `train_step` (backward, clip to 1.0, optimizer step). transformers uses
`attn_implementation="sdpa"` (a BertConfig argument in transformers 5).

The timed steps alternate in blocks (A B A B ...; `--block` steps each), because the timing noise
between runs on a small shared machine is up to 2x; `--quiet-wait S` additionally waits (up to S
seconds) before each round and before the peak GEMMs until other processes leave the CPUs idle,
and the ratio line says how many rounds ran quiet.

Prints one JSON line per engine (see `unimask bench`; transformers' `train_flops_per_token` counts
its vocabulary projection at every position, the work it actually does) and a ratio line:
unimask tokens/s / transformers tokens/s from the median step times (`tokens_per_s`), from the
mean step times, from the fastest steps (`step_ms_min`), from the CPU time per step
(`cpu_ms_median`), and `paired`: the median over rounds of
the ratio of the two engines' adjacent blocks (the most robust to a machine whose load drifts).
The peak RSS is one figure for the whole process (both engines live in it).
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
from unimask.train.malloc import keep_freed_memory_on
from unimask.objectives import ObjectiveOutput


class HFMaskedLM(nn.Module):
    """transformers' BertForMaskedLM behind the trainer's contract: a summed loss and its count.

    HF returns the mean CE over labels != -100; times the count it is the summed loss the trainer
    expects, and `train_step` divides the gradients by the same count again.
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    def forward(self, batch) -> ObjectiveOutput:
        out = self.hf(input_ids=batch.input_ids, labels=batch.labels)
        n = batch.labels.ne(-100).sum()
        return ObjectiveOutput(out.loss * n, n)


def bert_config(cfg):
    from unimask.export.hf import to_bert_config

    return to_bert_config(cfg, attn_implementation="sdpa")


def build_hf_engine(args, info, batches) -> bench.Engine:
    from transformers import BertForMaskedLM

    from unimask.runtime import autocast_for
    from unimask.train.loop import TrainConfig
    from unimask.train.optim import build_optimizer

    cfg = bench.encoder_config(args.size, args.vocab)
    torch.manual_seed(args.seed)
    hf = BertForMaskedLM(bert_config(cfg))
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight, "untied head"
    model = HFMaskedLM(hf).to(info.device)
    model.train()
    tcfg = TrainConfig()
    optimizer = build_optimizer(model, tcfg.lr, (tcfg.beta1, tcfg.beta2), tcfg.adam_eps, tcfg.weight_decay)
    emb = hf.bert.embeddings
    total, non_emb = bench.count_params(model, (emb.word_embeddings, emb.position_embeddings,
                                                emb.token_type_embeddings))
    flops = bench.train_flops_per_token(cfg, args.seq, 1.0)     # the head projects every position
    return bench.Engine("transformers", model, optimizer, batches, autocast_for(args.dtype, info.device),
                        info, total, non_emb, flops, tcfg.clip_norm)


def paired_ratio(ours: list[float], theirs: list[float], block: int) -> float:
    """Median over rounds of (their mean step time / our mean step time) within the round: adjacent
    blocks share the machine's load at that moment, so slow drifts of the load cancel."""
    rounds = [statistics.fmean(theirs[i:i + block]) / statistics.fmean(ours[i:i + block])
              for i in range(0, min(len(ours), len(theirs)), block)]
    return statistics.median(rounds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_common_arguments(p)
    p.add_argument("--block", type=int, default=1, help="consecutive timed steps per engine per turn")
    p.add_argument("--first", choices=["unimask", "transformers"], default="transformers",
                   help="which engine runs the first block")
    args = p.parse_args(argv)
    bench.check_arguments(args)
    import transformers

    info = bench.device_info(args.device)
    args.dtype = bench.dtype_that_runs(args.dtype, info.device)
    kept = keep_freed_memory_on(info.device, args.keep_freed_memory)
    bench.wait_until_quiet(args.quiet_wait)
    bench.measure_peak_tflops(bench.DTYPES[args.dtype], info.device)
    ours = bench.build_engine("mlm", args.size, args.batch, args.seq, args.warmup + args.steps,
                              args.dtype, args.vocab, info, args.seed)
    theirs = build_hf_engine(args, info, ours.batches)           # the very same corrupted batches
    engines = [theirs, ours] if args.first == "transformers" else [ours, theirs]
    rounds = bench.run_interleaved(engines, args.warmup, args.steps, args.block, args.quiet_wait)
    rss = bench.peak_rss_mb()
    bench.wait_until_quiet(args.quiet_wait)
    peak = bench.measure_peak_tflops(bench.DTYPES[args.dtype], info.device)
    recs = {}
    for e in (ours, theirs):
        rec = {"size": args.size, **e.report(args.dtype, peak, rss)}
        if e is theirs:
            rec["transformers"] = transformers.__version__
        recs[e.name] = rec
        print(json.dumps(rec), flush=True)
    a, b = recs["unimask"], recs["transformers"]
    print(json.dumps({
        "ratio": "unimask/transformers", "size": args.size, "batch": args.batch, "seq": args.seq,
        "dtype": args.dtype, "tokens_per_s": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
        "tokens_per_s_mean": round(a["tokens_per_s_mean"] / b["tokens_per_s_mean"], 3),
        "paired": round(paired_ratio(ours.times, theirs.times, args.block), 3),
        "step_ms_min": round(b["step_ms_min"] / a["step_ms_min"], 3),
        "cpu_ms_median": round(b["cpu_ms_median"] / a["cpu_ms_median"], 3),
        "peak_rss_mb_process": round(rss, 1), "keep_freed_memory": kept, **rounds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
