"""The contract between fine-tuning tasks and the fine-tuning loop (ELECTRA's fine-tuning `Task`).

A task reads its examples, turns them into features (token ids plus whatever its loss needs), owns
the head it puts on the encoder's hidden states, and scores predictions with the official metric.
The loop (tasks/finetune.py) only batches features, runs encoder + head, and keeps the best epoch.

Features are plain dicts of python values so they can be cached, sliced and collated without the
task's help: "input_ids" and "token_type_ids" (lists of ints, [CLS] ... [SEP] already added) are
padded by `collate`; keys starting with "_" (offsets, ids) stay out of batches; every other key holds
one number or one fixed-length list per feature and is stacked as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..model.encoder import Encoder


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens a task needs to build its inputs."""

    pad: int
    cls: int
    sep: int
    unk: int = 1
    mask: int = 4
    vocab_size: int = 0     # the tokenizer's: random replacement tokens are drawn below it

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> "SpecialIds":
        """The ids of BERT's [PAD] [CLS] [SEP] [UNK] [MASK] or RoBERTa's <pad> <s> </s> <unk> <mask>
        (model/families.py), whichever set the tokenizer has whole."""
        from ..model.families import BERT_SPECIAL_TOKENS, ROBERTA_SPECIAL_TOKENS
        for names in (BERT_SPECIAL_TOKENS, ROBERTA_SPECIAL_TOKENS):
            ids = {role: tokenizer.token_to_id(token) for role, token in names.items()}
            if all(i is not None for i in ids.values()):
                return cls(**ids, vocab_size=tokenizer.get_vocab_size())
        from ..errors import UserError
        missing = [t for t in BERT_SPECIAL_TOKENS.values() if tokenizer.token_to_id(t) is None]
        raise UserError(f"the tokenizer has no {', '.join(missing)} token (nor RoBERTa's <s> </s> <pad> <unk> "
                        "<mask>); fine-tuning needs BERT's or RoBERTa's special tokens")


