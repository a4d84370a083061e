"""What `train.compile` buys on this machine (issue 20, part 2): `unimask bench --compare-compile` for
each objective at each size, one process each, written as markdown.

Protocol (fixed before the runs): for each size (mini, small) and each objective (mlm, electra,
cocolm, maelm, pmlm), one `unimask bench --compare-compile` process at the trainer's defaults (batch
32 x 128, freed memory kept) in `--dtype` (bf16 autocast: the trainer's default on a CPU with bf16
instructions; fp32: elsewhere), 3 warm-up and
`--steps` timed steps of the compiled and the eager engine interleaved step by step, with an empty
inductor cache (`TORCHINDUCTOR_CACHE_DIR` in a fresh temporary folder), so `compile_s` is what a first
run pays. `paired` is the median over rounds of the compiled step over the adjacent eager one (below
1: compile wins). The decision rule, also fixed before: compile becomes the default for an objective on
this kind of device when its paired ratio is at most 0.90 at both sizes. Run it on an otherwise idle
machine.

    python benchmarks/compile_table.py [--dtype bf16] [--out benchmarks/results/compile_table_bf16.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from results_io import write_results

OBJECTIVES = ("mlm", "electra", "cocolm", "maelm", "pmlm")
STEPS = {"tiny": 2, "mini": 20, "small": 10}
WINS_AT = 0.90


def run(objective: str, size: str, dtype: str, steps: int, smoke: bool = False) -> dict:
    """One `unimask bench --compare-compile` process; returns {"compiled": ..., "eager": ..., "ratio": ...}."""
    shape = (["--batch", "4", "--seq", "32", "--warmup", "1"] if smoke
             else ["--batch", "32", "--seq", "128", "--warmup", "3"])
    cmd = [sys.executable, "-m", "unimask", "bench", "--objective", objective, "--size", size, *shape,
           "--steps", str(steps), "--dtype", dtype, "--compare-compile"]
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ratio = next(r for r in records if "ratio" in r)
    engines = [r for r in records if "ratio" not in r]
    return {"compiled": next(r for r in engines if r["compile"]), "eager": next(r for r in engines if not r["compile"]),
            "ratio": ratio}


def markdown(results: dict) -> str:
    lines = ["| size | objective | dtype | eager tokens/s | compiled tokens/s | compiled / eager step, median | "
             "paired | compile, cold cache | wins (paired <= 0.90) |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results.values():
        c, e, q = r["compiled"], r["eager"], r["ratio"]
        lines.append(f"| {q['size']} | {c['objective']} | {q['dtype']} | {e['tokens_per_s']:,.0f} | "
                     f"{c['tokens_per_s']:,.0f} | {q['step_ms_median']:.2f} | {q['paired']:.2f} | "
                     f"{q['compile_s']:.0f} s | "
                     f"{'yes' if q['paired'] <= WINS_AT else 'no'} |")
    return "\n".join(lines) + "\n"


def header() -> str:
    """Where the figures come from: torch, the commit, the CPU threads."""
    import torch
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent, check=False).stdout.strip() or "unknown"
    return (f"`unimask bench --compare-compile` per objective, batch 32 x 128, empty inductor cache; torch "
            f"{torch.__version__}, commit {commit}, {torch.get_num_threads()} threads.\n\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["mini", "small"], choices=list(STEPS))
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/compile_table_DTYPE.md")
    p.add_argument("--smoke", action="store_true", help="tiny size, batch 4 x 32, 2 steps: checks that the script runs")
    args = p.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / f"compile_table_{args.dtype}.md"
    sizes = ["tiny"] if args.smoke else args.sizes
    results = {}
    for size in sizes:
        for objective in args.objectives:
            key = f"{size}/{objective}"
            results[key] = run(objective, size, args.dtype, STEPS[size], args.smoke)
            print(markdown({key: results[key]}).splitlines()[-1], flush=True)
    text = header() + markdown(results)
    write_results(args.out, results, text)
    print(text)


if __name__ == "__main__":
    main()
