"""Sequence-to-sequence fine-tuning of a bidirectional encoder, UniLM style, with pseudo masks.

One Transformer is both encoder and decoder (UniLM, Dong et al. 2019, its sequence-to-sequence
self-attention mask): the source is bidirectional and the target left-to-right. UniLMv2 (Bao et al.
2020, fine-tuning for generation, and its s2s-ft code) predicts each target token at an appended
pseudo [MASK] token that reuses the target token's position, so the true target tokens serve only as
context:

    input      [CLS] source [SEP] | y1 .. yT (yT = [SEP]) | [MASK] x T (pseudo tokens)
    positions  0 .. S-1           | S .. S+T-1           | S .. S+T-1 (pseudo i = position of y_i)
    types      0                  | 1                    | 1
    attention  source  -> source (bidirectional)
               y_i     -> source, y_1 .. y_i
               pseudo_i-> source, y_1 .. y_(i-1), itself

Training corrupts the targets as the s2s-ft code's pseudo-masking recipe ("mask_way v2" of
unilm/s2s-ft/s2s_ft/utils.py) does: each target token draws a substitute (itself with
`pseudo_keep_prob`, a random token with `pseudo_random_prob`, else [MASK]) that fills its pseudo
token, and with probability `target_mask_prob` (0.4-0.8; 0.7 by default) the same substitute also
replaces it in the true-token stream, so the model learns to continue from a noisy prefix. The loss
is the cross-entropy of the tied LM head at the pseudo token of every target token. At evaluation
and generation every pseudo token is [MASK] and the true stream is clean. Padded slots attend only
to themselves and are never predicted. Evaluation
generates from every source with beam search (tasks/decoding.py) and scores with BLEU-4, ROUGE-L and
METEOR when available (tasks/metrics.py).

Data: line-aligned source and target text files (one example per line, e.g. the question-generation
split of Du et al. 2017: src-dev.txt / tgt-dev.txt) or a JSONL file with "src" and "tgt" keys.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from ..model.heads import LMHead
from .base import SpecialIds, Task
from .records import MISSING, BadRows, describe, read_lines, read_table
from .configs import Seq2SeqConfig  # noqa: F401 (re-exported)
from .decoding import Seq2SeqIds, generate
from .metrics import generation_scores, meteor_unavailable


@dataclass(frozen=True)
class Seq2SeqExample:
    source: str
    target: str



def read_pairs(source: str | Path, target: str | Path, skip_bad_rows: bool = False) -> list[Seq2SeqExample]:
    """Examples from line-aligned source and target text files: line i of one pairs with line i of the
    other, lines split at "\\n" only (tasks/records.py). A pair with a blank side is refused, or
    skipped and counted with `skip_bad_rows`."""
    sources, targets = read_lines(source, "source file"), read_lines(target, "target file")
    if len(sources) != len(targets):
        raise UserError(f"{source} has {len(sources)} lines but {target} has {len(targets)}; "
                        "source and target files must be line-aligned")
    bad = BadRows(Path(target).expanduser(), skip_bad_rows)
    examples = []
    for n, (s, t) in enumerate(zip(sources, targets), 1):
        if not (s.strip() and t.strip()):
            bad.add(f"line {n}", f"the {'source' if not s.strip() else 'target'} is blank "
                                 f"(line {n} of {source if not s.strip() else target})")
            continue
        examples.append(Seq2SeqExample(s.strip(), t.strip()))
    bad.close(len(sources), "pairs")
    return examples


def read_jsonl(path: str | Path, target_required: bool = True, skip_bad_rows: bool = False) -> list[Seq2SeqExample]:
    """Examples from a JSONL file of {"src": ..., "tgt": ...} objects ("tgt" optional if not required).
    A record whose "src" (or required "tgt") is missing, null, blank or not a string is refused, or
    skipped and counted with `skip_bad_rows`; without `target_required` (generation inputs, which
    must stay aligned with the outputs) only a missing "tgt" is allowed."""
    table = read_table(path)
    keys = ("src", "tgt") if target_required else ("src",)
    bad = BadRows(table.path, skip_bad_rows)
    examples = []
    for n, record in table.records:
        wrong = [k for k in keys if not (isinstance(record.get(k), str) and record[k].strip())]
        if record.get("tgt") is not None and not isinstance(record["tgt"], str) and "tgt" not in wrong:
            wrong.append("tgt")
        if wrong:
            bad.add(f"line {n}", describe(record.get(wrong[0], MISSING), wrong[0])
                    + ' (each line needs string keys ' + " and ".join(keys) + ', e.g. {"src": "a sentence", "tgt": "a question ?"})')
            continue
        examples.append(Seq2SeqExample(record["src"].strip(), (record.get("tgt") or "").strip()))
    bad.close(len(table.records))
    return examples


def read_split(files: Any, skip_bad_rows: bool = False) -> list[Seq2SeqExample]:
    """A JSONL path, or a (source, target) pair of line-aligned text files."""
    if isinstance(files, (tuple, list)):
        return read_pairs(*files, skip_bad_rows=skip_bad_rows)
    return read_jsonl(files, skip_bad_rows=skip_bad_rows)


# ---- the training layout (pure functions) -----------------------------------------------------------

def corrupt_targets(target_ids: Tensor, target_lengths: Tensor, prob: float, keep_prob: float, random_prob: float,
                    mask_id: int, vocab_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """s2s-ft's target corruption: ((B, T) bool "replaced in the true stream", (B, T) substitute ids).

    Each real target token's substitute is itself with `keep_prob`, a uniform random token with
    `random_prob`, else [MASK]; it fills the token's pseudo slot, and with probability `prob` also
    its slot in the true-token stream. Draws happen on the CPU from `generator` (reproducible)."""
    B, T = target_ids.shape
    real = torch.arange(T)[None, :] < target_lengths.cpu()[:, None]                       # (B, T)
    kind = torch.rand((B, T), generator=generator)                                         # keep | random | mask
    random_ids = torch.randint(vocab_size, (B, T), generator=generator)
    replaced = (torch.rand((B, T), generator=generator) < prob) & real
    target = target_ids.cpu()
    substitute = torch.where(kind < keep_prob, target,
                             torch.where(kind < keep_prob + random_prob, random_ids, torch.full_like(target, mask_id)))
    return replaced.to(target_ids.device), substitute.to(target_ids.device)


def s2s_layout(source_lengths: Tensor, target_lengths: Tensor, S: int, T: int,
               target_type: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Position ids (B, L), token types (B, L) and the boolean "may attend" mask (B, L, L) of the
    pseudo-mask layout [source (S) | target (T) | pseudo (T)], L = S + 2T, for rows whose real
    source / target lengths are given (B,): see the module docstring. Padded slots see only themselves."""
    device = source_lengths.device
    index = torch.arange(S + 2 * T, device=device)
    kind = (index >= S).long() + (index >= S + T).long()                                   # (L,) 0 src, 1 tgt, 2 pseudo
    local = index - torch.where(kind == 0, 0, torch.where(kind == 1, S, S + T))            # (L,) index in its part
    limit = torch.where(kind[None, :] == 0, source_lengths[:, None], target_lengths[:, None])
    real = local[None, :] < limit                                                          # (B, L)
    qk, kk = kind[:, None], kind[None, :]
    qi, ki = local[:, None], local[None, :]
    source_key = kk == 0
    allowed = (((qk == 0) & source_key)
               | ((qk == 1) & (source_key | ((kk == 1) & (ki <= qi))))
               | ((qk == 2) & (source_key | ((kk == 1) & (ki < qi)) | ((kk == 2) & (ki == qi)))))   # (L, L)
    mask = allowed[None] & real[:, :, None] & real[:, None, :]
    mask = mask | (torch.eye(S + 2 * T, dtype=torch.bool, device=device)[None] & ~real[:, :, None])   # (B, L, L)
    positions = torch.where(kind[None, :] == 0, local[None, :], source_lengths[:, None] + local[None, :])
    types = (kind[None, :] > 0).long().expand_as(positions) * target_type
    return positions, types, mask


