"""Pretrain several objectives side by side for the same wall-clock budget and tabulate the result.

    python benchmarks/objective_race.py --data data/enwiki --objectives mlm electra cocolm maelm \
        --size mini --minutes 20 --out runs/race

Every run gets `train.time_budget_minutes`, one thread and a constant learning rate after warm-up
(a budget in minutes has no known step count to decay over). With --side-by-side (the default) all
runs start together and share the machine, so each sees the same conditions; --one-by-one runs them
in turn. The table lists each run's steps, training tokens and its last held-out evaluation: the
loss and every metric its objective reports (MLM/MAE-LM `mlm_acc`, COCO-LM `clm_acc`, ELECTRA's
generator `gen_acc` and discriminator `rtd_acc`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def last_records(run: Path) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    return (train[-1] if train else {}), (valid[-1] if valid else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--objectives", nargs="+", default=["mlm", "electra", "cocolm", "maelm"])
    ap.add_argument("--size", default="mini")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", default="runs/race")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one-by-one", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    procs = {}
    for name in args.objectives:
        cmd = [sys.executable, "-m", "unimask", "pretrain", "--recipe", f"{name}_{args.size}", "--data", args.data,
               "--out", str(out / name), "--quiet",
               "--set", f"train.time_budget_minutes={args.minutes}", "--set", "train.steps=1000000",
               "--set", "train.schedule=constant", "--set", "train.warmup_steps=500",
               "--set", "train.eval_every=500", "--set", "train.eval_batches=20", "--set", "train.save_every=2000",
               *[x for o in args.overrides for x in ("--set", o)]]
        log = open(out / f"{name}.log", "w")
        procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if args.one_by_one:
            procs[name].wait()
    started = time.time()
    for name, p in procs.items():
        if p.wait() != 0:
            print(f"{name} failed; see {out / name}.log", file=sys.stderr)
    print(f"# {len(procs)} runs, {args.size}, {args.minutes:g} min each "
          f"({'one by one' if args.one_by_one else 'side by side'}, {args.threads} thread(s) each), "
          f"{time.time() - started:.0f} s wall\n")
    keys = sorted({k for name in procs for k in last_records(out / name)[1]} - {"split", "step"})
    print("| objective | steps | train tokens/s | " + " | ".join(f"valid {k}" for k in keys) + " |")
    print("|---" * (3 + len(keys)) + "|")
    for name in procs:
        train, valid = last_records(out / name)
        cells = [f"{valid[k]:.4f}" if isinstance(valid.get(k), float) else "" for k in keys]
        print(f"| {name} | {train.get('step', '')} | {train.get('tokens_per_s', 0):,.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
