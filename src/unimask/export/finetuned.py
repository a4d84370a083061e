"""`unimask export` of a fine-tuned model (the --out of `unimask finetune`): a transformers directory
whose pipelines give what `unimask predict` gives.

Native transformers classes where they hold the model (a BERT-shaped encoder, hf.check_bert_compatible):
- sentence tasks (GLUE, classify, regress) with [CLS] pooling -> `BertForSequenceClassification`:
  unimask's head is BERT's (pooled [CLS] -> dense -> tanh -> dropout -> linear), so it is a rename:
  head.dense -> bert.pooler.dense, head.out -> classifier. `id2label` / `label2id` are the fine-tuned
  classes; `problem_type` is "single_label_classification" or "regression" (one output, no sigmoid in
  `pipeline("text-classification")`);
- squad -> `BertForQuestionAnswering`: head (Linear(hidden, 2)) -> qa_outputs.
Otherwise remote code (export/remote.py, `trust_remote_code=True`): mean pooling ->
`UnimaskForSequenceClassification` with classifier_pooling "mean"; a pre-LN or relative-position
encoder -> `UnimaskForSequenceClassification` / `UnimaskForQuestionAnswering`. seq2seq is refused:
UniLM's pseudo-mask decoding is not a transformers generation API.

Every export also writes a model card, README.md (export/card.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import Tensor

from ..errors import UserError
from ..files import save_weights
from .card import finetuned_card
from .hf import ENCODER_TO_BERT, Exported, rename, to_bert_config, write_directory

CLASSIFIER_TO_BERT: tuple[tuple[str, str], ...] = (
    (r"dense\.(weight|bias)", r"bert.pooler.dense.\1"),
    (r"out\.(weight|bias)", r"classifier.\1"),
)
"""tasks/glue.py `ClassificationHead` names -> `BertForSequenceClassification` names."""

QA_TO_BERT: tuple[tuple[str, str], ...] = ((r"(weight|bias)", r"qa_outputs.\1"),)
"""tasks/squad.py head (a Linear(hidden, 2)) -> `BertForQuestionAnswering` names."""


def _sentence(ft, head_state: dict[str, Tensor], remote: bool) -> tuple[str, Callable[[Path], str]]:
    options = ft.meta.get("task_options") or {}
    labels = list(ft.task.labels or [])
    pooling = options.get("pooling", "cls")
    if remote or pooling != "cls":       # BertForSequenceClassification reads [CLS] only
        classifier = {"state": head_state, "labels": labels or None, "pooling": pooling}
        return "UnimaskForSequenceClassification", _remote(ft, classifier=classifier)
    extra = ({"num_labels": 1, "problem_type": "regression"} if not labels else
             {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)},
              "problem_type": "single_label_classification"})
    return "BertForSequenceClassification", _native(ft, "BertForSequenceClassification",
                                                    rename(head_state, CLASSIFIER_TO_BERT), extra)


def _squad(ft, head_state: dict[str, Tensor], remote: bool) -> tuple[str, Callable[[Path], str]]:
    if remote:
        return "UnimaskForQuestionAnswering", _remote(ft, qa_head_state=head_state)
    return "BertForQuestionAnswering", _native(ft, "BertForQuestionAnswering", rename(head_state, QA_TO_BERT), {})


def _seq2seq(ft, head_state: dict[str, Tensor], remote: bool) -> tuple[str, Callable[[Path], str]]:
    raise UserError("a seq2seq model decodes with UniLM's pseudo-mask layout, which no transformers class or "
                    "generate() implements; run it with `unimask predict` (or `unimask generate`)")


HEAD_WRITERS: dict[str, Callable] = {
    **{name: _sentence for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli",
                                    "classify", "regress")},
    "squad": _squad,
    "seq2seq": _seq2seq,
}
"""finetune.json "task" -> (architecture, a writer of config.json and the weights into a directory)."""


def _native(ft, architecture: str, head_tensors: dict[str, Tensor], extra: dict) -> Callable[[Path], str]:
    cfg = ft.encoder.config
    encoder_state = dict(ft.encoder.state_dict())
    if cfg.type_vocab_size == 0:           # BERT always has a token-type table: a zero one changes nothing
        encoder_state["embeddings.token_type.weight"] = encoder_state["embeddings.word.weight"].new_zeros(1, cfg.hidden_size)
    tensors = {**rename(encoder_state, ENCODER_TO_BERT, "bert."), **head_tensors}
    bert_config = to_bert_config(cfg, architectures=[architecture], **extra)

    def write(directory: Path) -> str:
        bert_config.to_json_file(directory / "config.json")
        save_weights(tensors, directory / "model.safetensors")
        return architecture
    return write


def _remote(ft, **head) -> Callable[[Path], str]:
    from .remote import write_remote_model
    return lambda directory: write_remote_model(directory, ft.encoder.config, ft.encoder.state_dict(), **head)


def export_finetuned(path: str | Path, out: str | Path, overwrite: bool = False) -> Exported:
    """Export the fine-tuned model in `path` (a `unimask finetune` --out or its best/) to `out`."""
    from ..checkpoint import load_finetuned

    ft = load_finetuned(path)
    from .remote import needs_remote_code
    architecture, write_model = HEAD_WRITERS[ft.meta["task"]](ft, ft.head.state_dict(),
                                                              needs_remote_code(ft.encoder.config))
    max_length = int(ft.meta.get("max_length", ft.encoder.config.max_positions))
    out = Path(out).expanduser().resolve()
    write_directory(out, overwrite, ft.tokenizer, ft.directory / "tokenizer.json", max_length, write_model,
                    finetuned_card(ft.meta, architecture))
    return Exported(ft.directory, architecture, out)