def s2s_inputs(source_ids: Tensor, target_ids: Tensor, target_lengths: Tensor, replaced: Tensor,
               substitute: Tensor | int, pad_id: int) -> Tensor:
    """Input ids (B, S + 2T): the source; the target with its `replaced` (B, T) tokens swapped for
    their `substitute` (B, T) ids; a pseudo token per real target token holding its substitute (an
    int: the same id everywhere, [MASK] at inference); padding elsewhere."""
    T = target_ids.shape[1]
    real = torch.arange(T, device=target_ids.device)[None, :] < target_lengths[:, None]    # (B, T)
    substitute = torch.as_tensor(substitute, device=target_ids.device).expand_as(target_ids)
    true_stream = torch.where(replaced, substitute, target_ids)
    pseudo = torch.where(real, substitute, pad_id)
    return torch.cat([source_ids, true_stream, pseudo], 1)


class TiedLMHead(LMHead):
    """`LMHead` (same state-dict keys) whose output projection is the encoder's word embedding table,
    read through a callable so that the encoder is not a submodule (its weights are saved once)."""

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float,
                 embedding_weight: Callable[[], Tensor]) -> None:
        super().__init__(hidden_size, vocab_size, layer_norm_eps)
        self.embedding_weight = embedding_weight

    def forward(self, hidden: Tensor) -> Tensor:  # type: ignore[override]
        # hidden (N, D) -> logits (N, V)
        return super().forward(hidden, self.embedding_weight())


