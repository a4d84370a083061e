"""What each fine-tuning task is and how the task commands are set up, without torch.

The Config dataclasses of the tasks (their fields become the `unimask finetune` / `predict` / `probe` /
`generate` flags, tasks/options.py), the fine-tuning loop's and the probe's, and GLUE's file layouts.
They live here, apart from the code that uses them, so that building those commands' parsers (and
`--help`) imports no torch; each task module re-exports its own (`glue.SentenceConfig`, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UserError
from ..runtime import PRECISIONS


def _refuse_failed(checks: list[tuple[bool, str]], what: str) -> None:
    """A one-line UserError naming the first (condition, message) pair whose condition is false."""
    failed = next((message for ok, message in checks if not ok), None)
    if failed is not None:
        raise UserError(f"{what}: {failed}")


# ---- sentence tasks (tasks/glue.py) --------------------------------------------------------------

POOLINGS = ("cls", "mean")
"""What the sentence head reads: [CLS]'s hidden state (BERT) or the mean over the real (non-pad) tokens."""


@dataclass(frozen=True)
class TableSpec:
    """Where a task's fields are in its files: a header name, or a column index for header-less files."""

    text: str | int
    label: str | int
    pair: str | int | None = None
    header: bool = True


@dataclass
class SentenceConfig:
    """Sentence-task settings (the `unimask finetune` flags are these fields). GLUE tasks read their
    standard columns; `classify` / `regress` name them."""

    text_column: str | None = field(default=None, metadata={
        "help": "classify / regress: the text column (header name or JSONL key)", "predict": True})
    text_pair_column: str | None = field(default=None, metadata={
        "help": "classify / regress: the second text of a pair, if any", "predict": True})
    label_column: str | None = field(default=None, metadata={"help": "classify / regress: the label column"})
    labels: tuple[str, ...] | None = field(default=None, metadata={
        "help": "classify: comma-separated class names (default: those in the training file)"})
    pooling: str = field(default="cls", metadata={
        "choices": POOLINGS,
        "help": "GLUE / classify / regress: the head reads [CLS]'s hidden state (BERT) or the mean over real tokens"})
    skip_bad_rows: bool = field(default=False, metadata={
        "help": "drop (and count in a warning) rows with a missing, null or invalid value, instead of refusing the file"})

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UserError(f"--pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.labels is not None:
            self.labels = tuple(str(label).strip() for label in self.labels)
            if len(set(self.labels)) != len(self.labels) or not all(self.labels):
                raise UserError(f"--labels {','.join(self.labels)} names a class twice or an empty class; list each once")


@dataclass(frozen=True)
class GlueSpec:
    table: TableSpec
    labels: tuple[str, ...] | None      # None: regression
    metric: str                          # the selection metric
    scorers: tuple[str, ...]             # keys of SCORERS reported
    eval_splits: tuple[str, ...] = ("dev",)


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


# ---- SQuAD (tasks/squad.py) ---------------------------------------------------------------------

@dataclass
class SquadConfig:
    """SQuAD settings (the `unimask finetune` flags are these fields; BERT's run_squad defaults)."""

    doc_stride: int = field(default=128, metadata={"help": "squad: tokens between the starts of consecutive windows"})
    max_query_length: int = field(default=64, metadata={"help": "squad: question tokens kept"})
    n_best: int = field(default=20, metadata={"help": "squad: best starts and ends combined into spans"})
    max_answer_length: int = field(default=30, metadata={"help": "squad: longest answer in tokens"})
    null_threshold: float = field(default=0.0, metadata={
        "help": "squad v2.0: answer \"\" when the null score beats the best span by this", "predict": True})
    version: str = field(default="auto", metadata={
        "choices": ("auto", "1.1", "2.0"), "help": "squad: 2.0 allows unanswerable questions (auto: when the data has some)"})
    skip_bad_rows: bool = field(default=False, metadata={
        "help": "drop (and count in a warning) rows with a missing, null or invalid value, instead of refusing the file"})

    def __post_init__(self) -> None:
        if self.version not in ("auto", "1.1", "2.0"):
            raise UserError(f"unknown SQuAD version {self.version!r}; use auto, 1.1 or 2.0")
        if min(self.max_query_length, self.doc_stride, self.n_best, self.max_answer_length) < 1:
            raise UserError("max_query_length, doc_stride, n_best and max_answer_length must be positive")


# ---- seq2seq (tasks/seq2seq.py, tasks/decoding.py) ----------------------------------------------

@dataclass
class GenerationConfig:
    """Beam search settings (fine-tuning flags in brackets)."""

    beam_size: int = field(default=5, metadata={"flag": "--beam", "predict": True, "help": "beam size (1 = greedy)"})
    length_penalty: float = field(default=1.0, metadata={   # alpha in score / length ** alpha; 0 = raw log-prob
        "predict": True, "help": "beam score = log-prob / length ** this"})
    blocked_ngram_size: int = field(default=3, metadata={   # no n-gram of this size twice in an output
        "flag": "--no-repeat-ngram", "predict": True, "help": "block repeated n-grams of this size (0: off)"})
    min_length: int = field(default=1, metadata={"predict": True, "help": "fewest generated tokens before [SEP]"})
    max_length: int = field(default=0, metadata={           # then [SEP] is forced; 0 = the task's target budget
        "flag": "--max-new-tokens", "dest": "max_new_tokens", "deprecated_flags": ("--max-gen-length",),
        "predict": True, "help": "most generated tokens before [SEP] (0: --max-target-length - 1)"})
    kv_cache: bool = field(default=True, metadata={"cli": False})   # reuse keys/values (False: recompute)

    def __post_init__(self) -> None:
        checks = [
            (self.beam_size >= 1, "beam size must be at least 1"),
            (self.length_penalty >= 0, "length penalty must be >= 0"),
            (self.blocked_ngram_size >= 0, "the blocked n-gram size must be >= 0 (0 = off)"),
            (self.min_length >= 0 and self.max_length >= 0, "min and max length must be >= 0"),
            (self.max_length == 0 or self.max_length >= self.min_length, "max length must be >= min length"),
        ]
        _refuse_failed(checks, "generation")


@dataclass
class Seq2SeqConfig:
    """Seq2seq fine-tuning settings (the `unimask finetune` flags are these fields)."""

    target_mask_prob: float = field(default=0.7, metadata={
        "help": "probability that a target token is replaced in the true-token stream (s2s-ft: 0.4-0.8)"})
    pseudo_keep_prob: float = field(default=0.1, metadata={
        "help": "a target's substitute (its pseudo token, and its true-stream slot when replaced) is itself"})
    pseudo_random_prob: float = field(default=0.1, metadata={"help": "... or a random token; else [MASK]"})
    max_source_length: int = field(default=0, metadata={
        "help": "tokens of [CLS] source [SEP] (0: --max-length minus --max-target-length)"})
    max_target_length: int = field(default=48, metadata={"help": "tokens of target [SEP]"})
    max_eval_examples: int = field(default=0, metadata={"help": "decode only the first N dev examples (0: all)"})
    skip_bad_rows: bool = False
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if isinstance(self.generation, dict):      # read back from finetune.json
            self.generation = GenerationConfig(**self.generation)
        if not 0 <= self.target_mask_prob <= 1:
            raise UserError(f"target_mask_prob must be in [0, 1], not {self.target_mask_prob}")
        if (min(self.pseudo_keep_prob, self.pseudo_random_prob) < 0
                or self.pseudo_keep_prob + self.pseudo_random_prob > 1):
            raise UserError("pseudo_keep_prob and pseudo_random_prob must be >= 0 and sum to at most 1")
        if self.max_target_length < 2 or self.max_source_length < 0 or self.max_eval_examples < 0:
            raise UserError("max_target_length must be >= 2; max_source_length and max_eval_examples >= 0")
        if self.max_source_length and self.max_source_length < 3:
            raise UserError("max_source_length must be >= 3 ([CLS], a token, [SEP])")


# ---- the fine-tuning loop (tasks/finetune.py) and the probe (tasks/probe.py) --------------------

DEFAULT_MAX_LENGTH = {"squad": 384}
"""finetune --max-length where the task needs more than FinetuneConfig.max_length."""


@dataclass
class FinetuneConfig:
    lrs: tuple[float, ...] = (1e-4,)
    seeds: tuple[int, ...] = (1,)
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    layer_decay: float = 1.0          # lr of layer l = lr * layer_decay ** (depth above l); 1 = off
    dropout: float = 0.1              # the head's dropout
    encoder_dropout: float = 0.1      # the encoder's hidden and attention dropout while fine-tuning, whatever
                                      # pretraining used (BERT's 0.1; Geiping & Goldstein 2022 pretrain without)
    clip_norm: float = 1.0
    eval_every: int = 0               # optimizer steps between evaluations; 0 = once per epoch
    patience: int = 0                 # evaluations without improvement before stopping; 0 = never stop early
    max_train_examples: int = 0       # 0 = all
    precision: str = "auto"           # auto | fp32 | bf16
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (all(lr > 0 for lr in self.lrs) and len(self.lrs) > 0, "lrs must be positive"),
            (len(self.seeds) > 0, "give at least one seed"),
            (self.epochs > 0, "epochs must be positive"),
            (self.batch_size > 0 and self.eval_batch_size > 0, "batch sizes must be positive"),
            (self.max_length >= 8, "max_length must be at least 8"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (0 < self.layer_decay <= 1, "layer_decay must be in (0, 1]"),
            (0 <= self.dropout < 1 and 0 <= self.encoder_dropout < 1, "dropout and encoder_dropout must be in [0, 1)"),
            (self.eval_every >= 0 and self.patience >= 0 and self.max_train_examples >= 0,
             "eval_every, patience and max_train_examples must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        _refuse_failed(checks, "fine-tuning config")


@dataclass
class ProbeConfig:
    """Probe settings; each field is a `unimask probe` flag (tasks/options.py)."""

    max_train_examples: int = field(default=8000, metadata={"help": "probe on the first N training texts (0: all)"})
    max_length: int = field(default=128, metadata={"help": "tokens per input; longer texts are truncated"})
    batch_size: int = field(default=64, metadata={"help": "texts per encoder batch (in length order)"})
    seed: int = field(default=1, metadata={"help": "the held-out split (and --random-init weights)"})
    holdout_fraction: float = field(default=0.2, metadata={
        "help": "fraction of the training texts held out to choose C"})
    c_grid: tuple[float, ...] = field(default=(0.01, 0.1, 1.0, 10.0, 100.0), metadata={
        "help": "inverse L2 strengths of the logistic regression to choose from"})
    max_iter: int = field(default=1000, metadata={"help": "lbfgs iterations per fit"})
    precision: str = field(default="auto", metadata={"choices": PRECISIONS, "help": "the encoder's precision"})
    device: str = field(default="auto", metadata={"help": "the encoder's device (auto, cpu, cuda, cuda:N)"})

    def __post_init__(self) -> None:
        try:
            self.c_grid = tuple(sorted({float(c) for c in self.c_grid}))
        except (TypeError, ValueError):
            raise UserError(f"--c-grid {','.join(map(str, self.c_grid))}: give numbers, e.g. --c-grid 0.1,1,10") from None
        checks = [
            (self.max_train_examples >= 0, "max_train_examples must be >= 0 (0: all)"),
            (self.max_length >= 8, "max_length must be at least 8"),
            (self.batch_size > 0, "batch_size must be positive"),
            (0 < self.holdout_fraction < 1, "holdout_fraction must be in (0, 1)"),
            (len(self.c_grid) > 0 and all(math.isfinite(c) and c > 0 for c in self.c_grid),
             "the C grid needs positive, finite values"),
            (self.max_iter > 0, "max_iter must be positive"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        _refuse_failed(checks, "probe config")
