"""Where a training step's time goes, unimask MLM against transformers' BertForMaskedLM, by kind of op.

    python benchmarks/step_profile.py --size mini --batch 32 --seq 128 --dtype fp32
    python benchmarks/step_profile.py --size mini --dtype fp32 --out benchmarks/results/step_profile_mini_fp32.md

Both engines are built as `benchmarks/hf_compare.py` builds them (the same weights' shapes, corrupted
batches, AdamW, dropout, autocast and `train_step`), warmed up, then `--steps` steps of each run under
`torch.profiler` (CPU activities, engines alternating step by step). Each op's self time is put in one
kind: matrix multiplication (mm, addmm, bmm, baddbmm and the oneDNN / flash-attention kernels),
dropout's random masks, copies and casts, the optimizer, and everything else (LayerNorm, GELU,
softmax, cross-entropy, embedding lookups and their gradients, reductions, autograd glue).

Before profiling, `--steps` steps of each engine are timed without the profiler, interleaved (as
`hf_compare.py` does): the profiler itself can slow memory-heavy ops a lot (transformers' mini step
went from 3.4 s to 5.6 s under it here, unimask's within 3%), so the ratio and the bound use these
unprofiled medians. The table gives ms per step and the share of the profiled step. The bound: if
every op but the matrix multiplications took no time, unimask's step would be its matmul time, so
transformers' unprofiled step / unimask's matmul time is the most that unimask's tokens/s can exceed
transformers' by with these GEMMs on this CPU (issue 20's "3x at mini").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_compare import build_hf_engine  # noqa: E402

from unimask import bench  # noqa: E402
from unimask.cli import bench_common_arguments  # noqa: E402
from unimask.train.malloc import keep_freed_memory_on  # noqa: E402

KINDS = ("matmul", "dropout masks", "copies and casts", "optimizer", "other")


def kind(op: str) -> str:
    """The kind of an aten / autograd op name (its self time is counted there)."""
    name = op.split("::")[-1]
    if name in ("mm", "addmm", "bmm", "baddbmm", "_addmm_activation") or name.startswith("mkldnn_") \
            or name.startswith("_scaled_dot_product_flash_attention") or "linear_pointwise" in name:
        return "matmul"
    if name in ("bernoulli_", "uniform_", "rand", "native_dropout"):
        return "dropout masks"
    if name in ("copy_", "_to_copy", "clone", "contiguous"):
        return "copies and casts"
    if "adam" in name or name.startswith("_foreach_"):
        return "optimizer"
    return "other"


def profile_steps(engines: list[bench.Engine], steps: int) -> tuple[dict, dict]:
    """({engine name: {kind: self CPU ms per step}}, {engine name: {op: self CPU ms per step}}) over
    `steps` profiled steps of each engine, alternating."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            for e in engines:
                with record_function(f"engine:{e.name}"):
                    e.step(timed=False)
    per = {e.name: defaultdict(float) for e in engines}
    ops = {e.name: defaultdict(float) for e in engines}
    events = prof.events()
    spans = sorted(((ev.time_range.start, ev.time_range.end, ev.name[len("engine:"):])
                    for ev in events if ev.name.startswith("engine:")))

    def owner(t: float) -> str | None:
        for start, end, name in spans:
            if start <= t <= end:
                return name
        return None

    for ev in events:
        if ev.name.startswith("engine:") or ev.self_cpu_time_total <= 0:
            continue
        name = owner(ev.time_range.start)
        if name is not None:
            per[name][kind(ev.name)] += ev.self_cpu_time_total / 1e3 / steps   # us -> ms per step
            ops[name][ev.name] += ev.self_cpu_time_total / 1e3 / steps
    return {name: {k: d.get(k, 0.0) for k in KINDS} for name, d in per.items()}, ops


def table(per: dict[str, dict[str, float]], ops: dict[str, dict[str, float]], title: str,
          unprofiled: dict[str, float]) -> str:
    """The markdown: per kind, ms per profiled step and share; `unprofiled` {engine: median ms per step}."""
    names = list(per)
    lines = [f"## {title}", "", "| kind | " + " | ".join(f"{n} ms/step | share" for n in names) + " |",
             "|---|" + "---:|---:|" * len(names)]
    totals = {n: sum(per[n].values()) for n in names}
    for k in KINDS:
        lines.append(f"| {k} | " + " | ".join(f"{per[n][k]:,.1f} | {per[n][k] / totals[n]:.1%}" for n in names) + " |")
    lines.append("| **step** | " + " | ".join(f"**{totals[n]:,.1f}** | 100% " for n in names) + " |")
    us, them = per["unimask"], per["transformers"]
    lines += ["", f"- without the profiler, median step: unimask {unprofiled['unimask']:,.1f} ms, transformers "
              f"{unprofiled['transformers']:,.1f} ms: unimask is {unprofiled['transformers'] / unprofiled['unimask']:.2f}x "
              f"(under the profiler {totals['transformers'] / totals['unimask']:.2f}x)",
              f"- bound with every non-matmul op of unimask free: transformers' unprofiled step / unimask's matmul "
              f"time = {unprofiled['transformers'] / us['matmul']:.2f}x",
              f"- matmul time transformers / unimask: {them['matmul'] / us['matmul']:.2f}x (the arithmetic's ratio)"]
    for n in names:
        top = sorted(((ms, op) for op, ms in ops[n].items() if kind(op) == "other"), reverse=True)[:8]
        lines.append(f"- {n}'s largest other ops, ms/step: " + ", ".join(f"{op} {ms:,.1f}" for ms, op in top))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_common_arguments(p)
    p.set_defaults(size="mini", steps=4, warmup=2)
    p.add_argument("--out", type=Path, help="also write the markdown table (and a .json beside it) here")
    args = p.parse_args(argv)
    bench.check_arguments(args)
    info = bench.device_info(args.device)
    args.dtype = bench.dtype_that_runs(args.dtype, info.device)
    kept = keep_freed_memory_on(info.device, args.keep_freed_memory)
    ours = bench.build_engine("mlm", args.size, args.batch, args.seq, args.warmup + args.steps,
                              args.dtype, args.vocab, info, args.seed)
    theirs = build_hf_engine(args, info, ours.batches)
    bench.run_interleaved([theirs, ours], args.warmup, args.steps, block=1, quiet_wait=args.quiet_wait)
    unprofiled = {e.name: 1e3 * statistics.median(e.times) for e in (ours, theirs)}
    per, ops = profile_steps([ours, theirs], args.steps)
    title = (f"{args.size}, batch {args.batch} x {args.seq}, {args.dtype}, {torch.get_num_threads()} thread(s), "
             f"{'freed memory kept' if kept else 'glibc default allocator'}, {args.steps} profiled steps each")
    text = table(per, ops, title, unprofiled)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"setting": title, "unprofiled_ms_per_step": unprofiled, "ms_per_step": per,
                                                              "ops_ms_per_step": ops}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
