"""The one place that reads checkpoints, into one object per kind of starting point.

- a unimask pretraining run or `checkpoints/step_*` -> its `Encoder`, config, tokenizer and (MLM,
  PMLM) tied LM head;
- a transformers directory of the BERT, RoBERTa or ELECTRA family (model/families.py rename tables
  read backwards);
- a `unimask finetune` output -> `Finetuned`: encoder, task head, the task rebuilt from its saved
  options (tasks/__init__.py registry), tokenizer and finetune.json.

`load_pretrained` (fine-tuning, probing, `pretrain --init`) and `load_finetuned` (predict, generate,
export) read each file once; export/ keeps only rename tables and writers. Weights are read from
safetensors only (never unpickled); every problem is a one-line UserError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from torch import Tensor, nn

from .errors import UserError
from .model.encoder import Encoder, EncoderConfig
from .model.families import (BERT_SPECIAL_TOKENS, FAMILIES, FAMILY_TITLES, ROBERTA_SPECIAL_TOKENS, Family,
                             rename)
from .rundir import damaged_file
from .train.checkpoint import CARRIED_FILE, latest_checkpoint, verify

if TYPE_CHECKING:
    from .tasks.base import Task

RUN_HEADS: dict[str, tuple[str, str]] = {
    "mlm": ("lm", "objective.head."),
    "pmlm": ("lm", "objective.head."),
    "electra": ("rtd", "objective.rtd_head."),
}
"""Objective name -> (head kind, its prefix in a checkpoint's model.safetensors): the heads a run carries
into transformers (`Family.architectures`) and into `pretrain --init` (train/init.py INIT_HEADS)."""

CARRIED_HEADS: tuple[str, ...] = ("pooler",)
"""Head kinds of a `pretrain --init` model that no objective trains, carried unchanged into every
checkpoint of the run (`CARRIED_FILE`, tensors named "<kind>.<name>"): BERT's pooler, which
`BertForSequenceClassification` and unimask's [CLS] head start from, so a continued BERT fine-tunes
and exports like the released one."""

MLM_HEADS: dict[str, str] = {name: prefix for name, (kind, prefix) in RUN_HEADS.items() if kind == "lm"}
"""Objective name -> prefix of its tied `LMHead` (MLM, PMLM)."""


def fit_state(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Load `state` into a (meta) module with assign=True, or a UserError naming the first mismatches."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [f"{k} is {got[k]} not {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(f"{where} does not fit the model config ({', '.join(problems[:3])}{more}): it is a checkpoint "
                        "of another model; pass weights and config.json saved together")
    module.load_state_dict(state, strict=True, assign=True)


def special_tokens_of(tokenizer: Tokenizer) -> dict[str, str] | None:
    """The special tokens by role (pad unk cls sep mask) of a BERT-style ([CLS]) or RoBERTa-style
    (<s>) vocabulary, or None when the tokenizer has neither set complete."""
    for names in (BERT_SPECIAL_TOKENS, ROBERTA_SPECIAL_TOKENS):
        if all(tokenizer.token_to_id(t) is not None for t in names.values()):
            return dict(names)
    return None


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the padding and truncation a tokenizer.json may carry switched off
    (sentence-transformers models ship `padding: Fixed 128` and `truncation: 128`): unimask adds its
    own special tokens (encode(..., add_special_tokens=False)) and pads and truncates itself, so a
    padding setting left on would put [PAD]s inside every example, before unimask's [SEP]."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def read_tokenizer(path: Path, cfg: EncoderConfig, special_tokens: dict[str, str] | None = None) -> Tokenizer:
    """A checkpoint's tokenizer.json with its own padding and truncation off (`plain_tokenizer`);
    UserError when it is missing, unreadable, lacks the special tokens (`special_tokens` by role, else
    BERT's [CLS]... or RoBERTa's <s>... names) or has more tokens than the model has embeddings."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; a checkpoint keeps its tokenizer.json next to model.safetensors")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a readable tokenizer.json ({e}); pass a file saved by the tokenizers library") from None
    names = special_tokens or special_tokens_of(tokenizer) or BERT_SPECIAL_TOKENS
    missing = [t for t in names.values() if tokenizer.token_to_id(t) is None]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)} token; unimask needs a BERT-style ([CLS] [SEP] [MASK] "
                        "[PAD] [UNK]) or RoBERTa-style (<s> </s> <mask> <pad> <unk>) tokenizer such as the one "
                        "`unimask prepare` trains")
    check_vocab_fits(tokenizer, cfg, path)
    return plain_tokenizer(tokenizer)


