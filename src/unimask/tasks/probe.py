"""`unimask probe`: frozen-encoder evaluation, a logistic-regression probe per layer and pooling.

    unimask probe --checkpoint runs/mlm --task sst2 --data glue/SST-2 [--max-train-examples 8000]

In the SentEval tradition (Conneau & Kiela 2018, "SentEval: An Evaluation Toolkit for Universal
Sentence Representations", section 4; Tenney et al. 2019 and Liu et al. 2019 for per-layer probing) the
encoder is never trained: every training and dev text is encoded once, and each layer's hidden states
are pooled into one vector per text, two ways:

    cls    the [CLS] token's state (what BERT's classification head reads)
    mean   the mean over the real (non-padding) tokens, [CLS] and [SEP] included (finetune --pooling mean)

Layer 0 is the embedding output (after its LayerNorm and, for ELECTRA-style narrow embeddings, the
projection to the hidden size); layer l is block l's output; the last layer is exactly the encoder's
output (`analyze.layer_states`). In a pre-LN stack the blocks' outputs are the un-normalised
residual stream and only the last passes the final LayerNorm; the probe standardises every feature
anyway, so their growing scale does not matter, but a per-token normalisation is only in the last.

For each (layer, pooling) the features are standardised (StandardScaler, fitted on the training
texts) and a logistic regression (scikit-learn, lbfgs; multinomial above two classes) is fitted.
Its inverse L2 strength C is chosen from a grid by accuracy on a seeded, stratified held-out
fraction of the training texts (ties: the smaller C); the probe is then refitted on all the
training texts with that C and scored on the dev split(s) with accuracy and the task's GLUE metric
(Matthews correlation for CoLA, F1 for MRPC / QQP / binary `classify`). Classification only:
regression tasks (stsb, regress) are refused.

Output directory (default runs/probe/TASK-MODEL), written atomically:
    probe.json   settings, then per layer and pooling: C, held-out accuracy per C, train accuracy,
                 dev scores, whether lbfgs converged; timings
    probe.md     the dev scores as a table (rows: layers; columns: pooling x metric), C and train accuracy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..runtime import autocast_for, resolve_device
from .base import SpecialIds, collate
from .configs import ProbeConfig
from .glue import POOLINGS


# ---- features ---------------------------------------------------------------------------------------

CLS, MEAN = POOLINGS.index("cls"), POOLINGS.index("mean")     # rows of layer_features' first dimension


@torch.no_grad()
def layer_features(encoder, features: list[dict[str, Any]], pad_id: int, batch_size: int,
                   autocast: Callable | None = None, device: torch.device | str = "cpu",
                   progress: Callable[[int], None] | None = None) -> Tensor:
    """(P, L + 1, N, D) float32 features of N featurized texts: for each pooling of POOLINGS ([CLS],
    mean of the real tokens) and each layer (0 = embeddings, L = the encoder's output), in feature
    order. Batches run in length order (less padding) in eval mode; `progress(n)` after each batch."""
    from ..analyze import layer_states

    was_training = encoder.training
    encoder.eval()
    cfg = encoder.config
    out = torch.empty(len(POOLINGS), cfg.num_layers + 1, len(features), cfg.hidden_size)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([features[i] for i in idx], pad_id)
        ids, types, mask = (batch[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask"))
        with (autocast or _no_autocast)():
            states = layer_states(encoder, ids, mask, token_type_ids=types)   # L + 1 of (B, T, D)
        real = mask[..., None].float()                                          # (B, T, 1)
        rows = torch.tensor(idx)
        for layer, h in enumerate(states):
            h = h.float()                                                       # pooled in float32
            out[CLS, layer, rows] = h[:, 0].cpu()                               # (B, D) [CLS]
            out[MEAN, layer, rows] = ((h * real).sum(1) / real.sum(1)).cpu()    # (B, D) mean of real tokens
        if progress is not None:
            progress(len(idx))
    encoder.train(was_training)
    return out


def _no_autocast():
    from contextlib import nullcontext
    return nullcontext()


# ---- the probe ----------------------------------------------------------------------------------------

@dataclass
class Probe:
    """One fitted probe: the chosen C, the held-out accuracy of every C, the scaler + classifier refitted
    on all the training texts, and whether every lbfgs fit converged."""

    c: float
    holdout: dict[float, float]
    scaler: Any
    classifier: Any
    train_accuracy: float
    converged: bool

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.predict(self.scaler.transform(x))


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of the training set: seeded, stratified by label when every class has
    at least two texts (else plain random)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if counts.min() >= 2 and len(counts) > 1 else None
    try:
        fit, held = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:      # a held-out part too small to hold every class
        fit, held = train_test_split(rows, test_size=fraction, random_state=seed)
    return np.sort(fit), np.sort(held)


def fit_probe(x: np.ndarray, y: np.ndarray, c_grid: tuple[float, ...], holdout_fraction: float, seed: int,
              max_iter: int = 1000) -> Probe:
    """Standardise, choose C on a held-out part of (x, y) by accuracy, refit on all of it with that C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from .metrics import accuracy

    converged = True

    def fit(features: np.ndarray, labels: np.ndarray, c: float):
        nonlocal converged
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=max_iter).fit(features, labels)
        converged = converged and bool(np.all(model.n_iter_ < max_iter))
        return model

    fit_rows, held_rows = holdout_split(y, holdout_fraction, seed)
    if len(np.unique(y[fit_rows])) < 2:
        raise UserError("the probe's training texts hold only one class; use more (--max-train-examples) "
                        "or check the label column")
    scaler = StandardScaler().fit(x[fit_rows])
    a, b = scaler.transform(x[fit_rows]), scaler.transform(x[held_rows])
    held = {c: accuracy(y[held_rows], fit(a, y[fit_rows], c).predict(b)) for c in c_grid}
    best = max(c_grid, key=lambda c: held[c])          # the first maximum: ties go to the smaller C
    scaler = StandardScaler().fit(x)
    scaled = scaler.transform(x)
    classifier = fit(scaled, y, best)
    return Probe(best, held, scaler, classifier, accuracy(y, classifier.predict(scaled)), converged)


