"""SQuAD v1.1 / v2.0 extractive question answering (Rajpurkar et al. 2016, 2018; BERT section 4.2-4.3).

Inputs are `[CLS] question [SEP] context-window [SEP]` with sliding windows over long contexts; the
head scores every token as the answer's start and end; an example's answer is the best n-best span
over all its windows, cut from the context by the tokens' character offsets. In v2.0 the score of
the [CLS] span is the "no answer" score: predict "" when it beats the best span by `null_threshold`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from .base import SpecialIds, Task
from .configs import SquadConfig  # noqa: F401 (re-exported)
from .records import BadRows, read_text
from .metrics import squad_scores

EXPECTED = ('{"data": [{"paragraphs": [{"context": str, "qas": [{"id": str, "question": str, '
            '"answers": [{"text": str, "answer_start": int}], "is_impossible": bool (v2.0 only)}]}]}]}')


@dataclass(frozen=True)
class SquadExample:
    """One question; `answers` are (text, character start in `context`), empty when impossible."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool = False


def read_squad(path: str | Path, skip_bad_rows: bool = False, answers: bool = True) -> list[SquadExample]:
    """The questions of a SQuAD v1.1 or v2.0 JSON file, in file order; with `answers=False` (questions
    to answer, `unimask predict`) answers are neither needed nor read.

    A question is refused (one-line error naming its id; or, with `skip_bad_rows`, dropped and
    counted in a warning) when its id repeats an earlier one (predictions are keyed by id), its
    question or context is not a string, it has no answer without being marked `is_impossible`, or an
    answer's `answer_start` is not an integer inside the context at which the answer's text begins.
    A file not shaped like SQuAD is a one-line error."""
    text = read_text(path, "SQuAD file")
    path = Path(path).expanduser()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); pass a SQuAD v1.1/v2.0 JSON file") from None
    try:
        questions = [(qa, paragraph["context"])
                     for article in data["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
        if not all(isinstance(qa, dict) for qa, _ in questions):
            raise TypeError("every entry of qas must be an object")
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} is not in SQuAD format (problem: {type(e).__name__} {e}); "
                        f"expected {EXPECTED}") from None
    if not questions:
        raise UserError(f"{path} holds no questions; pass a SQuAD file with data")
    bad, seen, examples = BadRows(path, skip_bad_rows), set(), []
    for number, (qa, context) in enumerate(questions, 1):
        where = f"question {number} (id {qa.get('id')!r})"
        problem = _problem(qa, context, seen, answers)
        if problem:
            bad.add(where, problem)
            continue
        seen.add(str(qa["id"]))
        impossible = bool(qa.get("is_impossible", False))
        gold = () if impossible or not answers else tuple((a["text"], a["answer_start"]) for a in qa["answers"])
        examples.append(SquadExample(str(qa["id"]), qa["question"], context, gold, impossible))
    bad.close(len(questions), "questions")
    return examples


def _problem(qa: dict, context: Any, seen: set[str], answers_needed: bool = True) -> str | None:
    """What makes one question unusable, or None."""
    if qa.get("id") is None:
        return "it has no id"
    if str(qa["id"]) in seen:
        return "its id repeats an earlier question's"
    if not isinstance(context, str):
        return "its paragraph's context is not a string"
    if not isinstance(qa.get("question"), str):
        return "'question' is missing or not a string"
    if qa.get("is_impossible", False) or not answers_needed:
        return None
    answers = qa.get("answers")
    if not isinstance(answers, list) or not answers:
        return "it has no answers and is not marked is_impossible"
    for a in answers:
        if not (isinstance(a, dict) and isinstance(a.get("text"), str) and a["text"]):
            return "an answer has no text"
        start = a.get("answer_start")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(context):
            return f"answer_start {start!r} is not a character offset inside the context"
        if context[start:start + len(a["text"])] != a["text"]:
            return (f"answer {a['text'][:30]!r} is not at answer_start {start} "
                    f"(the context there reads {context[start:start + len(a['text'])][:30]!r})")
    return None