def check_vocab_fits(tokenizer: Tokenizer, cfg: EncoderConfig, path: Path) -> None:
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"{path} has {tokenizer.get_vocab_size()} tokens but the model only {cfg.vocab_size} "
                        "embeddings: it is the tokenizer of another model; pass the checkpoint's own tokenizer.json")



def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest `checkpoints/step_*` of a run directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass a run directory or one of its checkpoints/step_* directories")
    found = latest_checkpoint(path)
    if found is None and (path / "model.safetensors").is_file():
        return path
    if found is None and (path / "best").is_dir():
        raise _finetune_json_missing(path)
    if found is None:
        raise UserError(f"{path} holds no checkpoint (no checkpoints/step_* with meta.json); "
                        "pass a run directory of `unimask pretrain` or one of its checkpoints")
    verify(found)
    return found


def read_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    if not path.is_file() and (checkpoint / "finetune.json").is_file():
        raise UserError(f"{checkpoint} is the output of `unimask finetune`, not a pretraining checkpoint; "
                        "pass the pretraining run it started from")
    if not path.is_file():
        raise UserError(f"{checkpoint} has model.safetensors but no config.json; it is not a unimask checkpoint")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None


def encoder_config(config: dict, checkpoint: Path) -> EncoderConfig:
    model = config.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{checkpoint}/config.json has no 'model' section; it is not a unimask checkpoint")
    unknown = sorted(set(model) - {f.name for f in fields(EncoderConfig)})
    if unknown:
        raise UserError(f"{checkpoint}/config.json has model fields this unimask does not know ({', '.join(unknown)}); "
                        "upgrade unimask")
    try:
        return EncoderConfig(**model)
    except (TypeError, ValueError) as e:
        raise UserError(f"{checkpoint}/config.json has an invalid model section: {e}") from None


