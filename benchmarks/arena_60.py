"""Issue 18's evidence: the objective arena on the shared Wikipedia sample, 60 minutes per contestant.

Protocol (fixed before the runs):
- data: ../shared/data/corpus/enwiki_sample.txt.gz (27,159 articles, about 11.7 M training tokens)
  prepared by `unimask prepare` at BERT's vocabulary size, 30,522 (the budget-lever study's base30k
  data, reused when already there);
- contestants: the five objectives' `OBJECTIVE_mini` recipes (4 layers x 256 wide), unchanged, as a
  user would run them: mlm, electra, cocolm, maelm, pmlm; sequence 128, batch 32, seed 0 (the same
  data order), the arena's fitted schedule (6% warm-up, linear decay to 0 at each run's last step);
- budget: 60 wall-clock minutes of training per contestant, turned into steps by the arena's
  calibration; `--jobs 2`: two contestants side by side on this 2-core machine, one thread each
  (calibrated side by side too), so every contestant gets one core for an hour;
- evaluation at 50% and 100% of each run, and random init of each architecture (the floor):
  the frozen-feature probe on SST-2 and CoLA (the first 2,000 training sentences, the best layer and
  pooling on dev), and fine-tuning on CoLA, SST-2, MRPC, STS-B and RTE (the first 2,000 training
  examples, 1 epoch, lrs 1e-4 and 3e-4 x seeds 1, 2, 3, the median over seeds at the best lr, dev);
- report: the arena's arena.md / arena.json / arena_flops.png / arena_time.png, copied to --results
  (default benchmarks/results/arena_60/) after every call; the mean of the fine-tuning scores and of
  the probe scores is added to the markdown per row, against random init of the same architecture.

The arena resumes, so this runs over several sessions: run the same command again.

    python benchmarks/arena_60.py [--work runs/arena60] [--minutes 60]
    python benchmarks/arena_60.py --work runs/arena60 --report     # copy the report so far to --results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FINETUNE = ("cola", "sst2", "mrpc", "stsb", "rte")
PROBE = ("sst2", "cola")


def summary(result: dict, out: Path) -> str:
    """Per row: the fine-tuning mean and the probe mean, and each against random init of the same
    architecture (the encoder config in OUT/runs/OBJECTIVE/config.json, vocab_size aside)."""
    rows = result["rows"]

    def architecture(objective: str) -> str:
        model = json.loads((out / "runs" / objective / "config.json").read_text())["model"]
        return json.dumps({k: v for k, v in model.items() if k != "vocab_size"}, sort_keys=True)

    floors = {architecture(r["differences"].split("'s architecture")[0]): r for r in rows
              if r["objective"] == "random init"}

    def means(r):
        ft = [r["scores"][f"finetune:{t}"] for t in FINETUNE if f"finetune:{t}" in r["scores"]]
        pr = [r["scores"][f"probe:{t}"] for t in PROBE if f"probe:{t}" in r["scores"]]
        return (statistics.fmean(ft) if ft else float("nan")), (statistics.fmean(pr) if pr else float("nan"))

    lines = ["| objective | step | of run | minutes | fine-tuning mean | vs random init | probe mean | vs random init |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ft, pr = means(r)
        if r["objective"] == "random init":
            lines.append(f"| random init ({r['differences']}) | 0 | - | - | {ft:.2f} | - | {pr:.2f} | - |")
            continue
        floor = floors.get(architecture(r["objective"]))
        fft, fpr = means(floor) if floor else (float("nan"), float("nan"))
        lines.append(f"| {r['objective']} | {r['step']} | {r['fraction']:.0%} | {r['minutes']:.1f} | {ft:.2f} | "
                     f"{ft - fft:+.2f} | {pr:.2f} | {pr - fpr:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from budget_levers import prepare, shared_inputs

    from unimask.arena import ArenaConfig, EvalConfig, run_arena

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (corpus/, glue/)")
    p.add_argument("--work", type=Path, default=Path("runs/arena60"))
    p.add_argument("--data", type=Path, help="the prepared corpus (default: WORK/data-30522, prepared if missing)")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "arena_60")
    p.add_argument("--report", action="store_true",
                   help="only copy the arena's report as it stands (an arena in progress) to --results")
    args = p.parse_args()
    corpus, glue = shared_inputs(args.shared)
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or (args.work / "data-30522" if args.report else prepare(corpus, 30522, args.work / "data-30522"))
    cfg = ArenaConfig(size="mini", minutes=args.minutes, points=2, seq_len=128, batch_size=32, seed=0)
    ev = EvalConfig(glue=str(glue), probe=PROBE, finetune=FINETUNE, lrs=(1e-4, 3e-4), seeds=(1, 2, 3), epochs=1.0,
                    max_train_examples=2000, max_length=128)
    out = args.work / "arena"
    if args.report:
        if not (out / "arena.json").is_file():
            sys.exit(f"no arena under {out}; run without --report first")
        result = json.loads((out / "arena.json").read_text())
    else:
        result = run_arena(cfg, ev, data, out, say=lambda *a: print(*a, file=sys.stderr, flush=True), jobs=args.jobs)
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ("arena.json", "arena_flops.png", "arena_time.png"):
        if (out / name).is_file():
            shutil.copy(out / name, args.results / name)
    text = (out / "arena.md").read_text() + "\n## Means against random init\n\n" + summary(result, out)
    (args.results / "arena.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