def tied_head(encoder: nn.Module) -> TiedLMHead:
    cfg = encoder.config
    return TiedLMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps, lambda: encoder.word_embeddings.weight)


def decoder_ids(special: SpecialIds, encoder_config: Any) -> Seq2SeqIds:
    """The ids generation feeds: target tokens get type 1 when the model has two token types."""
    return Seq2SeqIds(mask=special.mask, sep=special.sep, target_type=1 if encoder_config.type_vocab_size >= 2 else 0)


def featurize_sources(texts: list[str], tokenizer: Tokenizer, special: SpecialIds, max_source_length: int) -> list[list[int]]:
    """[CLS] text [SEP] ids, the text cut to max_source_length - 2 tokens."""
    tokenizer = _untruncated(tokenizer)
    return [[special.cls, *e.ids[:max_source_length - 2], special.sep]
            for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def _untruncated(tokenizer: Tokenizer) -> Tokenizer:
    if tokenizer.truncation or tokenizer.padding:
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
    return tokenizer


def decode_texts(tokenizer: Tokenizer, outputs: list[list[int]]) -> list[str]:
    """WordPiece ids -> text through the tokenizer's decoder (special tokens dropped)."""
    return [" ".join(t.split()) for t in tokenizer.decode_batch(outputs, skip_special_tokens=True)]


_METEOR_NOTED = False


def _note_meteor() -> None:
    global _METEOR_NOTED
    reason = meteor_unavailable()
    if reason and not _METEOR_NOTED:
        print(f"note: {reason}", file=sys.stderr)
        _METEOR_NOTED = True


class Seq2SeqTask(Task):
    """Source -> target generation (question generation, summarization) fine-tuned with pseudo masks."""

    name: ClassVar[str] = "seq2seq"
    metric: ClassVar[str] = "rougeL"   # smoother than BLEU-4 for choosing the best evaluation; both are reported
    pretrained_head: ClassVar[str | None] = "lm"

    def __init__(self, train: Any = None, dev: Any = None, *, config: Seq2SeqConfig | None = None,
                 **settings: Any) -> None:
        """`train` / `dev`: a JSONL file or a (source, target) pair of text files; `config` or its
        fields as keywords (Seq2SeqConfig)."""
        config = config or Seq2SeqConfig(**settings)
        self.config, self.files = config, {"train": train, "dev": dev}
        self.target_mask_prob = config.target_mask_prob
        self.pseudo_keep_prob, self.pseudo_random_prob = config.pseudo_keep_prob, config.pseudo_random_prob
        self.max_source_length, self.max_target_length = config.max_source_length, config.max_target_length
        self.generation, self.max_eval_examples = config.generation, config.max_eval_examples
        self.skip_bad_rows = config.skip_bad_rows
        self._cache: dict[str, list[Seq2SeqExample]] = {}

    # ---- data ----

    def examples(self, split: str) -> list[Seq2SeqExample]:
        if self.files.get(split) is None:
            raise UserError(f"no seq2seq {split} data was given; pass a JSONL file or source and target files")
        if split not in self._cache:
            examples = read_split(self.files[split], self.skip_bad_rows)
            if split != "train" and self.max_eval_examples:
                examples = examples[:self.max_eval_examples]
            self._cache[split] = examples
        return self._cache[split]

    def source_budget(self, max_length: int) -> int:
        budget = self.max_source_length or max_length - self.max_target_length
        if budget < 3:
            raise UserError(f"max_length {max_length} leaves {budget} source tokens after the {self.max_target_length}"
                            "-token target; raise --max-length or lower --max-target-length")
        return budget

    def featurize(self, examples: list[Seq2SeqExample], tokenizer: Tokenizer, special: SpecialIds,
                  max_length: int) -> list[dict[str, Any]]:
        """"input_ids" = [CLS] source [SEP] (cut to the source budget), "target_ids" = target [SEP]
        (cut to max_target_length, padded to it), "target_length". Settles the source budget, which
        `options` saves."""
        self.max_source_length = self.source_budget(max_length)
        sources = featurize_sources([e.source for e in examples], tokenizer, special, self.max_source_length)
        targets = _untruncated(tokenizer).encode_batch([e.target for e in examples], add_special_tokens=False)
        features = []
        for i, (source, target) in enumerate(zip(sources, targets)):
            ids = [*target.ids[:self.max_target_length - 1], special.sep]
            features.append({"input_ids": source, "example": i, "target_length": len(ids),
                             "target_ids": ids + [special.pad] * (self.max_target_length - len(ids))})
        return features

    def options(self) -> dict[str, Any]:
        """The config, with the source budget fine-tuning settled on (`unimask predict` reads them)."""
        return {**asdict(self.config), "max_source_length": self.max_source_length}

    # ---- model ----

    def check_model(self, config: Any, max_length: int) -> None:
        """Source plus target tokens must fit the model's absolute positions."""
        source = self.source_budget(max_length)
        if config.absolute_positions and source + self.max_target_length > config.max_positions:
            raise UserError(f"source ({source}) plus target ({self.max_target_length}) tokens exceed "
                            f"the model's {config.max_positions} positions; lower --max-source-length or --max-target-length")

    def head(self, encoder: nn.Module, dropout: float) -> nn.Module:
        """The tied LM head (no dropout, as BERT's)."""
        self.check_model(encoder.config, self.max_source_length + self.max_target_length)
        return tied_head(encoder)

    def inputs(self, batch: dict[str, Tensor], special: SpecialIds, config: Any,
               rng: torch.Generator | None = None) -> dict[str, Tensor]:
        """The pseudo-mask layout of a collated batch: "input_ids" (B, S + 2T), "position_ids",
        "token_type_ids", "attention_mask" (B, L, L), and for `loss` / `predict` "targets" (B, T) and
        "predicted" (B, T), the real target tokens. Training (`rng` given) corrupts the targets as s2s-ft
        does; evaluation feeds the clean targets and [MASK] pseudo tokens, as generation does."""
        source = batch["input_ids"]                                                          # (B, S)
        source_lengths = batch["attention_mask"].sum(1)                                     # (B,)
        target_lengths = batch["target_length"]                                              # (B,)
        T = int(target_lengths.max())
        target = batch["target_ids"][:, :T]                                                  # (B, T)
        if rng is not None:
            replaced, substitute = corrupt_targets(target, target_lengths, self.target_mask_prob, self.pseudo_keep_prob,
                                                   self.pseudo_random_prob, special.mask,
                                                   special.vocab_size or config.vocab_size, rng)
        else:
            replaced, substitute = torch.zeros_like(target, dtype=torch.bool), special.mask
        target_type = 1 if config.type_vocab_size >= 2 else 0
        positions, types, mask = s2s_layout(source_lengths, target_lengths, source.shape[1], T, target_type)
        return {"input_ids": s2s_inputs(source, target, target_lengths, replaced, substitute, special.pad),
                "position_ids": positions, "token_type_ids": types, "attention_mask": mask, "targets": target,
                "replaced": replaced,
                "predicted": torch.arange(T, device=source.device)[None, :] < target_lengths[:, None]}

    def loss(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy at the pseudo token of every real target token, and their number."""
        predicted, target = batch["predicted"], batch["targets"]                             # (B, T)
        states = hidden[:, -predicted.shape[1]:][predicted]                                  # (N, D) pseudo states
        logits = head(states).float()                                                        # (N, V)
        return F.cross_entropy(logits, target[predicted], reduction="sum"), predicted.sum()

    def predict(self, head: nn.Module, hidden: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Teacher-forced argmax at every pseudo token (B, T); evaluation generates instead."""
        T = batch["predicted"].shape[1]
        return head(hidden[:, -T:]).argmax(-1)

    # ---- evaluation ----

    def generate(self, encoder: nn.Module, head: nn.Module, sources: list[list[int]], special: SpecialIds,
                 batch_size: int, device: torch.device) -> list[list[int]]:
        max_length = self.generation.max_length or self.max_target_length - 1
        return generate(encoder, head, sources, decoder_ids(special, encoder.config), self.generation, max_length,
                        batch_size=batch_size, pad_id=special.pad, device=device,
                        banned=(special.pad, special.cls, special.mask))

    def score(self, examples: list[Seq2SeqExample], features: list[dict[str, Any]],
              outputs: list[str]) -> dict[str, float]:
        """BLEU-4, ROUGE-L (and METEOR when available) of the generated texts, in feature order."""
        return generation_scores([examples[f["example"]].target for f in features], outputs)

    @torch.no_grad()
    def evaluate(self, encoder: nn.Module, head: nn.Module, examples: list[Seq2SeqExample],
                 features: list[dict[str, Any]], tokenizer: Tokenizer, batch_size: int, autocast: Callable,
                 device: torch.device) -> dict[str, float]:
        """Beam-search every source (`self.generation`), decode to text, score against the targets."""
        was_training = encoder.training
        encoder.eval(), head.eval()
        with autocast():
            outputs = self.generate(encoder, head, [f["input_ids"] for f in features], SpecialIds.of(tokenizer),
                                    batch_size, device)
        encoder.train(was_training), head.train(was_training)
        _note_meteor()
        return self.score(examples, features, decode_texts(tokenizer, outputs))


# ---- the commands' entry points (tasks/__init__.py TASKS) ----------------------------------------

def build(name: str, config: Seq2SeqConfig, args: Any) -> Seq2SeqTask:
    """`unimask finetune --task seq2seq`: JSONL files (--train / --dev) or line-aligned text files
    (--train-src / --train-tgt, --dev-src / --dev-tgt)."""
    def split(part: str) -> Any:
        jsonl, src, tgt = getattr(args, part), getattr(args, f"{part}_src"), getattr(args, f"{part}_tgt")
        if jsonl and (src or tgt):
            raise UserError(f"--task seq2seq: give --{part} FILE.jsonl or --{part}-src/--{part}-tgt, not both")
        if bool(src) != bool(tgt):
            raise UserError(f"--task seq2seq: --{part}-src and --{part}-tgt go together (line-aligned text files)")
        if not (jsonl or src):
            raise UserError(f"--task seq2seq needs --{part} FILE.jsonl ({{\"src\": ..., \"tgt\": ...}} per line) "
                            f"or --{part}-src SRC.txt --{part}-tgt TGT.txt")
        return jsonl or (src, tgt)

    return Seq2SeqTask(split("train"), split("dev"), config=config)


def load(name: str, meta: dict[str, Any]) -> Seq2SeqTask:
    """The task of a fine-tuned model (finetune.json), without data files."""
    known = {f.name for f in fields(Seq2SeqConfig)}
    return Seq2SeqTask(config=Seq2SeqConfig(**{k: v for k, v in (meta.get("task_options") or {}).items() if k in known}))
