"""Model cards (README.md) for exported directories: what the model is, what it was trained on and
how well it did, and how to load it."""

from __future__ import annotations

from typing import Any

from .. import __version__

PIPELINES = {"BertForSequenceClassification": "text-classification"}


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


def _usage(architecture: str, example: str) -> list[str]:
    pipeline = PIPELINES.get(architecture)
    lines = ["## How to load", "", "```python"]
    if pipeline:
        lines += ["from transformers import pipeline", "", f'model = pipeline("{pipeline}", model="PATH")', example]
    elif architecture == "BertForQuestionAnswering":   # transformers 5 has no question-answering pipeline
        lines += ["import torch", "from transformers import AutoModelForQuestionAnswering, AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("PATH")',
                  'model = AutoModelForQuestionAnswering.from_pretrained("PATH")', example,
                  "# the answer: the best span start <= end of context tokens, cut from the context by offsets",
                  "# (or run `unimask predict` on a SQuAD JSON file)"]
    else:
        lines += ["from transformers import AutoModel", "", 'model = AutoModel.from_pretrained("PATH")']
    return lines + ["```", "", "`PATH` is this directory.", ""]


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
