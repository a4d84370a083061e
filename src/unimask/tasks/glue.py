"""Sentence and sentence-pair classification / regression: the GLUE tasks and the user's own files.

GLUE (Wang et al. 2019) files are read in the layout of the GLUE download script: `train.tsv`,
`dev.tsv` (MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`), tab-separated without quoting, with a
header row except CoLA. Metrics are the official ones: Matthews correlation for CoLA, accuracy and
F1 for MRPC and QQP, Pearson and Spearman for STS-B, accuracy elsewhere.

The head is BERT's: the [CLS] state -> dense -> tanh (the pooler) -> dropout -> linear; cross-entropy
for classification, mean squared error for regression (one output).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from . import metrics
from .base import SpecialIds, Task, read_text

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: Any          # class name (str) or a float target


@dataclass(frozen=True)
class TableSpec:
    """Where a task's fields are in its files: a header name, or a column index for header-less files."""

    text: str | int
    label: str | int
    pair: str | int | None = None
    header: bool = True


@dataclass(frozen=True)
class GlueSpec:
    table: TableSpec
    labels: tuple[str, ...] | None      # None: regression
    metric: str                          # the selection metric
    scorers: tuple[str, ...]             # keys of SCORERS reported
    eval_splits: tuple[str, ...] = ("dev",)


SCORERS: dict[str, Callable[[list, list], float]] = {
    "accuracy": metrics.accuracy,
    "f1": metrics.f1,
    "mcc": metrics.matthews,
    "pearson": metrics.pearson,
    "spearman": metrics.spearman,
}

GLUE: dict[str, GlueSpec] = {
    "cola": GlueSpec(TableSpec(text=3, label=1, header=False), ("0", "1"), "mcc", ("mcc", "accuracy")),
    "sst2": GlueSpec(TableSpec("sentence", "label"), ("0", "1"), "accuracy", ("accuracy",)),
    "mrpc": GlueSpec(TableSpec("#1 String", "Quality", "#2 String"), ("0", "1"), "f1", ("accuracy", "f1")),
    "stsb": GlueSpec(TableSpec("sentence1", "score", "sentence2"), None, "pearson", ("pearson", "spearman")),
    "qqp": GlueSpec(TableSpec("question1", "is_duplicate", "question2"), ("0", "1"), "f1", ("accuracy", "f1")),
    "mnli": GlueSpec(TableSpec("sentence1", "gold_label", "sentence2"), ("contradiction", "entailment", "neutral"),
                     "accuracy", ("accuracy",), ("dev_matched", "dev_mismatched")),
    "qnli": GlueSpec(TableSpec("question", "label", "sentence"), ("entailment", "not_entailment"), "accuracy", ("accuracy",)),
    "rte": GlueSpec(TableSpec("sentence1", "label", "sentence2"), ("entailment", "not_entailment"), "accuracy", ("accuracy",)),
    "wnli": GlueSpec(TableSpec("sentence1", "label", "sentence2"), ("0", "1"), "accuracy", ("accuracy",)),
}
"""Task name -> file layout, label set and metrics (GLUE download-script layout)."""

GLUE_DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
             "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}


def _column(header: list[str] | None, key: str | int, path: Path) -> int:
    if isinstance(key, int):
        return key
    if header is None or key not in header:
        raise UserError(f"{path} has no column {key!r} (columns: {', '.join(header or [])}); "
                        "name an existing column")
    return header.index(key)


