"""Sentence and sentence-pair classification / regression: the GLUE tasks and the user's own files.

GLUE (Wang et al. 2019) files are read in the layout of the GLUE download script: `train.tsv`,
`dev.tsv` (MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`), tab-separated without quoting, with a
header row except CoLA. Metrics are the official ones: Matthews correlation for CoLA, accuracy and
F1 for MRPC and QQP, Pearson and Spearman for STS-B, accuracy elsewhere.

The head is BERT's: the [CLS] state -> dense -> tanh (the pooler) -> dropout -> linear; cross-entropy
for classification, mean squared error for regression (one output).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from . import metrics, records
from .base import SpecialIds, Task
from .configs import GLUE, GLUE_DIRS, POOLINGS, SentenceConfig, TableSpec  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: Any          # class name (str) or a float target


SCORERS: dict[str, Callable[[list, list], float]] = {
    "accuracy": metrics.accuracy,
    "f1": metrics.f1,
    "mcc": metrics.matthews,
    "pearson": metrics.pearson,
    "spearman": metrics.spearman,
}

def read_examples(path: str | Path, table: TableSpec, regression: bool, skip_bad_rows: bool = False) -> list[Example]:
    """Examples from a TSV/CSV/JSONL file (tasks/records.py's rules). A row with a missing, null or
    empty text or label, a label that is not a finite number for regression, or (TSV/CSV) more or
    fewer fields than the header is refused with a one-line error, or skipped and counted in a
    warning with `skip_bad_rows`."""
    data = records.read_table(path, table.header)
    path = data.path
    if not data.records:
        raise UserError(f"{path} has no data rows{' under its header' if table.header else ''}; add labelled examples")
    fields = {"text": data.column(table.text), "label": data.column(table.label)}
    if table.pair is not None:
        fields["pair"] = data.column(table.pair)
    names = {"text": table.text, "label": table.label, "pair": table.pair}
    width = data.width()
    if width is not None and max(fields.values()) >= width:
        raise UserError(f"{path}: column {max(fields.values())} does not exist in rows of {width} fields; "
                        "check the file format (TSV, CSV or JSONL)")
    bad = records.BadRows(path, skip_bad_rows)
    examples = []
    for line, row in data.records:
        if width is not None and len(row) != width:
            bad.add(f"line {line}", f"{len(row)} fields where {'the header has' if data.header else 'the first row has'} "
                                    f"{width} (a stray tab or comma?)")
            continue
        raw = {key: data.value(row, column) for key, column in fields.items()}
        values = {key: records.as_text(raw[key]) for key in ("text", "pair") if key in raw}
        values["label"] = records.as_number(raw["label"]) if regression else records.as_label(raw["label"])
        wrong = [key for key, v in values.items() if v is None]
        if wrong:
            key = wrong[0]
            problem = records.describe(raw[key], str(names[key]))
            if key == "label" and regression and records.as_label(raw[key]) is not None:
                problem += ", not a finite number (a regression task needs numeric labels)"
            bad.add(f"line {line}", problem)
            continue
        examples.append(Example(values["text"], values.get("pair"), values["label"]))
    bad.close(len(data.records))
    return examples


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
                 pooling: str = "cls", skip_bad_rows: bool = False) -> None:
        """`skip_bad_rows`: drop (and count in a warning) rows with a missing or invalid value
        instead of refusing the file (see `read_examples`)."""
        if pooling not in POOLINGS:
            raise UserError(f"--pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.name, self.files, self.table, self.metric = name, files, table, metric
        self.labels, self.scorers, self.eval_splits, self.pooling = labels, scorers, eval_splits, pooling
        self.skip_bad_rows = skip_bad_rows
        self.labels_from: str | None = None     # the split whose classes became `labels`, if inferred
        self._cache: dict[str, list[Example]] = {}

    @property
    def regression(self) -> bool:
        return self.labels is None

    def examples(self, split: str) -> list[Example]:
        if split not in self._cache:
            if split not in self.files:
                raise UserError(f"task {self.name} has no {split} file; pass one")
            examples = read_examples(self.files[split], self.table, self.regression, self.skip_bad_rows)
            self._cache[split] = self._check_labels(split, examples)
        return self._cache[split]

    def _check_labels(self, split: str, examples: list[Example]) -> list[Example]:
        if self.labels is not None:
            unknown = sorted({e.label for e in examples} - set(self.labels))
            if unknown:
                origin = (f"the classes of {self.files[self.labels_from]}; pass --labels to name every class"
                          if self.labels_from and self.labels_from != split else "check the label column")
                raise UserError(f"{self.files[split]} has labels {unknown[:5]} that are not among "
                                f"{list(self.labels)} ({origin})")
        return examples

    def infer_labels(self, split: str) -> None:
        """Take the sorted classes of `split`'s file as the label set (read once, kept)."""
        examples = read_examples(self.files[split], self.table, regression=False, skip_bad_rows=self.skip_bad_rows)
        self.labels, self.labels_from = tuple(sorted({e.label for e in examples})), split
        self._cache[split] = examples

    def options(self) -> dict[str, Any]:
        """The pooling, and the columns the model was trained on (`unimask predict` reads them)."""
        return {"pooling": self.pooling, "text_column": self.table.text, "text_pair_column": self.table.pair,
                "label_column": self.table.label, "skip_bad_rows": self.skip_bad_rows}

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
            feature = {"input_ids": ids, "token_type_ids": types, "example": i}
            if e.label is not None:    # unlabelled examples (prediction) carry no label
                feature["label"] = float(e.label) if self.regression else self.labels.index(e.label)
            features.append(feature)
        return features

    def head(self, encoder: nn.Module, dropout: float) -> nn.Module:
        return ClassificationHead(encoder.config.hidden_size, 1 if self.regression else len(self.labels), dropout,
                                  self.pooling)

    def init_head(self, head: nn.Module, heads: dict[str, dict[str, Tensor]]) -> list[str]:
        """[CLS] pooling starts its dense layer from a BERT checkpoint's pretrained pooler, as
        `BertForSequenceClassification` does; mean pooling and other checkpoints start fresh."""
        if self.pooling == "cls" and "pooler" in heads:
            head.dense.load_state_dict(heads["pooler"])
            return ["pooler"]
        return []

    def loss(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        out = head(hidden, batch["attention_mask"]).float()                        # (B, C)
        if self.regression:
            loss = F.mse_loss(out[:, 0], batch["label"].float(), reduction="sum")
        else:
            loss = F.cross_entropy(out, batch["label"], reduction="sum")
        return loss, torch.tensor(out.shape[0], device=out.device)

    def predict(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Regression: (B,) predicted targets; classification: (B, C) logits."""
        out = head(hidden, batch["attention_mask"]).float()
        return out[:, 0] if self.regression else out

    def score(self, examples: list[Example], features: list[dict[str, Any]], outputs: Tensor) -> dict[str, float]:
        pred = (outputs if self.regression else outputs.argmax(-1)).tolist()
        return self._scores(features, pred)

    def _scores(self, features: list[dict[str, Any]], pred: list) -> dict[str, float]:
        gold = [f["label"] for f in features]
        return {name: SCORERS[name](gold, pred) for name in self.scorers}

    def baseline(self, train_features: list[dict[str, Any]], features: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Classification: the scores of always answering the most frequent training class (ties: the first)."""
        if self.regression or not train_features or not features:
            return None
        counts = Counter(f["label"] for f in train_features)
        majority = max(sorted(counts), key=counts.__getitem__)
        return {"class": self.labels[majority], **self._scores(features, [majority] * len(features))}

    def metric_notes(self) -> dict[str, str]:
        """F1 scores the second class (GLUE's "1"; `--labels A,B` makes B the positive class)."""
        if "f1" in self.scorers and not self.regression:
            return {"f1": f"F1 of the positive class {self.labels[1]!r} (the second class; --labels orders them)"}
        return {}


def glue_task(name: str, data: str | Path, pooling: str = "cls", skip_bad_rows: bool = False) -> SentenceTask:
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
    return SentenceTask(name, files, spec.table, spec.labels, spec.metric, spec.scorers, spec.eval_splits, pooling,
                        skip_bad_rows)


def user_task(kind: str, train: str | None, dev: str, text_column: str, label_column: str,
              pair_column: str | None = None, labels: list[str] | None = None, pooling: str = "cls",
              skip_bad_rows: bool = False) -> SentenceTask:
    """`--task classify|regress` on the user's TSV/CSV/JSONL files (columns named in the header).

    Class names come from `labels` or, sorted, from the training file (else the dev file).
    """
    table = TableSpec(text_column, label_column, pair_column)
    files = {"dev": Path(dev).expanduser()}
    if train:
        files["train"] = Path(train).expanduser()
    if kind == "regress":
        return SentenceTask("regress", files, table, None, "pearson", ("pearson", "spearman"), pooling=pooling,
                            skip_bad_rows=skip_bad_rows)
    if labels is not None:
        labels = list(SentenceConfig(labels=tuple(labels)).labels)
    task = SentenceTask("classify", files, table, tuple(labels or ()), "accuracy", ("accuracy",), pooling=pooling,
                        skip_bad_rows=skip_bad_rows)
    if labels is None:
        task.infer_labels("train" if "train" in files else "dev")
    if len(task.labels) < 2:
        raise UserError(f"classification needs at least two labels; {list(task.labels)} found in column {label_column!r}")
    task.scorers = ("accuracy", "f1") if len(task.labels) == 2 else ("accuracy",)
    return task


# ---- the commands' entry points (tasks/__init__.py TASKS) ----------------------------------------

def build(name: str, config: SentenceConfig, args: Any) -> SentenceTask:
    """`unimask finetune --task NAME`: a GLUE task from its folder (--data), or classify / regress from
    the user's --train / --dev files and the config's columns."""
    if name in GLUE:
        named = [flag for flag, value in (("--text-column", config.text_column), ("--label-column", config.label_column),
                                          ("--text-pair-column", config.text_pair_column), ("--labels", config.labels))
                 if value is not None]
        if named:
            raise UserError(f"--task {name} reads GLUE's own columns and classes; drop {', '.join(named)} "
                            "(they are for --task classify / regress)")
        if not getattr(args, "data", None):
            raise UserError(f"--task {name} needs --data, the task's GLUE folder (e.g. glue/{GLUE_DIRS[name]})")
        return glue_task(name, args.data, config.pooling, config.skip_bad_rows)
    missing = [flag for flag, value in (("--train", args.train), ("--dev", args.dev),
                                        ("--text-column", config.text_column), ("--label-column", config.label_column))
               if not value]
    if missing:
        raise UserError(f"--task {name} needs {', '.join(missing)}")
    return user_task(name, args.train, args.dev, config.text_column, config.label_column, config.text_pair_column,
                     list(config.labels) if config.labels else None, config.pooling, config.skip_bad_rows)


def load(name: str, meta: dict[str, Any]) -> SentenceTask:
    """The task of a fine-tuned model (finetune.json), without data files."""
    options = meta.get("task_options") or {}
    pooling = options.get("pooling", "cls")
    if name in GLUE:
        spec = GLUE[name]
        return SentenceTask(name, {}, spec.table, spec.labels, spec.metric, spec.scorers, spec.eval_splits, pooling)
    labels = tuple(meta.get("labels") or ()) or None
    table = TableSpec(options.get("text_column"), options.get("label_column"), options.get("text_pair_column"))
    return SentenceTask(name, {}, table, labels, "accuracy" if labels else "pearson", (), pooling=pooling)
