"""Fine-tune a pretrained checkpoint and the same architecture from random initialisation on GLUE
tasks, then put both side by side with `unimask report`: what pretraining buys.

    python benchmarks/glue_pretrained_vs_random.py --checkpoint runs/race/mlm --glue ../shared/data/glue \
        --tasks sst2 mrpc stsb cola rte --out runs/glue_evidence --seeds 1 2 3

Every task runs through `unimask finetune` with the same sweep for both models (`--lr`, `--seeds`,
`--epochs`, `--pooling`; `--max-train-examples` caps the big training sets, e.g. SST-2's 67k
sentences, for a CPU budget). The two models run side by side, one thread each (the default, for a
2-core machine), or one after the other (`--one-by-one`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from unimask.tasks.glue import GLUE_DIRS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--glue", required=True, help="the folder holding CoLA/, SST-2/, ... (GLUE layout)")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "stsb", "cola", "rte"])
    ap.add_argument("--out", default="runs/glue_evidence")
    ap.add_argument("--lr", nargs="+", default=["1e-4"])
    ap.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--max-train-examples", default="0")
    ap.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="what the sentence head reads")
    ap.add_argument("--one-by-one", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()

    def commands(kind: str) -> list[list[str]]:
        extra = ["--random-init"] if kind == "random" else []
        return [[sys.executable, "-m", "unimask", "finetune", "--checkpoint", args.checkpoint, "--task", task,
                 "--data", str(Path(args.glue) / GLUE_DIRS[task]), "--out", str(out / kind / task),
                 "--name", kind, "--lr", *args.lr, "--seed", *args.seeds, "--epochs", args.epochs,
                 "--max-train-examples", args.max_train_examples, "--pooling", args.pooling, "--quiet", *extra]
                for task in args.tasks]

    def run_all(kind: str) -> subprocess.Popen:
        script = " && ".join(" ".join(f"'{c}'" for c in cmd) for cmd in commands(kind))
        log = open(out / f"{kind}.log", "w")
        return subprocess.Popen(["bash", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT)

    procs = []
    for kind in ("pretrained", "random"):
        procs.append(run_all(kind))
        if args.one_by_one:
            procs[-1].wait()
    failed = [p for p in procs if p.wait() != 0]
    if failed:
        sys.exit(f"a fine-tuning run failed; see {out}/pretrained.log and {out}/random.log")
    print(f"# {args.checkpoint} vs random init, {len(args.tasks)} tasks, lr {' '.join(args.lr)}, "
          f"seeds {' '.join(args.seeds)}, {args.epochs} epochs, {args.pooling} pooling, "
          f"{time.time() - started:.0f} s wall\n")
    subprocess.run([sys.executable, "-m", "unimask", "report", str(out / "pretrained"), str(out / "random"),
                    "--out", str(out / "report")], check=True)


if __name__ == "__main__":
    main()