# ---- the command --------------------------------------------------------------------------------------

def _refuse_regression(task) -> None:
    if task.regression:
        raise UserError(f"probe fits logistic regression and needs a classification task; {task.name} is a "
                        "regression task (use unimask finetune for it)")


def probe(task, pretrained, cfg: ProbeConfig, progress: bool = True) -> dict:
    """Encode the task's texts with the frozen encoder and fit a probe per layer and pooling; returns
    the probe.json dict (nothing is written here)."""
    _refuse_regression(task)
    if cfg.max_length > pretrained.config.max_positions:
        raise UserError(f"--max-length {cfg.max_length} exceeds the model's {pretrained.config.max_positions} positions")
    task.check_model(pretrained.config, cfg.max_length)
    started = time.time()
    special = SpecialIds.of(pretrained.tokenizer)
    examples = {"train": task.examples("train")}
    if cfg.max_train_examples:
        examples["train"] = examples["train"][:cfg.max_train_examples]
    for split in task.eval_splits:
        examples[split] = task.examples(split)
    features = {split: task.featurize(ex, pretrained.tokenizer, special, cfg.max_length)
                for split, ex in examples.items()}
    if not features["train"]:
        raise UserError(f"task {task.name}: no training texts; check the training file")

    device = resolve_device(cfg.device)
    autocast = autocast_for(cfg.precision, device)
    encoder = pretrained.build(cfg.seed).to(device)
    total = sum(len(f) for f in features.values())
    bar = _bar(progress, total, f"encoding {task.name}")
    pooled = {split: layer_features(encoder, f, special.pad, cfg.batch_size, autocast, device,
                                    bar.update if bar is not None else None).numpy()
              for split, f in features.items()}                 # split -> (P, L + 1, N, D)
    if bar is not None:
        bar.close()
    encoded = time.time()

    y = np.array([f["label"] for f in features["train"]])
    layers = pooled["train"].shape[1]
    results = []
    bar = _bar(progress, layers * len(POOLINGS), f"probing {task.name}", unit="probe")
    for layer in range(layers):
        for p, pooling in enumerate(POOLINGS):
            fitted = fit_probe(pooled["train"][p, layer], y, cfg.c_grid, cfg.holdout_fraction, cfg.seed, cfg.max_iter)
            scores = {}
            for split in task.eval_splits:
                prediction = torch.as_tensor(fitted.predict(pooled[split][p, layer]))
                one_hot = torch.nn.functional.one_hot(prediction, len(task.labels)).float()   # (N, C): its argmax
                scores[split] = task.score(examples[split], features[split], one_hot)
            results.append({"layer": layer, "pooling": pooling, "C": fitted.c,
                            "holdout_accuracy": {f"{c:g}": v for c, v in fitted.holdout.items()},
                            "train_accuracy": fitted.train_accuracy, "scores": scores,
                            "converged": fitted.converged})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    main = task.eval_splits[0]
    best = max(results, key=lambda r: r["scores"][main][task.metric])
    config = pretrained.config
    return {
        "task": task.name, "metric": task.metric, "scorers": list(task.scorers), "labels": list(task.labels),
        "model": pretrained.name, "source": pretrained.source, "random_init": pretrained.state is None,
        "encoder": {"num_layers": config.num_layers, "hidden_size": config.hidden_size, "norm": config.norm},
        "config": asdict(cfg), "task_options": {k: v for k, v in task.options().items() if k != "pooling"},
        "examples": {split: len(ex) for split, ex in examples.items()},
        "layers": "0 = the embedding output, l = block l's output, the last = the encoder's output "
                  "(pre-LN: only the last passes the final LayerNorm)",
        "poolings": {"cls": "the [CLS] token's state", "mean": "the mean over real (non-padding) tokens"},
        "best": {"layer": best["layer"], "pooling": best["pooling"], "split": main,
                 task.metric: best["scores"][main][task.metric]},
        "baseline": {split: task.baseline(features["train"], features[split]) for split in task.eval_splits},
        "notes": task.metric_notes(),
        "results": results,
        "seconds": {"encode": round(encoded - started, 1), "probe": round(time.time() - encoded, 1),
                    "total": round(time.time() - started, 1)},
    }


