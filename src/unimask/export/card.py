"""Model cards (README.md) for exported directories: what the model is, what it was trained on and
how well it did, and how to load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__

PIPELINES = {"BertForSequenceClassification": "text-classification",
             "UnimaskForSequenceClassification": "text-classification"}
AUTO_CLASSES = {"ForMaskedLM": "AutoModelForMaskedLM", "ForPreTraining": "AutoModelForPreTraining",
                "ForSequenceClassification": "AutoModelForSequenceClassification",
                "ForQuestionAnswering": "AutoModelForQuestionAnswering"}
"""Architecture suffix -> the transformers Auto class that loads it (else AutoModel)."""


def auto_class(architecture: str) -> str:
    return next((auto for suffix, auto in AUTO_CLASSES.items() if architecture.endswith(suffix)), "AutoModel")


def load_arguments(architecture: str, pooler: bool = False) -> str:
    """Extra from_pretrained / pipeline arguments: remote code for unimask's own classes, and BERT's
    encoder without a pooler (pretraining never trains one; transformers would add a random one and
    warn) unless the directory has the `pooler` its run carried from a released BERT."""
    without_pooler = ", add_pooling_layer=False" if architecture == "BertModel" and not pooler else ""
    return without_pooler + (", trust_remote_code=True" if architecture.startswith("Unimask") else "")


def _architecture(model: dict[str, Any]) -> str:
    parts = [f"{model.get('num_layers')} layers", f"hidden {model.get('hidden_size')}",
             f"{model.get('num_heads')} heads", f"FFN {model.get('intermediate_size')}",
             f"{model.get('norm', 'post')}-LN", f"vocabulary {model.get('vocab_size')}"]
    if model.get("absolute_positions", True):
        parts.append(f"{model.get('max_positions')} absolute positions")
    if model.get("relative_buckets"):
        parts.append(f"T5 relative position bias ({model['relative_buckets']} buckets, max distance "
                     f"{model.get('relative_max_distance')})")
    return ", ".join(parts)


def _usage(architecture: str, example: str, pooler: bool = False) -> list[str]:
    pipeline, extra = PIPELINES.get(architecture), load_arguments(architecture, pooler)
    auto = auto_class(architecture)
    lines = ["## How to load", "", "```python"]
    if pipeline:
        lines += ["from transformers import pipeline", "", f'model = pipeline("{pipeline}", model="PATH"{extra})',
                  example]
    else:
        lines += [f"from transformers import {auto}, AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("PATH")', f'model = {auto}.from_pretrained("PATH"{extra})',
                  example]
    if auto == "AutoModelForQuestionAnswering":   # transformers 5 has no question-answering pipeline
        lines += ["# the answer: the best span start <= end of context tokens, cut from the context by offsets",
                  "# (or run `unimask predict` on a SQuAD JSON file)"]
    lines += ["```", "", "`PATH` is this directory."]
    if "add_pooling_layer" in extra:
        lines += ["", "`add_pooling_layer=False`: pretraining never trained BERT's pooler, so the directory has none."]
    elif pooler:
        lines += ["", "The pooler is the released model's, carried unchanged through continued pretraining "
                  "(`pretrain --init`), which does not train it."]
    if "trust_remote_code" in extra:
        lines += ["", "The encoder has no transformers class of its own (pre-LN, a relative position bias or mean "
                  "pooling), so the directory carries its code, `modeling_unimask.py` (torch and transformers "
                  "only), and loading needs `trust_remote_code=True`."]
    return lines + [""]


def pretraining_card(checkpoint: Path, config: dict[str, Any], architecture: str, remote: bool,
                     pooler: bool = False, pooler_left_out: bool = False) -> str:
    """README.md of an exported pretraining checkpoint: objective, architecture, data, steps, tokens
    seen, the last validation record, usage (`pooler`: the directory has the pooler carried from --init;
    `pooler_left_out`: the run carries one that `architecture` has no place for)."""
    meta = _read_json(checkpoint / "meta.json") or {}
    train, data = config.get("train") or {}, config.get("data") or {}
    step = int(meta.get("step", 0))
    tokens = step * int(train.get("batch_size", 0)) * int(train.get("grad_accum", 1)) * int(data.get("seq_len", 0))
    lines = [f"# {config.get('objective_name')} encoder pretrained with unimask", "",
             f"- **Architecture**: `{architecture}`; encoder: {_architecture(config.get('model') or {})}.",
             f"- **Objective**: {config.get('objective_name')} (recipe size {config.get('size')}).",
             f"- **Training**: {step:,} optimizer steps of {train.get('batch_size')} x {train.get('grad_accum', 1)} "
             f"sequences of {data.get('seq_len')} tokens per process, {tokens:,} tokens per process; lr "
             f"{train.get('lr')}, {train.get('warmup_steps')} warm-up steps, {train.get('schedule')} decay."]
    manifest = _read_json(Path(str(data.get("path", ""))) / "manifest.json") if data.get("path") else None
    if manifest and isinstance(manifest.get("splits"), dict):
        splits = manifest["splits"]
        lines.append("- **Data**: " + "; ".join(f"{name} {s.get('num_tokens', 0):,} tokens in {s.get('num_docs', 0):,} "
                                                 f"documents" for name, s in splits.items())
                     + f" (vocabulary {manifest.get('vocab_size')}, `{data.get('path')}`).")
    valid = _last_valid(checkpoint, step)
    if valid:
        shown = {k: v for k, v in valid.items() if k not in ("split", "step") and isinstance(v, (int, float))}
        lines.append(f"- **Last validation** (step {valid.get('step')}): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + ".")
    lines.append("")
    lines += _usage(architecture, 'outputs = model(**tokenizer("a [MASK] sentence", return_tensors="pt"))', pooler)
    if pooler_left_out:
        lines += [f"The run carries the released model's pooler, which `{architecture}` has no place for; "
                  "`unimask export --bare` writes a `BertModel` with it (for `BertForSequenceClassification`).", ""]
    lines += [f"Written by unimask {__version__} (`unimask export`).", ""]
    return "\n".join(lines)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _last_valid(checkpoint: Path, step: int) -> dict | None:
    """The run's last valid record at or before `step` (metrics.jsonl of the run directory), if any."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
    except OSError:
        return None
    found = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("split") == "valid" and int(record.get("step", 0)) <= step:
            found = record
    return found