def read_tensors(path: Path, prefix: str) -> dict[str, Tensor]:
    """The tensors of `path` whose names start with `prefix`, with the prefix removed (safetensors only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except Exception as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); the checkpoint is damaged") from None


def load_encoder(path: str | Path) -> tuple[Encoder, EncoderConfig]:
    """The unwrapped `Encoder` (eval mode) and its config from a checkpoint or a run directory's latest one.

    Reads `config.json["model"]` and the `encoder.*` tensors of model.safetensors; never unpickles.
    """
    checkpoint = find_checkpoint(path)
    cfg = encoder_config(read_config(checkpoint), checkpoint)
    state = read_tensors(checkpoint / "model.safetensors", "encoder.")
    if not state:
        raise UserError(f"{checkpoint}/model.safetensors has no encoder.* tensors; it is not a unimask checkpoint")
    with torch.device("meta"):
        encoder = Encoder(cfg)
    fit_state(encoder, state, f"{checkpoint}/model.safetensors")
    return encoder.eval(), cfg


def _hf_model_type(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) and model_type != "unimask" else None


def is_hf_directory(path: str | Path) -> bool:
    """A directory written by transformers' `save_pretrained` (config.json with a `model_type`), of any
    family: `load_hf_encoder` reads the supported ones (`FAMILIES`) and names the others. A directory
    `unimask export` wrote with remote code (model_type "unimask") is not one."""
    return _hf_model_type(Path(path).expanduser()) is not None


class HFModel(NamedTuple):
    """What `load_hf_model` reads from a transformers directory."""

    encoder: Encoder                      # eval mode
    config: EncoderConfig
    tokenizer: Tokenizer                  # padding and truncation off
    family: Family
    heads: dict[str, dict[str, Tensor]]   # "lm": LMHead state (BERT, RoBERTa MLM); "rtd": ELECTRA's RTDHead state;
                                          # "pooler": BERT's pooler as the ClassificationHead's dense layer
    special_tokens: dict[str, str]        # role -> token
    path: Path


def read_hf_config(path: Path) -> tuple[dict, Family]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} has no config.json; pass a directory saved by transformers' save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); the directory is damaged") from None
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(f"{path} is a transformers {model_type!r} model; unimask loads the "
                        f"{', '.join(FAMILIES)} families only")
    return config, FAMILIES[model_type]


def read_hf_tokenizer(path: Path, special_tokens: dict[str, str] | None = None) -> Tokenizer:
    """The tokenizer of a transformers directory as a `tokenizers.Tokenizer`, padding and truncation off:
    its tokenizer.json, else the one transformers builds from vocab.txt (WordPiece) or vocab.json +
    merges.txt (byte-level BPE) with the directory's tokenizer_config.json. UserError naming the
    missing files when there is none."""
    path = Path(path).expanduser()
    if (path / "tokenizer.json").is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:
            raise UserError(f"{path}/tokenizer.json is not a readable tokenizer.json ({e})") from None
    elif (path / "vocab.txt").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"{path} has no tokenizer.json; building one from its vocabulary files needs "
                            "transformers: pip install 'unimask[hf]'") from None
        try:
            loaded = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        except Exception as e:
            raise UserError(f"{path}: transformers cannot build a tokenizer from its vocabulary files ({e})") from None
        tokenizer = Tokenizer.from_str(loaded.backend_tokenizer.to_str())
    else:
        raise UserError(f"{path} has no tokenizer files: expected tokenizer.json, or vocab.txt (WordPiece), "
                        "or vocab.json and merges.txt (byte-level BPE)")
    names = special_tokens or special_tokens_of(tokenizer)
    if names is None or any(tokenizer.token_to_id(t) is None for t in names.values()):
        raise UserError(f"{path}'s tokenizer has neither BERT's special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) "
                        "nor RoBERTa's (<pad> <unk> <s> </s> <mask>)")
    return plain_tokenizer(tokenizer)


def _family_special_tokens(path: Path, family: Family) -> dict[str, str]:
    """The family's special tokens, with those tokenizer_config.json / special_tokens_map.json name."""
    names = dict(family.special_tokens)
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            spec = json.loads((path / file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        for role in names:
            value = spec.get(f"{role}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and value:
                names[role] = value
    return names


def load_hf_model(path: str | Path) -> HFModel:
    """The `Encoder`, its config, tokenizer and carried heads from a transformers directory of a family
    in `FAMILIES` (BERT, RoBERTa, ELECTRA discriminator): the family's rename table read backwards;
    the pooler and task heads are left out. Checks, before any weight is built: the family, the
    activation and position type, model.safetensors and the tokenizer files present, the tokenizer's
    vocabulary no larger than the embeddings."""
    path = Path(path).expanduser()
    config, family = read_hf_config(path)
    if config.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{path}/config.json has hidden_act={config['hidden_act']!r}; unimask encoders use exact GELU")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{path}/config.json uses {config['position_embedding_type']} position embeddings; "
                        "unimask loads absolute positions only")
    try:
        cfg = family.encoder_config(config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}/config.json does not describe a usable {FAMILY_TITLES[family.name]} ({e}); fix the value or re-export") from None
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{path} has no model.safetensors; save the model with safe_serialization=True "
                        "(unimask never unpickles pytorch_model.bin)")
    special_tokens = _family_special_tokens(path, family)
    tokenizer = read_hf_tokenizer(path, special_tokens)
    check_vocab_fits(tokenizer, cfg, path / "tokenizer.json")
    with torch.device("meta"):
        encoder = Encoder(cfg)
    stored = read_tensors(weights, "")
    prefix = family.prefix if any(k.startswith(family.prefix) for k in stored) else ""
    ours = list(encoder.state_dict())
    back = dict(zip(rename({k: torch.empty(0) for k in ours}, family.encoder_table), ours))
    state = {back[k[len(prefix):]]: v for k, v in stored.items() if k.startswith(prefix) and k[len(prefix):] in back}
    fit_state(encoder, state, str(weights))
    heads = {}
    for name, table in family.heads.items():     # LM / RTD heads sit beside the encoder, the pooler inside it
        head = {mine: v for k, v in stored.items()
                if (mine := _rename_back(k.removeprefix(prefix) if prefix else k, table)) is not None}
        if head:
            heads[name] = head
    if "pooler" in heads:                        # a [CLS] head's dense layer: (D, D) weight and (D,) bias
        shapes = {k: tuple(v.shape) for k, v in heads["pooler"].items()}
        expected = {"weight": (cfg.hidden_size, cfg.hidden_size), "bias": (cfg.hidden_size,)}
        if shapes != expected:
            raise UserError(f"{weights} has an incomplete or misshapen pooler ({', '.join(f'{k} {v}' for k, v in shapes.items())}; "
                            f"expected weight {expected['weight']} and bias {expected['bias']}); the directory is "
                            "damaged: re-save it, or drop the pooler tensors from it")
    return HFModel(encoder.eval(), cfg, tokenizer, family, heads, special_tokens, path)


def _rename_back(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    """Their tensor name -> ours by a forward table of (our pattern, their replacement), or None.
    The head tables use only literal names and one (weight|bias) group, which this inverts."""
    for pattern, replacement in table:
        for suffix in ("weight", "bias"):
            mine = pattern.replace("(weight|bias)", suffix).replace("\\.", ".")
            if "(" not in mine and key == replacement.replace("\\1", suffix):
                return mine
    return None


def load_hf_encoder(path: str | Path) -> tuple[Encoder, EncoderConfig, Tokenizer]:
    """The `Encoder`, its config and tokenizer from a transformers directory of a supported family
    (`load_hf_model` without the heads)."""
    loaded = load_hf_model(path)
    return loaded.encoder, loaded.config, loaded.tokenizer




# ---- fine-tuning outputs ----

def find_best(path: str | Path) -> Path:
    """The directory holding finetune.json: `path` itself or its best/ (a `unimask finetune` output).
    A pretraining run or any other directory is a one-line error saying what to pass."""
    path = Path(path).expanduser()
    for candidate in (path, path / "best"):
        if (candidate / "finetune.json").is_file():
            return candidate
    if (path / "checkpoints").is_dir() or (path / "meta.json").is_file():
        raise UserError(f"{path} is a pretraining run, which has no fine-tuned head; fine-tune it first "
                        f"(`unimask finetune --checkpoint {path} --task ... --out DIR`) and pass that DIR")
    if (path / "best").is_dir():
        raise _finetune_json_missing(path)
    raise UserError(f"{path} has no finetune.json (nor best/finetune.json); pass the --out directory of "
                    "`unimask finetune`")


def _finetune_json_missing(path: Path) -> UserError:
    return UserError(f"{path} is damaged: best/finetune.json is missing, so it is neither a fine-tuning output nor "
                     "a pretraining run; fine-tune again")


@dataclass
class Finetuned:
    """A fine-tuned model as `unimask finetune` saved it, in eval mode."""

    encoder: Encoder
    head: nn.Module
    task: Task
    tokenizer: Tokenizer
    meta: dict
    directory: Path

    @property
    def max_length(self) -> int:
        """Tokens per input the model was fine-tuned with (finetune.json; older outputs: 128, squad 384)."""
        default = 384 if self.meta["task"] == "squad" else 128
        return min(int(self.meta.get("max_length", default)), self.encoder.config.max_positions)


FINETUNED_FILES = ["model.safetensors", "tokenizer.json"]
"""The files of a `unimask finetune` output's best/ whose sizes and SHA-256 finetune.json lists."""


def load_finetuned(path: str | Path) -> Finetuned:
    """The encoder, head, task, tokenizer and finetune.json of a `unimask finetune` output. Every file
    is checked first (finetune.json's "files": present, same size, same SHA-256; outputs written before
    those were recorded: present); a missing or damaged one is a UserError naming it."""
    from .tasks import tasks

    best = find_best(path)
    try:
        meta = json.loads((best / "finetune.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{best / 'finetune.json'} is not valid JSON ({e}); the fine-tuning output is damaged: "
                        "fine-tune again") from None
    if meta.get("task") not in tasks():
        raise UserError(f"{best / 'finetune.json'} names task {meta.get('task')!r}, which this unimask cannot load; "
                        f"known: {', '.join(tasks())}")
    files = meta.get("files") if isinstance(meta.get("files"), dict) else {name: {} for name in FINETUNED_FILES}
    if (problem := damaged_file(best, files, "finetune.json")) is not None:
        raise UserError(f"{best} is damaged: {problem}; the fine-tuning output is incomplete: fine-tune again")
    task = tasks()[meta["task"]].load(meta["task"], meta)
    encoder = Encoder(EncoderConfig(**meta["model"]))
    head = task.head(encoder, 0.0)
    state = read_tensors(best / "model.safetensors", "")
    for prefix, module in (("encoder.", encoder), ("head.", head)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    tokenizer = read_tokenizer(best / "tokenizer.json", encoder.config)
    return Finetuned(encoder.eval(), head.eval(), task, tokenizer, meta, best)



# ---- starting points of fine-tuning ----

@dataclass
class Pretrained:
    """The starting point of fine-tuning: encoder weights, their config, the tokenizer, a label."""

    state: dict[str, Tensor] | None      # None: random initialisation
    config: EncoderConfig
    tokenizer: Tokenizer
    name: str
    source: str
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)   # "lm" / "rtd" / "pooler" state dicts, if any

    def build(self, seed: int, dropout: float | None = None) -> Encoder:
        """The encoder (seeded init, then the pretrained weights); `dropout` replaces the config's
        hidden and attention dropout."""
        torch.manual_seed(seed)
        cfg = self.config if dropout is None else replace(self.config, dropout=dropout, attention_dropout=dropout)
        encoder = Encoder(cfg)
        if self.state is not None:
            encoder.load_state_dict(self.state, strict=True)
        return encoder


def load_pretrained(path: str | Path, random_init: bool = False, name: str | None = None) -> Pretrained:
    """A unimask run directory / checkpoint or a transformers BERT directory; `random_init` keeps only
    the architecture and the tokenizer (the baseline that shows what pretraining bought)."""
    path = Path(path).expanduser()
    if is_hf_directory(path):
        loaded = load_hf_model(path)
        encoder, cfg, tokenizer = loaded.encoder, loaded.config, loaded.tokenizer
        source, heads = str(path), {} if random_init else loaded.heads
    else:
        checkpoint = find_checkpoint(path)
        encoder, cfg = load_encoder(checkpoint)
        tokenizer = read_tokenizer(checkpoint / "tokenizer.json", cfg)
        source = str(checkpoint)
        heads = {} if random_init else _checkpoint_heads(checkpoint)
    label = name or (path.name + (" (random init)" if random_init else ""))
    state = None if random_init else {k: v.clone() for k, v in encoder.state_dict().items()}
    return Pretrained(state, cfg, tokenizer, label, source, heads)


def _checkpoint_heads(checkpoint: Path) -> dict[str, dict[str, Tensor]]:
    """{"lm": state} when the checkpoint's objective has a tied `LMHead` (`MLM_HEADS`: MLM,
    PMLM); generation fine-tuning starts from it, as UniLM's s2s-ft does. Plus the heads carried from
    the run's --init model (`read_carried`: BERT's pooler, which the [CLS] head starts from)."""
    prefix = MLM_HEADS.get(read_config(checkpoint).get("objective_name"))
    heads = read_carried(checkpoint)
    return {**heads, "lm": read_tensors(checkpoint / "model.safetensors", prefix)} if prefix else heads


def read_carried(checkpoint: Path) -> dict[str, dict[str, Tensor]]:
    """The heads a checkpoint carries from its run's --init model (`CARRIED_HEADS`), by kind; {} when
    it carries none (a run from random init, or a checkpoint written before unimask carried them). A
    carried file its meta.json does not list (so no checksum vouches for it) is not the run's: ignored."""
    path = checkpoint / CARRIED_FILE
    if not path.is_file():
        return {}
    try:
        listed = CARRIED_FILE in json.loads((checkpoint / "meta.json").read_text(encoding="utf-8")).get("sha256", {})
    except (OSError, ValueError, AttributeError):
        listed = False
    if not listed:
        return {}
    stored = read_tensors(path, "")
    return {kind: state for kind in CARRIED_HEADS
            if (state := {k[len(kind) + 1:]: v for k, v in stored.items() if k.startswith(kind + ".")})}


def carried_tensors(heads: dict[str, dict[str, Tensor]], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """`heads` (kind -> state) -> the flat tensors of `CARRIED_FILE`, only the kinds in `CARRIED_HEADS`,
    in `dtype` (the checkpoint's: fp32 master weights, whatever the --init model was saved in)."""
    return {f"{kind}.{name}": tensor.detach().to(dtype).contiguous() for kind in CARRIED_HEADS
            for name, tensor in heads.get(kind, {}).items()}