class Task:
    """Base class; subclasses set `name`, `metric` and implement the methods below."""

    name: ClassVar[str]
    metric: ClassVar[str]             # the key of `score` that selects the best epoch / learning rate
    eval_splits: tuple[str, ...] = ("dev",)
    pretrained_head: ClassVar[str | None] = None   # "lm": load the checkpoint's tied LMHead state into the head

    def init_head(self, head: nn.Module, heads: dict[str, dict[str, Tensor]]) -> list[str]:
        """Load what the pretrained checkpoint carries for this task's fresh `head` (`Pretrained.heads`:
        "lm", "rtd", "pooler" state dicts); returns the kinds loaded. Default: the whole head from
        `heads[pretrained_head]`."""
        if self.pretrained_head is not None and self.pretrained_head in heads:
            head.load_state_dict(heads[self.pretrained_head])
            return [self.pretrained_head]
        return []

    def baseline(self, train_features: list[dict[str, Any]], features: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The scores of a model that learned nothing from the inputs (classification: always the most
        frequent training class), to print beside the fine-tuned ones; None where there is none."""
        return None

    def metric_notes(self) -> dict[str, str]:
        """metric -> what a reader must know to read it (e.g. which class F1 takes as positive)."""
        return {}

    def options(self) -> dict[str, Any]:
        """Task settings saved with the fine-tuned weights (best/finetune.json "task_options"), for tools
        that use the model afterwards (`unimask generate` reads the seq2seq lengths and decoding)."""
        return {}

    def check_model(self, config: Any, max_length: int) -> None:
        """Raise a UserError when the task cannot run on a model of this EncoderConfig with inputs of
        `max_length` tokens; called before anything is written."""

    def examples(self, split: str) -> list[Any]:
        """The examples of `split` ("train" or one of `eval_splits`)."""
        raise NotImplementedError

    def featurize(self, examples: list[Any], tokenizer: Tokenizer, special: SpecialIds,
                  max_length: int) -> list[dict[str, Any]]:
        """Features for the encoder; each carries "example" (the index of its example)."""
        raise NotImplementedError

    def head(self, encoder: Encoder, dropout: float) -> nn.Module:
        """A fresh head for the encoder's hidden states (B, T, D). A head tied to the input embeddings
        must not register the encoder as a submodule (weights would be saved twice)."""
        raise NotImplementedError

    def inputs(self, batch: dict[str, Tensor], special: SpecialIds, config: Any,
               rng: torch.Generator | None = None) -> dict[str, Tensor]:
        """The model inputs of a collated batch (on its device), for a model of EncoderConfig `config`.
        Training passes the run's generator, and a task may draw from it (seq2seq corrupts its targets);
        evaluation and prediction pass None and get deterministic inputs. Default: the batch as it is,
        token types folded to 0 for a model with a single type (RoBERTa's type_vocab_size 1)."""
        if config.type_vocab_size < 2 and batch["token_type_ids"].any():
            batch = {**batch, "token_type_ids": torch.zeros_like(batch["token_type_ids"])}
        return batch

    def encode(self, encoder: Encoder, batch: dict[str, Tensor]) -> Tensor:
        """Hidden states (B, T, D) of a batch of `inputs`: input_ids, token_type_ids, attention_mask
        ((B, T) padding or (B, T, T) "may attend") and, when the task lays out its own, position_ids."""
        return encoder(batch["input_ids"], position_ids=batch.get("position_ids"),
                       token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"])

    def loss(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(summed loss, number of terms) for one batch; the loop divides."""
        raise NotImplementedError

    def predict(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> Tensor | tuple[Tensor, ...]:
        """Raw outputs for one batch (first dimension = batch); the loop concatenates them on the CPU."""
        raise NotImplementedError

    def score(self, examples: list[Any], features: list[dict[str, Any]],
              outputs: Tensor | tuple[Tensor, ...]) -> dict[str, float]:
        """Official metrics (in percent) from the concatenated outputs of every feature of a split."""
        raise NotImplementedError

    @torch.no_grad()
    def outputs(self, encoder: Encoder, head: nn.Module, features: list[dict[str, Any]], special: SpecialIds,
                batch_size: int, autocast: Callable, device: torch.device,
                progress: Callable[[int], None] | None = None) -> Tensor | tuple[Tensor, ...]:
        """`predict` on `features` in length order (less padding), concatenated on the CPU and put back
        in feature order; `progress(n)` is called after each batch of n features."""
        was_training = encoder.training
        encoder.eval(), head.eval()
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        parts: list[tuple[Tensor, ...]] = []
        for start in range(0, len(order), batch_size):
            chunk = [features[i] for i in order[start:start + batch_size]]
            batch = self.inputs({k: v.to(device) for k, v in collate(chunk, special.pad).items()}, special,
                                encoder.config)
            with autocast():
                out = self.predict(head, self.encode(encoder, batch), batch)
            parts.append(tuple(o.float().cpu() for o in (out if isinstance(out, tuple) else (out,))))
            if progress is not None:
                progress(len(chunk))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        outputs = tuple(_pad_cat([p[k] for p in parts])[inverse] for k in range(len(parts[0])))
        encoder.train(was_training), head.train(was_training)
        return outputs if len(outputs) > 1 else outputs[0]

    def evaluate(self, encoder: Encoder, head: nn.Module, examples: list[Any], features: list[dict[str, Any]],
                 tokenizer: Tokenizer, batch_size: int, autocast: Callable, device: torch.device) -> dict[str, float]:
        """Score one split: `score` of `outputs`. Generation tasks override this with their decoder (the
        tokenizer turns generated ids back into text)."""
        outputs = self.outputs(encoder, head, features, SpecialIds.of(tokenizer), batch_size, autocast, device)
        return self.score(examples, features, outputs)


def _pad_cat(parts: list[Tensor]) -> Tensor:
    """Concatenate per-batch outputs whose later dimensions may differ (padded to the widest with 0)."""
    if parts[0].dim() == 1:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
    """Pad "input_ids"/"token_type_ids" to the longest feature, add "attention_mask", stack the rest."""
    width = max(len(f["input_ids"]) for f in features)
    out: dict[str, Tensor] = {}
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        types[i, :n] = torch.tensor(f.get("token_type_ids", [0] * n))
    out["input_ids"], out["token_type_ids"] = ids, types
    out["attention_mask"] = torch.arange(width)[None, :] < torch.tensor([len(f["input_ids"]) for f in features])[:, None]
    for key in features[0]:
        if key in ("input_ids", "token_type_ids") or key.startswith("_"):
            continue
        out[key] = torch.tensor([f[key] for f in features])
    return out
