"""`unimask finetune`: fine-tune a pretrained encoder on a task, sweeping learning rates and seeds.

Any unimask checkpoint works (only its encoder is used, whatever the objective) and so does a
transformers BERT directory (`unimask export` output). Each (learning rate, seed) run trains the
encoder plus a fresh task head with AdamW, linear warm-up and decay, optional layer-wise learning-rate
decay (Clark et al. 2020, ELECTRA appendix), evaluates on the dev split(s) every epoch (or every
`eval_every` steps), optionally stops early, and keeps its best evaluation. The sweep reports the
median and the best of each metric over runs, as papers do (DESIGN.md section 7), and keeps the
weights of the single best run in OUT/best.

Output directory:
    results.json   task, model, config, every run's history and best scores, median / best summary
    results.md     the same as a table
    best/          model.safetensors (encoder.* and head.*), tokenizer.json, finetune.json (the task, its
                   options, the scores, and the size and SHA-256 of the other two files)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..checkpoint import FINETUNED_FILES, Pretrained, load_pretrained  # noqa: F401 (load_pretrained: the tasks' entry)
from ..errors import UserError
from ..model.encoder import Encoder
from ..rundir import claim, file_records, guard_disk, save_tensors, tensor_bytes
from ..runtime import autocast_for, resolve_device
from ..train.malloc import keep_freed_memory_on
from ..train.optim import build_scheduler
from .base import SpecialIds, Task, collate
from .configs import DEFAULT_MAX_LENGTH, FinetuneConfig


def parameter_groups(encoder: Encoder, head: nn.Module, lr: float, weight_decay: float,
                     layer_decay: float) -> list[dict]:
    """AdamW groups: no decay on 1-D parameters; layer-wise lr decay by depth (embeddings and the
    shared relative bias at depth 0, layer i at i + 1, the head and a pre-LN final norm at the top)."""
    top = len(encoder.layers) + 1

    def depth(name: str) -> int:
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("embeddings.", "relative_bias.")):
            return 0
        return top

    groups: dict[tuple[int, bool], list] = {}
    named = [(n, p, depth(n)) for n, p in encoder.named_parameters()] + [(n, p, top) for n, p in head.named_parameters()]
    for n, p, d in named:
        if p.requires_grad:
            groups.setdefault((d, p.dim() >= 2), []).append(p)
    return [{"params": ps, "lr": lr * layer_decay ** (top - d), "weight_decay": weight_decay if decay else 0.0}
            for (d, decay), ps in sorted(groups.items())]


@dataclass
class RunResult:
    lr: float
    seed: int
    best_step: int
    best: dict[str, dict[str, float]]          # split -> metric -> value, at the best evaluation
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def finetune_one(task: Task, pretrained: Pretrained, data: dict[str, tuple[list, list[dict]]], cfg: FinetuneConfig,
                 lr: float, seed: int, progress: bool = True) -> tuple[RunResult, dict[str, Tensor]]:
    """One run; returns its result and the state dict of its best evaluation (encoder.* and head.*)."""
    device = resolve_device(cfg.device)
    keep_freed_memory_on(device)                      # as the trainer: no page faults at every CPU step
    autocast = autocast_for(cfg.precision, device)
    special = SpecialIds.of(pretrained.tokenizer)
    encoder = pretrained.build(seed, cfg.encoder_dropout).to(device).train()
    head = task.head(encoder, cfg.dropout).to(device).train()
    task.init_head(head, pretrained.heads)
    model = nn.ModuleDict({"encoder": encoder, "head": head})
    optimizer = torch.optim.AdamW(parameter_groups(encoder, head, lr, cfg.weight_decay, cfg.layer_decay),
                                  lr=lr, betas=(0.9, 0.999), eps=1e-6)
    train_features = data["train"][1]
    steps_per_epoch = math.ceil(len(train_features) / cfg.batch_size)
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    scheduler = build_scheduler(optimizer, int(cfg.warmup_ratio * total), total, "linear", 0.0)
    eval_every = cfg.eval_every or steps_per_epoch
    rng = torch.Generator().manual_seed(seed)

    main_split = task.eval_splits[0]
    best_value, best_state, result = -math.inf, None, RunResult(lr, seed, 0, {})
    evals_since_best, started = 0, time.time()
    bar = _bar(progress, total, f"{task.name} lr={lr:g} seed={seed}")
    order: list[int] = []
    loss_sum, count_sum = 0.0, 0       # since the last evaluation: its history entry's train_loss
    for step in range(1, total + 1):
        if not order:
            order = torch.randperm(len(train_features), generator=rng).tolist()
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = {k: v.to(device) for k, v in collate([train_features[i] for i in idx], special.pad).items()}
        batch = task.inputs(batch, special, encoder.config, rng)
        with autocast():
            loss, count = task.loss(head, task.encode(encoder, batch), batch)
        (loss / count.clamp(min=1)).backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, count_sum = loss_sum + loss.detach().float(), count_sum + count   # no host sync per step
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item() / max(1, count.item()):.4f}", refresh=False)
        if step % eval_every == 0 or step == total:
            scores = {split: task.evaluate(encoder, head, *data[split], pretrained.tokenizer, cfg.eval_batch_size,
                                           autocast, device)
                      for split in task.eval_splits}
            result.history.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                   "train_loss": float(loss_sum) / max(1, int(count_sum)), **scores})
            loss_sum, count_sum = 0.0, 0
            value = scores[main_split][task.metric]
            if bar is not None:
                bar.write(f"  step {step}: {main_split} " + ", ".join(f"{k} {v:.2f}" for k, v in scores[main_split].items()),
                          file=sys.stderr)
            if value > best_value:
                best_value, result.best, result.best_step, evals_since_best = value, scores, step, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                evals_since_best += 1
                if cfg.patience and evals_since_best >= cfg.patience:
                    result.stopped_early = True
                    break
    if bar is not None:
        bar.close()
    result.seconds = round(time.time() - started, 1)
    return result, best_state


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def summarize(runs: list[RunResult], split: str) -> dict[str, dict[str, float]]:
    """metric -> {"median", "best"} over runs, at each run's best evaluation."""
    metrics = runs[0].best.get(split, {})
    return {m: {"median": statistics.median(r.best[split][m] for r in runs),
                "best": max(r.best[split][m] for r in runs)} for m in metrics}


