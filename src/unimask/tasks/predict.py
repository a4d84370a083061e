"""`unimask predict`: run a fine-tuned model (the --out of `unimask finetune`) on new inputs.

What comes out depends on the task the model was fine-tuned for (best/finetune.json "task"):

- GLUE tasks, `classify`, `regress`: a TSV, CSV or JSONL file in (the same columns as fine-tuning,
  no label needed), the same rows out (same format, every field kept) with `prediction` and, for
  classification, one probability column per class, `prob_<label>`. `--glue-submission DIR` writes
  the GLUE leaderboard file of a test split (`SST-2.tsv`, `MNLI-m.tsv`, ...: `index<TAB>prediction`,
  labels as GLUE names them; transformers' run_glue `--do_predict` writes the same layout).
- `squad`: a SQuAD JSON in (answers not needed), `{id: answer}` out ("" = no answer, for v2.0 models
  or with `--null-threshold`), the file the official evaluation script reads.
- `seq2seq`: what `unimask generate` does (one output per line).

Inputs are read by tasks/records.py's rules (nothing lost or invented) and batched in length order.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Finetuned, load_finetuned
from ..errors import UserError
from . import records, tasks
from .base import SpecialIds
from .glue import GLUE, Example, SentenceTask
from .squad import SquadTask, decode_answers, read_squad


# ---- sentence tasks ------------------------------------------------------------------------------

PREDICT_TEXT = {"cola": "sentence"}
"""GLUE tasks whose test files name the text column differently from train/dev (CoLA's are header-less)."""

SUBMISSION_FILES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
                    "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
"""GLUE task -> its leaderboard file name (MNLI: MNLI-m, MNLI-mm or AX, from the input's name)."""


def _read_unlabelled(path: Path, task: SentenceTask, text_column: str | None,
                     pair_column: str | None) -> tuple[records.Table, list[Example]]:
    """The input's records and one unlabelled Example per record; a record without its text is a
    one-line error (predictions must stay aligned with the rows)."""
    text_key = text_column or PREDICT_TEXT.get(task.name) or task.table.text
    pair_key = pair_column or task.table.pair
    if text_key is None:
        raise UserError("this model's finetune.json does not name its text column; pass --text-column")
    table = records.read_table(path, header=True)
    named = [k for k in (text_key, pair_key) if isinstance(k, str)]
    if not task.table.header and not text_column and any(k not in (table.header or []) for k in named):
        table = records.read_table(path, header=False)           # a header-less GLUE file (CoLA train/dev)
        text_key, pair_key = task.table.text, task.table.pair
    if not table.records:
        raise UserError(f"{path} has no rows to predict")
    columns = [table.column(text_key)] + ([table.column(pair_key)] if pair_key is not None else [])
    missing, examples = [], []
    for line, row in table.records:
        values = [records.as_text(table.value(row, c)) for c in columns]
        if None in values:
            name = [text_key, pair_key][values.index(None)]
            missing.append(f"line {line}: {records.describe(table.value(row, columns[values.index(None)]), str(name))}")
        examples.append(Example(values[0] or "", values[1] if len(values) > 1 else None, None))
    if missing:
        raise UserError(f"{table.path} {missing[0]} ({len(missing)} such rows); every row needs its text to be "
                        "predicted")
    return table, examples


def _prediction_columns(task: SentenceTask, outputs: torch.Tensor) -> tuple[list[str], list[list[Any]]]:
    """("prediction", "prob_<label>"...) names and one row of values per example."""
    if task.regression:
        return ["prediction"], [[round(float(v), 6)] for v in outputs.tolist()]
    probs = outputs.float().softmax(-1)                                              # (N, C)
    names = ["prediction"] + [f"prob_{label}" for label in task.labels]
    rows = [[task.labels[int(p.argmax())]] + [round(float(x), 6) for x in p] for p in probs]
    return names, rows


def _write_rows(table: records.Table, names: list[str], values: list[list[Any]], out: io.TextIOBase) -> None:
    """The input's records with the prediction columns appended, in the input's own format."""
    taken = [n for n in names if (table.header and n in table.header)
             or (table.kind == "jsonl" and any(n in r for _, r in table.records))]
    if taken:
        raise UserError(f"{table.path} already has a column {taken[0]!r}; rename it (predict adds {', '.join(names)})")
    if table.kind == "jsonl":
        for (_, record), row in zip(table.records, values):
            out.write(json.dumps({**record, **dict(zip(names, row))}, ensure_ascii=False) + "\n")
        return
    cells = [[str(v) for v in row] for row in values]
    if table.kind == "csv":
        writer = csv.writer(out, lineterminator="\n")
        if table.header is not None:
            writer.writerow(table.header + names)
        writer.writerows(record + row for (_, record), row in zip(table.records, cells))
        return
    if table.header is not None:
        out.write("\t".join(table.header + names) + "\n")
    for (_, record), row in zip(table.records, cells):
        out.write("\t".join(record + row) + "\n")


def _submission_name(task: str, path: Path) -> str:
    if task != "mnli":
        return SUBMISSION_FILES[task]
    stem = path.stem.lower()
    for key, name in (("mismatched", "MNLI-mm"), ("matched", "MNLI-m"), ("diagnostic", "AX"), ("ax", "AX")):
        if key in stem:
            return name
    raise UserError(f"--glue-submission: cannot tell from {path.name} whether it is MNLI's test_matched, "
                    "test_mismatched or the diagnostic set; keep the GLUE file name")


def _write_submission(task: SentenceTask, table: records.Table, outputs: torch.Tensor, directory: Path,
                      path: Path) -> Path:
    """DIR/<GLUE name>.tsv: "index<TAB>prediction" per test row (STS-B clipped to [0, 5])."""
    if task.name not in GLUE:
        raise UserError(f"--glue-submission needs a model fine-tuned on a GLUE task, not {task.name!r}")
    index = next((c for c in ("index", "id") if table.header and c in table.header), None)
    ids = ([row[table.header.index(index)] for _, row in table.records] if index
           else [str(i) for i in range(len(table.records))])
    if task.regression:
        predictions = [f"{min(5.0, max(0.0, v)):.3f}" for v in outputs.tolist()]
    else:
        predictions = [task.labels[i] for i in outputs.argmax(-1).tolist()]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{_submission_name(task.name, path)}.tsv"
    _atomic_write(target, "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in zip(ids, predictions)))
    return target


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _emit(text: str, output: str | None) -> None:
    if output:
        path = Path(output).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"--output {path}: the folder {path.parent} does not exist; create it first")
        _atomic_write(path, text)
    else:
        sys.stdout.write(text)


def _run_model(ft: Finetuned, features: list[dict], args: argparse.Namespace) -> Any:
    from tqdm import tqdm

    from ..runtime import autocast_for, resolve_device
    device = resolve_device(args.device)
    ft.encoder.to(device), ft.head.to(device)
    special = SpecialIds.of(ft.tokenizer)
    with tqdm(total=len(features), unit="input", disable=args.quiet, file=sys.stderr, dynamic_ncols=True) as bar:
        return ft.task.outputs(ft.encoder, ft.head, features, special, args.batch_size,
                               autocast_for(args.precision, device), device, progress=bar.update)


def predict_sentences(ft: Finetuned, args: argparse.Namespace) -> int:
    task: SentenceTask = ft.task  # type: ignore[assignment]
    path = Path(args.input).expanduser()
    table, examples = _read_unlabelled(path, task, args.text_column, args.text_pair_column)
    special = SpecialIds.of(ft.tokenizer)
    started = time.perf_counter()
    outputs = _run_model(ft, task.featurize(examples, ft.tokenizer, special, ft.max_length), args)
    seconds = time.perf_counter() - started
    names, values = _prediction_columns(task, outputs)
    if args.glue_submission:
        written = _write_submission(task, table, outputs, Path(args.glue_submission).expanduser(), path)
        print(f"wrote {written}", file=sys.stderr)
    if args.output or not args.glue_submission:
        buffer = io.StringIO()
        _write_rows(table, names, values, buffer)
        _emit(buffer.getvalue(), args.output)
    print(f"predicted {len(examples)} rows in {seconds:.2f} s ({len(examples) / max(seconds, 1e-9):.1f} rows/s, "
          f"batch {args.batch_size})", file=sys.stderr)
    return 0


def predict_squad(ft: Finetuned, args: argparse.Namespace) -> int:
    task: SquadTask = ft.task  # type: ignore[assignment]
    examples = read_squad(args.input, answers=False)
    special = SpecialIds.of(ft.tokenizer)
    started = time.perf_counter()
    features = task.featurize(examples, ft.tokenizer, special, ft.max_length)
    start, end = _run_model(ft, features, args)
    v2 = args.null_threshold is not None or task.version == "2.0"
    threshold = args.null_threshold if args.null_threshold is not None else task.null_threshold
    answers = decode_answers(examples, features, start, end, n_best=task.n_best,
                             max_answer_length=task.max_answer_length, null_threshold=threshold if v2 else None)
    seconds = time.perf_counter() - started
    _emit(json.dumps(answers, ensure_ascii=False, indent=1) + "\n", args.output)
    print(f"answered {len(examples)} questions in {seconds:.2f} s ({len(examples) / max(seconds, 1e-9):.1f}/s"
          f"{'; v2.0: empty answers above null threshold ' + format(threshold, 'g') if v2 else ''})", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    ft = load_finetuned(args.checkpoint)
    return tasks()[ft.meta["task"]].predict_file(ft, args)
