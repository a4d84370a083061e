"""`unimask generate`: decode with a model fine-tuned by `unimask finetune --task seq2seq`.

Loads a fine-tuning run's best/ directory (model.safetensors with encoder.* and head.*, finetune.json
with the encoder config and the task's lengths and decoding settings, tokenizer.json), decodes the
sources of --input in batches with beam search (tasks/decoding.py: UniLM-style, keys/values reused
unless --no-cache), writes one output per line, reports sentences per second, and scores the outputs
against --references (corpus BLEU-4, ROUGE-L, METEOR when nltk's WordNet data is installed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runtime import resolve_device
from .base import SpecialIds
from .decoding import GenerationConfig, generate
from .metrics import generation_scores, meteor_unavailable
from .options import config_from_args
from .records import read_lines
from .seq2seq import decode_texts, decoder_ids, featurize_sources, read_jsonl


def _generation_config(saved: dict[str, Any], args: argparse.Namespace) -> GenerationConfig:
    """The fine-tuned decoding settings, overridden by the flags given (tasks/options.py)."""
    return config_from_args(GenerationConfig, args, {**saved, "kv_cache": not args.no_cache})


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_finetuned
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    ft = load_finetuned(args.checkpoint)
    if ft.meta.get("task") != "seq2seq":
        raise UserError(f"{ft.directory} holds a fine-tuned {ft.meta.get('task')!r} model; generation needs one "
                        "fine-tuned with --task seq2seq (`unimask predict` runs the others)")
    return generate_from(ft, args)


def generate_from(ft: Any, args: argparse.Namespace) -> int:
    """Decode --input with a loaded seq2seq `predict.Finetuned`; write, time and score the outputs."""
    encoder, head, tokenizer, meta = ft.encoder, ft.head, ft.tokenizer, ft.meta
    options = meta.get("task_options") or {}
    cfg = _generation_config(options.get("generation", {}), args)
    max_source_length = int(options.get("max_source_length") or encoder.config.max_positions // 2)
    max_length = cfg.max_length or int(options.get("max_target_length", 48)) - 1

    path = Path(args.input).expanduser()
    if path.suffix == ".jsonl":
        records = read_jsonl(path, target_required=False)
        sources, jsonl_refs = [r.source for r in records], [r.target for r in records]
    else:
        sources, jsonl_refs = [line.strip() for line in read_lines(path, "input file")], []
    references = None
    if args.references:
        references = [line.strip() for line in read_lines(args.references, "references file")]
        if len(references) != len(sources):
            raise UserError(f"--references has {len(references)} lines but --input has {len(sources)}; "
                            "they must be line-aligned")
    elif jsonl_refs and all(jsonl_refs):
        references = jsonl_refs

    device = resolve_device(args.device)
    encoder, head = encoder.to(device), head.to(device)
    special = SpecialIds.of(tokenizer)
    source_ids = featurize_sources(sources, tokenizer, special, max_source_length)
    started = time.perf_counter()
    outputs = generate(encoder, head, source_ids, decoder_ids(special, encoder.config), cfg, max_length,
                       batch_size=args.batch_size, pad_id=special.pad, device=device,
                       banned=(special.pad, special.cls, special.mask))
    seconds = time.perf_counter() - started
    texts = decode_texts(tokenizer, outputs)

    if args.output:
        Path(args.output).expanduser().write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    else:
        sys.stdout.write("".join(t + "\n" for t in texts))
    print(f"generated {len(texts)} outputs in {seconds:.2f} s ({len(texts) / max(seconds, 1e-9):.2f} sentences/s; "
          f"beam {cfg.beam_size}, {'key/value cache' if cfg.kv_cache else 'no cache'})", file=sys.stderr)
    if references is not None:
        scores = generation_scores(references, texts)
        print("scores: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), file=sys.stderr)
        reason = meteor_unavailable()
        if reason:
            print(f"note: {reason}", file=sys.stderr)
    return 0