def markdown(results: dict) -> str:
    pooling = results.get("task_options", {}).get("pooling")
    lines = [f"# {results['task']} — {results['model']}", "", f"source: `{results['source']}`"
             + (f", pooling: {pooling}" if pooling else ""), ""]
    for split, summary in results["summary"].items():
        base = (results.get("baseline") or {}).get(split)
        header = f" majority class ({base['class']}) |" if base else ""
        lines += [f"## {split}", "", f"| metric | median | best |{header}", "|---" * (3 + bool(base)) + "|"]
        lines += [f"| {m} | {v['median']:.2f} | {v['best']:.2f} |" + (f" {base[m]:.2f} |" if base else "")
                  for m, v in summary.items()]
        lines += [f"\n{m}: {note}" for m, note in (results.get("notes") or {}).items()] + [""]
    lines += ["## runs", "", "| lr | seed | best step | " + " | ".join(f"{s} {task_metric}" for s, task_metric in
                                                                      [(s, results["metric"]) for s in results["summary"]])
              + " | seconds |", "|---" * (4 + len(results["summary"])) + "|"]
    for r in results["runs"]:
        cells = " | ".join(f"{r['best'][s][results['metric']]:.2f}" for s in results["summary"])
        lines.append(f"| {r['lr']:g} | {r['seed']} | {r['best_step']} | {cells} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _write_atomic(directory: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write `files` (name -> writer of that path, called in order) into a temporary sibling of
    `directory` that then replaces it."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, write in files.items():
        write(tmp / name)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds a fine-tuning output; pass --overwrite to replace it or choose "
                        "another --out")