class SquadTask(Task):
    """SQuAD v1.1/v2.0: span extraction scored by the official EM/F1 (best epoch by F1)."""

    name: ClassVar[str] = "squad"
    metric: ClassVar[str] = "f1"

    def __init__(self, train: str | Path | None = None, dev: str | Path | None = None, *,
                 config: SquadConfig | None = None, **settings: Any) -> None:
        """`config`, or its fields as keywords (SquadConfig: `doc_stride` = tokens between the starts of
        consecutive windows; `version` "auto" = v2.0 when the scored split has impossible questions)."""
        config = config or SquadConfig(**settings)
        self.config = config
        self.paths = {"train": train, "dev": dev}
        self.max_query_length, self.doc_stride = config.max_query_length, config.doc_stride
        self.n_best, self.max_answer_length = config.n_best, config.max_answer_length
        self.null_threshold, self.version = config.null_threshold, config.version
        self.skip_bad_rows = config.skip_bad_rows
        self._cache: dict[str, list[SquadExample]] = {}

    def examples(self, split: str) -> list[SquadExample]:
        if self.paths.get(split) is None:
            raise UserError(f"no SQuAD {split} file was given; pass the path of its JSON file")
        if split not in self._cache:
            self._cache[split] = read_squad(self.paths[split], self.skip_bad_rows)
        return self._cache[split]

    def featurize(self, examples: list[SquadExample], tokenizer: Tokenizer, special: SpecialIds,
                  max_length: int) -> list[dict[str, Any]]:
        """One feature per window; start/end_position index the first gold answer's tokens, or 0
        ([CLS]) when the window does not hold all of it or the question is impossible."""
        if tokenizer.truncation or tokenizer.padding:  # a copy without them: windows need every token
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.no_truncation()
            tokenizer.no_padding()
        contexts = list(dict.fromkeys(ex.context for ex in examples))
        encoded = dict(zip(contexts, tokenizer.encode_batch(contexts, add_special_tokens=False)))
        questions = tokenizer.encode_batch([ex.question for ex in examples], add_special_tokens=False)
        features = []
        for index, (ex, question) in enumerate(zip(examples, questions)):
            q_ids = question.ids[: self.max_query_length]
            room = max_length - len(q_ids) - 3  # context tokens per window
            if room < 1:
                raise UserError(f"max_length {max_length} leaves no room for the context after a "
                                f"{len(q_ids)}-token question; raise it or lower max_query_length")
            ids, offsets = encoded[ex.context].ids, encoded[ex.context].offsets
            gold = _token_span(offsets, *ex.answers[0]) if ex.answers else None
            prefix = [special.cls, *q_ids, special.sep]
            for start in _window_starts(len(ids), room, self.doc_stride):
                end = min(start + room, len(ids))  # window = context tokens [start, end)
                position = (0, 0)
                if gold is not None and start <= gold[0] and gold[1] < end:
                    position = (gold[0] - start + len(prefix), gold[1] - start + len(prefix))
                features.append({
                    "input_ids": prefix + ids[start:end] + [special.sep],
                    "token_type_ids": [0] * len(prefix) + [1] * (end - start + 1),
                    "example": index,
                    "start_position": position[0],
                    "end_position": position[1],
                    "_offsets": [None] * len(prefix) + list(offsets[start:end]) + [None],
                })
        return features

    def head(self, encoder: nn.Module, dropout: float) -> nn.Module:
        """Start/end logits from each hidden state; no dropout on top, as BERT's run_squad."""
        head = nn.Linear(encoder.config.hidden_size, 2)
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    def _logits(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = head(hidden).float()  # (B, T, 2)
        # padding never wins a softmax, so results do not depend on how the loop pads
        logits = logits.masked_fill(~batch["attention_mask"].bool()[..., None], torch.finfo(logits.dtype).min)
        return logits[..., 0], logits[..., 1]  # (B, T) each

    def loss(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        start, end = self._logits(head, hidden, batch)  # (B, T)
        loss = (F.cross_entropy(start, batch["start_position"], reduction="sum")
                + F.cross_entropy(end, batch["end_position"], reduction="sum")) / 2
        return loss, torch.tensor(start.shape[0], device=loss.device)

    def predict(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self._logits(head, hidden, batch)  # (B, T) start, (B, T) end

    def options(self) -> dict[str, Any]:
        """Window and decoding settings, and "version": "2.0" when the training data had unanswerable
        questions (`unimask predict` then answers "" above the null threshold)."""
        trained_v2 = self.is_v2(self._cache["train"]) if "train" in self._cache else self.version == "2.0"
        return {**asdict(self.config), "version": "2.0" if trained_v2 else "1.1"}

    def is_v2(self, examples: list[SquadExample]) -> bool:
        """Whether `examples` are scored as v2.0 (null answers allowed, HasAns/NoAns reported)."""
        return self.version == "2.0" or (self.version == "auto" and any(ex.is_impossible for ex in examples))

    def score(self, examples: list[SquadExample], features: list[dict[str, Any]],
              outputs: tuple[Tensor, Tensor]) -> dict[str, float]:
        v2 = self.is_v2(examples)
        predictions = decode_answers(examples, features, outputs[0], outputs[1], n_best=self.n_best,
                                     max_answer_length=self.max_answer_length,
                                     null_threshold=self.null_threshold if v2 else None)
        return squad_scores(predictions, examples, v2=v2)


def _window_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """Starts of windows of `room` tokens, `stride` apart (never leaving a gap), covering all tokens."""
    starts = [0]
    while starts[-1] + room < n_tokens:
        starts.append(starts[-1] + min(room, stride))
    return starts


def _token_span(offsets: list[tuple[int, int]], text: str, char_start: int) -> tuple[int, int] | None:
    """First and last context token overlapping the answer's characters, or None if none does."""
    char_end = char_start + len(text)
    inside = [i for i, (a, b) in enumerate(offsets) if a < char_end and b > char_start]
    return (inside[0], inside[-1]) if inside else None


def decode_answers(examples: list[SquadExample], features: list[dict[str, Any]],
                   start_logits: Tensor | np.ndarray, end_logits: Tensor | np.ndarray, *,
                   n_best: int = 20, max_answer_length: int = 30,
                   null_threshold: float | None = None) -> dict[str, str]:
    """{example id: answer text} from per-feature logits (row i = feature i; only each feature's
    first len(input_ids) columns are read). A span is a (start <= end) pair of context tokens among
    each window's `n_best` best starts and ends, at most `max_answer_length` tokens long, scored
    start + end logit; the best over all windows of an example wins. `null_threshold` (v2.0): answer
    "" when the null score (min over windows of start[0] + end[0]) minus the best span's exceeds it.
    """
    starts, ends = _rows(start_logits), _rows(end_logits)
    best: list[tuple[float, str]] = [(-np.inf, "")] * len(examples)  # (score, text) per example
    null = [np.inf] * len(examples)
    for i, feature in enumerate(features):
        e, offsets = feature["example"], feature["_offsets"]
        n = len(feature["input_ids"])
        s_row, e_row = starts[i][:n], ends[i][:n]  # (n,)
        null[e] = min(null[e], float(s_row[0] + e_row[0]))
        context = np.array([o is not None for o in offsets])  # (n,) which tokens are context
        top_s = np.argsort(-s_row, kind="stable")[:n_best]
        top_e = np.argsort(-e_row, kind="stable")[:n_best]
        top_s, top_e = top_s[context[top_s]], top_e[context[top_e]]
        if not len(top_s) or not len(top_e):
            continue
        length = top_e[None, :] - top_s[:, None] + 1  # (S, E) span lengths in tokens
        scores = np.where((length >= 1) & (length <= max_answer_length),
                          s_row[top_s][:, None] + e_row[top_e][None, :], -np.inf)  # (S, E)
        a, b = np.unravel_index(np.argmax(scores), scores.shape)
        if scores[a, b] > best[e][0]:
            start, end = offsets[top_s[a]][0], offsets[top_e[b]][1]
            best[e] = (float(scores[a, b]), examples[e].context[start:end])
    answers = {}
    for e, ex in enumerate(examples):
        score, text = best[e]
        if null_threshold is not None and null[e] - score > null_threshold:
            text = ""
        answers[ex.id] = text
    return answers


def _rows(logits: Tensor | np.ndarray | list) -> list[np.ndarray]:
    """Per-feature 1-D float arrays from an (N, T) tensor/array or a list of 1-D rows."""
    if isinstance(logits, Tensor):
        logits = logits.detach().float().cpu().numpy()
    if isinstance(logits, np.ndarray):
        return list(logits.astype(np.float64))  # (N, T) -> N rows of (T,)
    return [np.asarray(r.detach().float().cpu() if isinstance(r, Tensor) else r, dtype=np.float64)
            for r in logits]


# ---- the commands' entry points (tasks/__init__.py TASKS) ----------------------------------------

def build(name: str, config: SquadConfig, args: Any) -> SquadTask:
    """`unimask finetune --task squad --train FILE --dev FILE`."""
    if not (args.train and args.dev):
        raise UserError("--task squad needs --train and --dev, SQuAD v1.1 or v2.0 JSON files")
    return SquadTask(train=args.train, dev=args.dev, config=config)


def load(name: str, meta: dict[str, Any]) -> SquadTask:
    """The task of a fine-tuned model (finetune.json), without data files."""
    known = {f.name for f in fields(SquadConfig)}
    return SquadTask(config=SquadConfig(**{k: v for k, v in (meta.get("task_options") or {}).items() if k in known}))