def finetuned_card(meta: dict[str, Any], architecture: str) -> str:
    """README.md of an exported `unimask finetune` model: task, classes, dev scores, recipe, usage."""
    task = meta.get("task")
    lines = [f"# {task} model fine-tuned with unimask", "",
             f"- **Architecture**: `{architecture}`; encoder: {_architecture(meta.get('model') or {})}.",
             f"- **Fine-tuned from**: `{meta.get('source')}`.",
             f"- **Task**: {task}" + (f"; classes: {', '.join(meta['labels'])}." if meta.get("labels") else "."),
             f"- **Fine-tuning**: learning rate {meta.get('lr')}, seed {meta.get('seed')}, "
             f"{meta.get('max_length', '?')} tokens per input (the best of its sweep by {meta.get('metric')}).", ""]
    scores = meta.get("scores") or {}
    if scores:
        lines += ["## Dev scores", "", "| split | " + " | ".join(next(iter(scores.values()))) + " |",
                  "|---" * (1 + len(next(iter(scores.values())))) + "|"]
        lines += [f"| {split} | " + " | ".join(f"{v:.2f}" for v in values.values()) + " |"
                  for split, values in scores.items()]
        lines.append("")
    example = ('outputs = model(**tokenizer("Who wrote it?", "It was written by Ann.", return_tensors="pt"))'
               if task == "squad" else 'model("a sentence to classify")')
    lines += _usage(architecture, example)
    lines += [f"Written by unimask {__version__} (`unimask export`).", ""]
    return "\n".join(lines)