def _read_rows(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    """Rows of a TSV / CSV file or dicts of a JSONL file as lists (JSONL: header = the first row's keys)."""
    text = read_text(path)
    if path.suffix in (".jsonl", ".json"):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {n} is not JSON ({e}); write one JSON object per line") from None
        if not all(isinstance(r, dict) for r in records):
            raise UserError(f"{path} must hold one JSON object per line")
        names = list(records[0])
        return names, [[r.get(k) for k in names] for r in records]
    if path.suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
    else:   # GLUE convention: tab-separated, no quoting (quotes are part of the text)
        rows = [line.split("\t") for line in text.splitlines()]
    rows = [r for r in rows if any(c.strip() for c in r)]
    if header:
        return [c.strip() for c in rows[0]], rows[1:]
    return None, rows


def read_table(path: str | Path, table: TableSpec, regression: bool) -> list[Example]:
    """Examples from a TSV/CSV/JSONL file; rows with too few columns are skipped (QQP has a few)."""
    path = Path(path).expanduser()
    header, rows = _read_rows(path, table.header)
    cols = [_column(header, table.text, path), _column(header, table.label, path),
            None if table.pair is None else _column(header, table.pair, path)]
    need = max(c for c in cols if c is not None)
    examples, skipped = [], 0
    for row in rows:
        if len(row) <= need:
            skipped += 1
            continue
        text, label = row[cols[0]], row[cols[1]]
        pair = None if cols[2] is None else row[cols[2]]
        if regression:
            try:
                label = float(label)
            except (TypeError, ValueError):
                raise UserError(f"{path}: label {label!r} is not a number; a regression task needs numeric labels") from None
        else:
            label = str(label).strip()
        examples.append(Example(str(text), None if pair is None else str(pair), label))
    if not rows:
        raise UserError(f"{path} has no data rows{' under its header' if header else ''}; add labelled examples")
    if not examples:
        raise UserError(f"{path} has no usable rows (every row has fewer than {need + 1} columns)")
    if skipped > len(rows) // 10:
        raise UserError(f"{path}: {skipped} of {len(rows)} rows have fewer than {need + 1} columns; "
                        "check the file format (TSV, CSV or JSONL) and the column names")
    return examples


POOLINGS = ("cls", "mean")
"""What the sentence head reads: [CLS]'s hidden state (BERT) or the mean over the real (non-pad) tokens."""


class ClassificationHead(nn.Module):
    """Pooled -> dense -> tanh -> dropout -> linear (BERT's pooler and classifier); pooled is [CLS]'s
    hidden state, or with pooling="mean" the average of the non-pad tokens' hidden states."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)
        for layer in (self.dense, self.out):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        # hidden: (B, T, D), attention_mask: (B, T) bool, True at real tokens -> (B, num_outputs)
        if self.pooling == "cls":
            pooled = hidden[:, 0]                                                  # (B, D)
        else:
            real = attention_mask[..., None].float()                               # (B, T, 1)
            # summed in float32: bf16 counts and sums lose precision past 256 tokens
            pooled = ((hidden.float() * real).sum(1) / real.sum(1)).to(hidden.dtype)  # (B, D)
        return self.out(self.dropout(torch.tanh(self.dense(pooled))))


class SentenceTask(Task):
    """Classification (cross-entropy) or regression (MSE) over one text or a pair of texts."""

    def __init__(self, name: str, files: dict[str, Path], table: TableSpec, labels: tuple[str, ...] | None,
                 metric: str, scorers: tuple[str, ...], eval_splits: tuple[str, ...] = ("dev",),
                 pooling: str = "cls") -> None:
        if pooling not in POOLINGS:
            raise UserError(f"--pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.name, self.files, self.table, self.metric = name, files, table, metric
        self.labels, self.scorers, self.eval_splits, self.pooling = labels, scorers, eval_splits, pooling
        self._cache: dict[str, list[Example]] = {}

    @property
    def regression(self) -> bool:
        return self.labels is None

    def examples(self, split: str) -> list[Example]:
        if split not in self._cache:
            if split not in self.files:
                raise UserError(f"task {self.name} has no {split} file; pass one")
            examples = read_table(self.files[split], self.table, self.regression)
            if self.labels is not None:
                unknown = sorted({e.label for e in examples} - set(self.labels))
                if unknown:
                    raise UserError(f"{self.files[split]} has labels {unknown[:5]} that are not among "
                                    f"{list(self.labels)}; check the label column")
            self._cache[split] = examples
        return self._cache[split]

    def options(self) -> dict[str, Any]:
        return {"pooling": self.pooling}

    def featurize(self, examples: list[Example], tokenizer: Tokenizer, special: SpecialIds,
                  max_length: int) -> list[dict[str, Any]]:
        """[CLS] text [SEP] (pair [SEP]); the longer side is truncated first (BERT's rule)."""
        texts = tokenizer.encode_batch([e.text for e in examples], add_special_tokens=False)
        pairs = (tokenizer.encode_batch([e.pair for e in examples], add_special_tokens=False)
                 if examples and examples[0].pair is not None else [None] * len(examples))
        features = []
        for i, (e, a, b) in enumerate(zip(examples, texts, pairs)):
            a_ids, b_ids = list(a.ids), (list(b.ids) if b is not None else None)
            budget = max_length - (3 if b_ids is not None else 2)
            while len(a_ids) + len(b_ids or []) > budget:
                if b_ids is not None and len(b_ids) > len(a_ids):
                    b_ids.pop()
                else:
                    a_ids.pop()
            ids = [special.cls, *a_ids, special.sep]
            types = [0] * len(ids)
            if b_ids is not None:
                ids += [*b_ids, special.sep]
                types += [1] * (len(b_ids) + 1)
            label = float(e.label) if self.regression else self.labels.index(e.label)
            features.append({"input_ids": ids, "token_type_ids": types, "label": label, "example": i})
        return features

    def head(self, encoder: nn.Module, dropout: float) -> nn.Module:
        return ClassificationHead(encoder.config.hidden_size, 1 if self.regression else len(self.labels), dropout,
                                  self.pooling)

    def loss(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = head(hidden, batch["attention_mask"]).float()                        # (B, C)
        if self.regression:
            loss = F.mse_loss(out[:, 0], batch["label"].float(), reduction="sum")
        else:
            loss = F.cross_entropy(out, batch["label"], reduction="sum")
        return loss, torch.tensor(out.shape[0], device=out.device)

    def predict(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> Tensor:
        out = head(hidden, batch["attention_mask"]).float()
        return out[:, 0] if self.regression else out.argmax(-1)

    def score(self, examples: list[Example], features: list[dict[str, Any]], outputs: Tensor) -> dict[str, float]:
        gold = [f["label"] for f in features]
        pred = outputs.tolist()
        return {name: SCORERS[name](gold, pred) for name in self.scorers}


def glue_task(name: str, data: str | Path, pooling: str = "cls") -> SentenceTask:
    """A GLUE task reading `data`/train.tsv and its dev files (the GLUE download script's layout)."""
    spec = GLUE[name]
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"--data {root} is not a directory; pass the task's GLUE folder (e.g. glue/{GLUE_DIRS[name]})")
    files = {split: root / f"{split}.tsv" for split in ("train", *spec.eval_splits)}
    missing = [p.name for s, p in files.items() if s != "train" and not p.is_file()]
    if missing:
        raise UserError(f"{root} has no {', '.join(missing)}; pass the task's GLUE folder "
                        f"(e.g. glue/{GLUE_DIRS[name]}) with train.tsv and {', '.join(f'{s}.tsv' for s in spec.eval_splits)}")
    return SentenceTask(name, files, spec.table, spec.labels, spec.metric, spec.scorers, spec.eval_splits, pooling)


def user_task(kind: str, train: str | None, dev: str, text_column: str, label_column: str,
              pair_column: str | None = None, labels: list[str] | None = None, pooling: str = "cls") -> SentenceTask:
    """`--task classify|regress` on the user's TSV/CSV/JSONL files (columns named in the header).

    Class names come from `labels` or, sorted, from the training file (else the dev file).
    """
    table = TableSpec(text_column, label_column, pair_column)
    files = {"dev": Path(dev).expanduser()}
    if train:
        files["train"] = Path(train).expanduser()
    if kind == "regress":
        return SentenceTask("regress", files, table, None, "pearson", ("pearson", "spearman"), pooling=pooling)
    if labels is None:
        source = files.get("train", files["dev"])
        labels = sorted({e.label for e in read_table(source, table, regression=False)})
    if len(labels) < 2:
        raise UserError(f"classification needs at least two labels; {labels} found in column {label_column!r}")
    scorers = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
    return SentenceTask("classify", files, table, tuple(labels), "accuracy", scorers, pooling=pooling)