def _install(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` in place of `out`; an old `out` goes only once the new one is there."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def sweep(task: Task, pretrained: Pretrained, cfg: FinetuneConfig, out: Path, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Every (lr, seed) run of `cfg`; writes OUT/results.json, OUT/results.md and OUT/best/.

    Everything is written into a hidden sibling of OUT that replaces it at the end, so an error or an
    interrupt leaves no half-written output; an existing, non-empty OUT needs `overwrite`. OUT is held
    for this process from the start (`rundir.claim`): another process on it is a UserError, and so is
    a full disk (`rundir.guard_disk`: OUT stays as it was)."""
    out = Path(out)
    with claim(out, "finetune"):
        _check_out(out, overwrite)
        special = SpecialIds.of(pretrained.tokenizer)
        task.check_model(pretrained.config, cfg.max_length)
        train_examples = task.examples("train")
        if cfg.max_train_examples:
            train_examples = train_examples[:cfg.max_train_examples]
        data = {"train": (train_examples, task.featurize(train_examples, pretrained.tokenizer, special, cfg.max_length))}
        for split in task.eval_splits:
            examples = task.examples(split)
            data[split] = (examples, task.featurize(examples, pretrained.tokenizer, special, cfg.max_length))
        if not data["train"][1]:
            raise UserError(f"task {task.name}: no training features; check the training file")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        with torch.device("meta"):                 # best/ is rewritten beside the previous best/: twice the weights
            needed = 2 * tensor_bytes(Encoder(pretrained.config).state_dict())
        try:
            with guard_disk(tmp, needed, f"the fine-tuning output {out}", "free some space, then run it again"):
                if tmp.exists():
                    shutil.rmtree(tmp)
                tmp.mkdir()
                results = _sweep_into(tmp, task, pretrained, cfg, data, train_examples, progress)
            _install(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return results


def _sweep_into(out: Path, task: Task, pretrained: Pretrained, cfg: FinetuneConfig, data: dict,
                train_examples: list, progress: bool) -> dict:
    runs, best_value = [], -math.inf
    for lr in cfg.lrs:
        for seed in cfg.seeds:
            result, state = finetune_one(task, pretrained, data, cfg, lr, seed, progress)
            runs.append(result)
            value = result.best[task.eval_splits[0]][task.metric]
            if state is not None and value > best_value:
                best_value = value
                meta = {"task": task.name, "metric": task.metric, "lr": lr, "seed": seed, "scores": result.best,
                        "model": asdict(pretrained.config), "labels": list(getattr(task, "labels", None) or []),
                        "source": pretrained.source, "task_options": task.options(), "max_length": cfg.max_length}
                _write_atomic(out / "best", {
                    "model.safetensors": lambda p, s=state: save_tensors(s, p),
                    "tokenizer.json": lambda p: pretrained.tokenizer.save(str(p)),
                    "finetune.json": lambda p, m=meta: p.write_text(json.dumps(
                        {**m, "files": file_records(p.parent, FINETUNED_FILES)}, indent=2)),
                })
    results = {
        "task": task.name, "metric": task.metric, "model": pretrained.name, "source": pretrained.source,
        "random_init": pretrained.state is None, "config": asdict(cfg), "task_options": task.options(),
        "train_examples": len(train_examples),
        "summary": {split: summarize(runs, split) for split in task.eval_splits},
        "baseline": {split: task.baseline(data["train"][1], data[split][1]) for split in task.eval_splits},
        "notes": task.metric_notes(),
        "runs": [asdict(r) for r in runs],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    return results


def run(args: argparse.Namespace) -> int:
    cfg = FinetuneConfig(
        lrs=tuple(args.lr), seeds=tuple(args.seed), epochs=args.epochs, batch_size=args.batch_size,
        max_length=args.max_length or DEFAULT_MAX_LENGTH.get(args.task, 128), warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, layer_decay=args.layer_decay, dropout=args.dropout,
        encoder_dropout=args.encoder_dropout,
        eval_every=args.eval_every, patience=args.patience, max_train_examples=args.max_train_examples,
        precision=args.precision, device=args.device)
    from . import tasks
    from .options import config_from_args
    kind = tasks()[args.task]
    task = kind.build(args.task, config_from_args(kind.config, args), args)
    pretrained = load_pretrained(args.checkpoint, args.random_init, args.name)
    if cfg.max_length > pretrained.config.max_positions:
        raise UserError(f"--max-length {cfg.max_length} exceeds the model's {pretrained.config.max_positions} positions")
    slug = pretrained.name.replace(" ", "_").replace("(", "").replace(")", "")
    out = Path(args.out or f"runs/finetune/{args.task}-{slug}")
    results = sweep(task, pretrained, cfg, out, progress=not args.quiet, overwrite=args.overwrite)
    print(summary_lines(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and the best run's weights in {out / 'best'}")
    print(f"next: unimask predict --model {out} --input FILE --output predictions (or --glue-submission DIR); "
          f"unimask export {out} --out hf/{out.name}")
    return 0


def summary_lines(results: dict) -> str:
    """Each eval split's median and best per metric, beside the majority-class baseline where there is one,
    and what a metric needs said (which class F1 takes as positive)."""
    lines = []
    for split, summary in results["summary"].items():
        base = (results.get("baseline") or {}).get(split)
        lines.append(f"{results['task']} {split} ({len(results['runs'])} runs): "
                     + ", ".join(f"{m} median {v['median']:.2f} best {v['best']:.2f}" for m, v in summary.items())
                     + (f"; always answering the majority class {base['class']!r}: "
                        + ", ".join(f"{m} {base[m]:.2f}" for m in summary) if base else ""))
    lines += [f"  {m}: {note}" for m, note in (results.get("notes") or {}).items()]
    return "\n".join(lines)
