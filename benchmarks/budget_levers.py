"""Issue 18, part 3, step 1: which levers make a from-scratch encoder pay on a small CPU budget.

Protocol (fixed before the runs):
- data: ../shared/data/corpus/enwiki_sample.txt.gz (27,159 articles, about 11 M tokens) prepared by
  `unimask prepare` at two vocabulary sizes: BERT's 30,522 and 8,192 (one sized to the corpus, the
  first lever: the vocabulary projection and the embedding table shrink almost fourfold);
- every variant is a one-contestant `unimask arena` (arena.run_arena) in WORK/VARIANT: its
  objective at --size (mini), --minutes of training turned into steps by the arena's calibration,
  the arena's fitted schedule (6% warm-up, linear decay to 0 at the last step), sequence 128, batch 32,
  seed 0, one evaluation at the end; each arena also scores random init of the variant's
  architecture, the floor;
- score: the frozen-feature probe (tasks/probe.py) on SST-2 and CoLA, the first 2,000 training
  sentences, the best layer and pooling on dev (accuracy, MCC), and their mean;
- variants, one lever at a time from the 8k baseline, then together (VARIANTS below):
  base30k (recipe defaults: post-LN, dropout 0.1, 15% masking, the recipe's lr), base8k, nodrop
  (dropout 0), mask30 (30% masking, Wettig et al. 2022), preln (pre-LN at a 2e-3 peak lr, the
  cramming setting, Geiping & Goldstein 2022), electra (replaced-token detection: a loss on every
  token, Clark et al. 2020), combined (8k, dropout 0, 30% masking, pre-LN, 2e-3); added after the
  first six had run, because the 8k vocabulary alone did worse than BERT's: combined30k (the
  combined levers at 30,522);
- report: --out (default benchmarks/results/budget_levers.{json,md}), written after every variant:
  steps, tokens, the held-out loss, the probe scores, random init's, and the gain over random init.

Step 2 (not this script) confirms the best combination at 60 minutes against random init on the
fine-tuning average of CoLA, SST-2, MRPC, STS-B and RTE with `unimask arena --finetune ...`.

    python benchmarks/budget_levers.py --minutes 15 [--variants base8k nodrop ...] [--work runs/levers]
    python benchmarks/budget_levers.py --smoke --work /tmp/levers   # tiny, under a minute: the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from results_io import write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

VARIANTS: dict[str, dict] = {
    "base30k": {"vocab": 30522},
    "base8k": {"vocab": 8192},
    "nodrop": {"vocab": 8192, "set": ["model.dropout=0", "model.attention_dropout=0"]},
    "mask30": {"vocab": 8192, "set": ["objective.mask_prob=0.3"]},
    "preln": {"vocab": 8192, "set": ["model.norm=pre"], "lr": 2e-3},
    "electra": {"vocab": 8192, "objective": "electra"},
    "combined": {"vocab": 8192, "set": ["model.dropout=0", "model.attention_dropout=0", "objective.mask_prob=0.3",
                                        "model.norm=pre"], "lr": 2e-3},
    "combined30k": {"vocab": 30522, "set": ["model.dropout=0", "model.attention_dropout=0", "objective.mask_prob=0.3",
                                            "model.norm=pre"], "lr": 2e-3},
}
"""Variant -> vocabulary size, objective (default mlm), `--set` overrides and peak lr (0: the recipe's)."""


def prepare(text: Path, vocab: int, out: Path, head_lines: int = 0) -> Path:
    """The corpus prepared at `vocab` (reused when already there); `head_lines` > 0 keeps only the first lines."""
    from unimask.cli import main as unimask

    if (out / "manifest.json").is_file():
        return out
    source = text
    if head_lines:
        import gzip
        source = out.parent / f"{out.name}-head.txt"
        with gzip.open(text, "rt", encoding="utf-8") as f, open(source, "w", encoding="utf-8") as g:
            for i, line in enumerate(f):
                if i >= head_lines:
                    break
                g.write(line)
    if unimask(["prepare", "--text", str(source), "--out", str(out), "--vocab-size", str(vocab)]) != 0:
        sys.exit(f"prepare {text} at vocabulary {vocab} failed")
    return out


def shared_inputs(shared: Path) -> tuple[Path, Path]:
    """The Wikipedia sample and the GLUE folder under `shared`; exits with a one-line message if missing."""
    corpus, glue = shared / "corpus" / "enwiki_sample.txt.gz", shared / "glue"
    if not corpus.is_file() or not (glue / "SST-2" / "train.tsv").is_file():
        sys.exit(f"no Wikipedia sample or GLUE under {shared}; pass --shared DIR")
    return corpus, glue


def markdown(results: dict) -> str:
    lines = [f"# Budget levers ({results['size']}, {results['budget']})", "", results["protocol"], "",
             "| variant | differences | steps | tokens | valid loss | probe SST-2 | probe CoLA | mean | random init mean | gain |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in results["variants"].items():
        s = v["scores"]
        lines.append(f"| {name} | {v['differences'] or '-'} | {v['steps']:,} | {v['tokens']:,} | "
                     f"{v['valid_loss'] if v['valid_loss'] is None else round(v['valid_loss'], 3)} | "
                     f"{s.get('probe:sst2', float('nan')):.2f} | {s.get('probe:cola', float('nan')):.2f} | "
                     f"{v['mean']:.2f} | {v['random_mean']:.2f} | {v['mean'] - v['random_mean']:+.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from unimask.arena import ArenaConfig, EvalConfig, run_arena

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (corpus/, glue/)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--size", default="mini")
    p.add_argument("--minutes", type=float, default=15.0, help="training minutes per variant")
    p.add_argument("--work", type=Path, default=Path("runs/levers"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "budget_levers")
    p.add_argument("--smoke", action="store_true",
                   help="tiny size, a 2,000-line corpus, 0.02 TFLOPs, 100 probe sentences: checks that the script runs")
    args = p.parse_args()
    corpus, glue = shared_inputs(args.shared)
    if args.smoke:
        args.size, args.variants = "tiny", [v for v in args.variants if v in ("base8k", "nodrop")]
    args.work.mkdir(parents=True, exist_ok=True)
    budget = "0.02 TFLOPs" if args.smoke else f"{args.minutes:g} minutes"
    results = {"size": args.size, "budget": budget, "variants": {},
               "protocol": (f"Each variant: one-contestant arena, {budget} of training, sequence {64 if args.smoke else 128}, "
                            f"batch {8 if args.smoke else 32}, seed 0, "
                            "fitted schedule (6% warm-up, linear decay to 0); probe on SST-2 and CoLA (first "
                            f"{100 if args.smoke else 2000} training sentences, best layer and pooling on dev); random "
                            "init of the same architecture scored the same way.")}
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
    if (previous.get("size"), previous.get("budget")) == (args.size, budget):
        results["variants"] = previous.get("variants", {})
    for name in args.variants:
        spec = VARIANTS[name]
        vocab = 512 if args.smoke else spec["vocab"]
        data = prepare(corpus, vocab, args.work / f"data-{vocab}", head_lines=2000 if args.smoke else 0)
        cfg = ArenaConfig(objectives=(spec.get("objective", "mlm"),), size=args.size, points=1, lr=spec.get("lr", 0.0),
                          tflops=0.02 if args.smoke else 0.0, minutes=0.0 if args.smoke else args.minutes,
                          seq_len=64 if args.smoke else 128, batch_size=8 if args.smoke else 32,
                          overrides=tuple(spec.get("set", ())))
        ev = EvalConfig(glue=str(glue), probe=("sst2", "cola"), max_train_examples=100 if args.smoke else 2000,
                        max_length=64 if args.smoke else 128)
        result = run_arena(cfg, ev, data, args.work / name, say=lambda *a: print(*a, file=sys.stderr, flush=True))
        trained = [r for r in result["rows"] if r["objective"] != "random init"][-1]
        floor = next(r for r in result["rows"] if r["objective"] == "random init")
        results["variants"][name] = {
            "differences": ", ".join(filter(None, [f"vocabulary {vocab:,}", trained["differences"],
                                                   f"lr {spec['lr']:g}" if spec.get("lr") else ""])),
            "steps": trained["step"], "tokens": trained["tokens"], "valid_loss": trained.get("valid_loss"),
            "scores": trained["scores"], "mean": trained["mean"], "random_mean": floor["mean"],
            "random_scores": floor["scores"], "minutes": trained.get("minutes")}
        write_results(args.out, results, markdown(results))
        print(f"{name}: mean {trained['mean']:.2f} (random init {floor['mean']:.2f})", flush=True)
    print(markdown(results))
    print(f"median gain over random init: "
          f"{statistics.median(v['mean'] - v['random_mean'] for v in results['variants'].values()):+.2f}")


if __name__ == "__main__":
    main()
