"""The README's transformers table (issue 20, part 3): `hf_compare.py` at each size, dtype and
allocator setting, one process each, written as markdown.

Protocol: for each row (mini 32 x 128 fp32, mini 32 x 128 bf16, base 8 x 128 bf16) and each allocator
setting (`--keep-freed-memory`, the trainer's default, and `--no-keep-freed-memory`, glibc's default),
both engines run in one process with the same setting, interleaved step by step (see
hf_compare.py); the ratio is unimask's tokens/s over transformers' from the median step times, and
`paired` is the median over rounds of adjacent steps' ratio. Run it on an otherwise idle machine.

    python benchmarks/hf_compare_table.py [--out benchmarks/results/hf_compare_table.md] [--rows mini-fp32 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from results_io import write_results

ROWS = {
    "mini-fp32": ["--size", "mini", "--batch", "32", "--seq", "128", "--dtype", "fp32", "--warmup", "3", "--steps", "16"],
    "mini-bf16": ["--size", "mini", "--batch", "32", "--seq", "128", "--dtype", "bf16", "--warmup", "3", "--steps", "16"],
    "base-bf16": ["--size", "base", "--batch", "8", "--seq", "128", "--dtype", "bf16", "--warmup", "2", "--steps", "8"],
}
SETTINGS = {"kept": "--keep-freed-memory", "glibc": "--no-keep-freed-memory"}


def run(row: str, setting: str, smoke: bool = False) -> dict:
    """One hf_compare.py process; returns its records: {"unimask": ..., "transformers": ..., "ratio": ...}."""
    args = ROWS[row] if not smoke else ["--size", "tiny", "--batch", "4", "--seq", "32", "--dtype", "fp32",
                                        "--warmup", "1", "--steps", "2"]
    cmd = [sys.executable, str(Path(__file__).parent / "hf_compare.py"), *args, SETTINGS[setting]]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r.get("engine", "ratio"): r for r in records}


def markdown(results: dict) -> str:
    lines = [("| size | batch x seq | dtype | allocator (both engines) | unimask tokens/s | transformers tokens/s | "
              "ratio | paired | unimask MFU |"), "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        setting = key.split("/")[1]
        a, b, q = r["unimask"], r["transformers"], r["ratio"]
        alloc = "freed memory kept (trainer default)" if setting == "kept" else "glibc default"
        mfu = a["mfu"]
        lines.append(f"| {q['size']} | {q['batch']} x {q['seq']} | {q['dtype']} | {alloc} | {a['tokens_per_s']:,.0f} | "
                     f"{b['tokens_per_s']:,.0f} | {q['tokens_per_s']:.2f}x | {q['paired']:.2f}x | "
                     f"{100 * mfu:.0f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hf_compare_table.md")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps: checks that the script runs")
    args = p.parse_args()
    results = {}
    for row in args.rows:
        for setting in SETTINGS:                # both settings of one row back to back
            results[f"{row}/{setting}"] = run(row, setting, args.smoke)
            print(markdown({f"{row}/{setting}": results[f"{row}/{setting}"]}).splitlines()[-1], flush=True)
    text = markdown(results)
    write_results(args.out, results, text)
    print(text)


if __name__ == "__main__":
    main()