def _bar(enabled: bool, total: int, desc: str, unit: str = "text"):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def markdown(result: dict) -> str:
    """probe.md: per dev split, rows = layers and columns = pooling x metric; then C and train accuracy."""
    scorers, layers = result["scorers"], sorted({r["layer"] for r in result["results"]})
    cell = {(r["layer"], r["pooling"]): r for r in result["results"]}
    n = result["examples"]
    lines = [f"# probe: {result['task']} — {result['model']}", "",
             f"source: `{result['source']}`{' (random init)' if result['random_init'] else ''}; "
             f"{n['train']} training texts; logistic regression on standardised features, C chosen on "
             f"{result['config']['holdout_fraction']:g} of them; scores in percent. "
             "Layer 0 = embeddings, the last = the encoder's output.", ""]
    columns = [(p, m) for p in POOLINGS for m in scorers]
    for split in [s for s in n if s != "train"]:
        lines += [f"## {split} ({n[split]} texts)", "",
                  "| layer | " + " | ".join(f"{p} {m}" for p, m in columns) + " |", "|---" * (1 + len(columns)) + "|"]
        lines += [f"| {layer} | " + " | ".join(f"{cell[layer, p]['scores'][split][m]:.2f}" for p, m in columns) + " |"
                  for layer in layers]
        base = (result.get("baseline") or {}).get(split)
        if base:
            lines += [f"| majority class ({base['class']}) | " + " | ".join(f"{base[m]:.2f}" for _, m in columns) + " |"]
        lines += [f"\n{m}: {note}" for m, note in (result.get("notes") or {}).items()] + [""]
    lines += ["## chosen C and train accuracy", "",
              "| layer | " + " | ".join(f"{p} C | {p} train accuracy" for p in POOLINGS) + " |",
              "|---" * (1 + 2 * len(POOLINGS)) + "|"]
    lines += [f"| {layer} | " + " | ".join(f"{cell[layer, p]['C']:g} | {cell[layer, p]['train_accuracy']:.2f}"
                                         for p in POOLINGS) + " |" for layer in layers]
    b = result["best"]
    lines += ["", f"best: layer {b['layer']}, {b['pooling']} pooling, {b['split']} {result['metric']} "
                  f"{b[result['metric']]:.2f}"]
    if not all(r["converged"] for r in result["results"]):
        lines.append("(some lbfgs fits stopped at --max-iter before converging)")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from . import tasks
    from ..rundir import claim
    from .finetune import _write_atomic, load_pretrained
    from .options import config_from_args

    cfg = config_from_args(ProbeConfig, args)
    kind = tasks()[args.task]
    task = kind.build(args.task, config_from_args(kind.config, args), args)
    _refuse_regression(task)                      # before the model loads: fail fast
    pretrained = load_pretrained(args.checkpoint, args.random_init, args.name)
    slug = pretrained.name.replace(" ", "_").replace("(", "").replace(")", "")
    out = Path(args.out or f"runs/probe/{args.task}-{slug}").expanduser()
    with claim(out, "probe"):
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; name a directory")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it, or another --out")
        result = probe(task, pretrained, cfg, progress=not args.quiet)
        text = markdown(result)
        _write_atomic(out, {"probe.json": lambda p: p.write_text(json.dumps(result, indent=2)),
                            "probe.md": lambda p: p.write_text(text)})
    print(text, end="")
    print(f"probe: {result['seconds']['encode']:.0f} s encoding, {result['seconds']['probe']:.0f} s fitting; "
          f"wrote {out / 'probe.json'} and {out / 'probe.md'}")
    return 0
