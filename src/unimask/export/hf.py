"""`unimask export --to hf`: a checkpoint -> a directory that `transformers` loads.

The export is a rename table plus a parity test (DESIGN.md section 8, rule 9): unimask's post-LN,
absolute-position `Encoder` is `transformers.BertModel` under other parameter names, and `LMHead` is
`BertOnlyMLMHead` with the decoder tied to the word embeddings. tests/test_export.py checks that the
exported model reproduces unimask's hidden states and MLM logits.

Output directory of a BERT-compatible encoder (native BERT, no remote code):
    config.json              BertConfig, architectures ["BertForMaskedLM"] (or ["BertModel"] without a head)
    model.safetensors        the renamed tensors, exactly the keys `save_pretrained` would write
    tokenizer.json           the checkpoint's tokenizer, unchanged
    tokenizer_config.json    BertTokenizer (fast) with the [PAD] [UNK] [CLS] [SEP] [MASK] specials
    vocab.txt                the WordPiece vocabulary, for readers that want the slow tokenizer

Pre-LN encoders, encoders without absolute positions and encoders with a relative position bias
have no BERT equivalent: `export_checkpoint` writes them with remote code instead (export/remote.py:
config.json of model_type "unimask" with an `auto_map`, model.safetensors under BERT's names wherever
the architecture agrees, and modeling_unimask.py, which imports only torch and transformers), loaded
with `AutoModel.from_pretrained(dir, trust_remote_code=True)`; tests/test_export_remote.py is their
parity test. `export_encoder` writes native BERT only and refuses those encoders.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from ..model.encoder import Encoder, EncoderConfig
from ..model.families import (BERT_SPECIAL_TOKENS, BERT_TO_ENCODER_CONFIG, ENCODER_TO_BERT,  # noqa: F401
                               FAMILIES, FAMILY_TITLES, LM_HEAD_TO_BERT, ROBERTA_SPECIAL_TOKENS, Family)
from ..model.heads import LMHead
from ..train.checkpoint import latest_checkpoint, verify

if TYPE_CHECKING:
    from transformers import BertConfig

MLM_HEADS: dict[str, str] = {
    "mlm": "objective.head.",
    "pmlm": "objective.head.",
}
"""Objective name -> prefix of its tied `LMHead` in a checkpoint's model.safetensors. Objectives
not listed here export their encoder only, as `BertModel`."""

SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
}
_LOAD_HINT = ("`unimask export` writes such encoders with remote code (export/remote.py), or load it with "
              "unimask.export.hf.load_encoder(checkpoint) (README: Export)")


class Exported(NamedTuple):
    checkpoint: Path
    architecture: str
    out: Path


def rename(state: dict[str, Tensor], table: tuple[tuple[str, str], ...], prefix: str = "") -> dict[str, Tensor]:
    """Apply `table` (full-match regex, replacement) to every key; a key no rule matches is a KeyError."""
    renamed = {}
    for key, tensor in state.items():
        match = next((m.expand(r) for p, r in table if (m := re.fullmatch(p, key))), None)
        if match is None:
            raise KeyError(f"no rename rule for {key!r}")
        renamed[prefix + match] = tensor
    return renamed


def check_bert_compatible(cfg: EncoderConfig) -> None:
    """Raise a one-line UserError when transformers' BERT cannot represent an encoder of `cfg`."""
    reasons = []
    if cfg.norm != "post":
        reasons.append("it is pre-LN (norm='pre') and BERT normalises after each residual (post-LN) "
                       "with no final LayerNorm")
    if not cfg.absolute_positions:
        reasons.append("it has no absolute position embeddings and BERT always adds them")
    if cfg.relative_buckets > 0:
        reasons.append("it uses a relative position bias (relative_buckets>0) and BERT attention has none")
    if cfg.embedding_size and cfg.embedding_size != cfg.hidden_size:
        reasons.append("its embeddings are narrower than its hidden size (embedding_size, ELECTRA's projection)")
    if cfg.position_offset:
        reasons.append("its positions start at an offset (position_offset, RoBERTa's)")
    if reasons:
        raise UserError(f"cannot export to transformers BERT: {'; '.join(reasons)}; {_LOAD_HINT}")


def to_bert_config(cfg: EncoderConfig, **kw) -> BertConfig:
    """The `transformers.BertConfig` of an encoder of `cfg`; `kw` adds or overrides BertConfig fields.

    Exact GELU ("gelu"), the same LayerNorm eps and dropouts, max_positions -> max_position_embeddings.
    An encoder without token types (type_vocab_size=0) becomes type_vocab_size=1 with a zero table.
    """
    check_bert_compatible(cfg)
    try:
        from transformers import BertConfig
    except ImportError:
        raise UserError("exporting to transformers needs the transformers package: pip install 'unimask[hf]'") from None
    values = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_positions,
        type_vocab_size=max(cfg.type_vocab_size, 1),
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=True,
    )
    return BertConfig(**{**values, **kw})


def _fit(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
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


def _read_tokenizer(path: Path, cfg: EncoderConfig, special_tokens: dict[str, str] | None = None) -> Tokenizer:
    """A checkpoint's tokenizer.json with its own padding and truncation off (`plain_tokenizer`);
    UserError when it is missing, unreadable, lacks the special tokens (`special_tokens` by role, else
    BERT's [CLS]... or RoBERTa's <s>... names) or has more tokens than the model has embeddings."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; a checkpoint keeps its tokenizer.json next to model.safetensors")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a readable tokenizer.json ({e}); pass a file saved by the tokenizers library") from None
    names = special_tokens or special_tokens_of(tokenizer) or SPECIAL_TOKENS
    missing = [t for t in names.values() if tokenizer.token_to_id(t) is None]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)} token; unimask needs a BERT-style ([CLS] [SEP] [MASK] "
                        "[PAD] [UNK]) or RoBERTa-style (<s> </s> <mask> <pad> <unk>) tokenizer such as the one "
                        "`unimask prepare` trains")
    _check_vocab_fits(tokenizer, cfg, path)
    return plain_tokenizer(tokenizer)


def _check_vocab_fits(tokenizer: Tokenizer, cfg: EncoderConfig, path: Path) -> None:
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise UserError(f"{path} has {tokenizer.get_vocab_size()} tokens but the model only {cfg.vocab_size} "
                        "embeddings: it is the tokenizer of another model; pass the checkpoint's own tokenizer.json")


def _tokenizer_config(tokenizer_json: Path, max_length: int) -> dict:
    """tokenizer_config.json: `BertTokenizer` when transformers rebuilds exactly this pipeline from the
    vocabulary (WordPiece "##", BertNormalizer, BertPreTokenizer), else the tokenizer.json as it is."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model, norm, pre = spec.get("model") or {}, spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    bert_shaped = (model.get("type") == "WordPiece" and model.get("continuing_subword_prefix") == "##"
                   and model.get("max_input_chars_per_word", 100) == 100
                   and norm.get("type") == "BertNormalizer" and norm.get("clean_text", True)
                   and pre.get("type") == "BertPreTokenizer")
    config = {"model_max_length": max_length, "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
              **SPECIAL_TOKENS}
    if not bert_shaped:
        return {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    return {"tokenizer_class": "BertTokenizer", "do_lower_case": norm.get("lowercase", True),
            "strip_accents": norm.get("strip_accents"), "tokenize_chinese_chars": norm.get("handle_chinese_chars", True),
            **config}


def _write_vocab_txt(tokenizer: Tokenizer, path: Path) -> None:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in by_id] == list(range(len(by_id))) and not any("\n" in t for t in by_id):
        path.write_text("".join(t + "\n" for t in by_id), encoding="utf-8")


def _check_tokenizer(directory: Path, tokenizer: Tokenizer) -> None:
    """The written tokenizer files must load in transformers and tokenize as the checkpoint's tokenizer.json."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as alone:    # the tokenizer files only: no config.json, no model code
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            if (directory / name).is_file():
                shutil.copyfile(directory / name, Path(alone) / name)
        loaded = AutoTokenizer.from_pretrained(alone, model_max_length=1 << 30)   # probes may be long
    vocab = tokenizer.get_vocab()
    words = sorted(vocab, key=vocab.__getitem__)[5:85]
    probes = [" ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
    for text in [*probes, "Hello, WORLD! Ünïcödé café 北京 don't", "[CLS] a [MASK] b"]:
        ours = tokenizer.encode(text, "Second Segment.")
        theirs = loaded(text, "Second Segment.")
        if ours.ids != theirs["input_ids"] or ours.type_ids != theirs["token_type_ids"]:
            raise RuntimeError(f"transformers tokenizes {text[:40]!r} differently from tokenizer.json: export bug")


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """A fresh temporary sibling of `out` to write into; refuses a non-empty `out` unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished `tmp` to `out`; an old `out` is removed only after the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        if not overwrite:
            raise UserError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def export_encoder(
    encoder_state: dict[str, Tensor],
    head_state: dict[str, Tensor] | None,
    cfg: EncoderConfig,
    tokenizer_json: Path,
    out: Path,
    overwrite: bool = False,
    card: str | None = None,
) -> None:
    """Write a transformers BERT directory to `out` (see the module docstring for its files), with the
    model card `card` as README.md when given.

    `encoder_state` is an `Encoder` state dict (keys `embeddings.*`, `layers.*`); `head_state` an
    `LMHead` state dict (`dense.*`, `norm.*`, `bias`) -> BertForMaskedLM, or None -> BertModel.
    """
    check_bert_compatible(cfg)
    tokenizer_json, out = Path(tokenizer_json), Path(out).expanduser().resolve()
    with torch.device("meta"):
        _fit(Encoder(cfg), encoder_state, "the encoder weights")
        if head_state is not None:
            _fit(LMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps), head_state, "the MLM head weights")
    tokenizer = _read_tokenizer(tokenizer_json, cfg)
    encoder_state = dict(encoder_state)
    if cfg.type_vocab_size == 0:
        embedding = encoder_state["embeddings.word.weight"]
        encoder_state["embeddings.token_type.weight"] = embedding.new_zeros(1, cfg.hidden_size)
    if head_state is None:
        architecture, tensors = "BertModel", rename(encoder_state, ENCODER_TO_BERT)
    else:
        architecture = "BertForMaskedLM"
        tensors = {**rename(encoder_state, ENCODER_TO_BERT, "bert."), **rename(head_state, LM_HEAD_TO_BERT)}
    dtype = str(encoder_state["embeddings.word.weight"].dtype).removeprefix("torch.")
    bert_config = to_bert_config(cfg, architectures=[architecture], dtype=dtype)

    def write_model(directory: Path) -> None:
        bert_config.to_json_file(directory / "config.json")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, directory / "model.safetensors",
                  metadata={"format": "pt"})

    write_directory(out, overwrite, tokenizer, tokenizer_json, cfg.max_positions, write_model, card)


def write_directory(out: Path, overwrite: bool, tokenizer: Tokenizer, tokenizer_json: Path, max_length: int,
                    write_model: Callable[[Path], None], card: str | None = None) -> None:
    """Write a transformers directory atomically: `write_model(tmp)` puts config.json and the weights
    (and any code) into a temporary sibling of `out`; the tokenizer files (tokenizer.json,
    tokenizer_config.json, vocab.txt for BERT-shaped vocabularies) are added and checked against
    transformers' AutoTokenizer, and `card` as README.md; then the directory replaces `out` (a non-empty
    `out` needs `overwrite`)."""
    tmp = _prepare_out(out, overwrite)
    try:
        write_model(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        tokenizer_config = _tokenizer_config(tokenizer_json, max_length)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        if tokenizer_config["tokenizer_class"] == "BertTokenizer":
            _write_vocab_txt(tokenizer, tmp / "vocab.txt")
        _check_tokenizer(tmp, tokenizer)
        _install(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest `checkpoints/step_*` of a run directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass a run directory or one of its checkpoints/step_* directories")
    found = latest_checkpoint(path)
    if found is None and (path / "model.safetensors").is_file():
        return path
    if found is None:
        raise UserError(f"{path} holds no checkpoint (no checkpoints/step_* with meta.json); "
                        "pass a run directory of `unimask pretrain` or one of its checkpoints")
    verify(found)
    return found


def _read_config(checkpoint: Path) -> dict:
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


def _encoder_config(config: dict, checkpoint: Path) -> EncoderConfig:
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


def _read_tensors(path: Path, prefix: str) -> dict[str, Tensor]:
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
    cfg = _encoder_config(_read_config(checkpoint), checkpoint)
    state = _read_tensors(checkpoint / "model.safetensors", "encoder.")
    if not state:
        raise UserError(f"{checkpoint}/model.safetensors has no encoder.* tensors; it is not a unimask checkpoint")
    with torch.device("meta"):
        encoder = Encoder(cfg)
    _fit(encoder, state, f"{checkpoint}/model.safetensors")
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
    heads: dict[str, dict[str, Tensor]]   # "lm": LMHead state (BERT, RoBERTa MLM); "rtd": ELECTRA's RTDHead state
    special_tokens: dict[str, str]        # role -> token
    path: Path


def _hf_config(path: Path) -> tuple[dict, Family]:
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
    config, family = _hf_config(path)
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
    _check_vocab_fits(tokenizer, cfg, path / "tokenizer.json")
    with torch.device("meta"):
        encoder = Encoder(cfg)
    stored = _read_tensors(weights, "")
    prefix = family.prefix if any(k.startswith(family.prefix) for k in stored) else ""
    ours = list(encoder.state_dict())
    back = dict(zip(rename({k: torch.empty(0) for k in ours}, family.encoder_table), ours))
    state = {back[k[len(prefix):]]: v for k, v in stored.items() if k.startswith(prefix) and k[len(prefix):] in back}
    _fit(encoder, state, str(weights))
    heads = {}
    for name, table in family.heads.items():
        head = {mine: v for k, v in stored.items() if (mine := _rename_back(k, table)) is not None}
        if head:
            heads[name] = head
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


def export_checkpoint(path: str | Path, out: str | Path, overwrite: bool = False) -> Exported:
    """Export a checkpoint (or a run directory's latest) to `out`: native BERT (BertForMaskedLM when its
    objective has a tied LM head, `MLM_HEADS`, else BertModel) when BERT can hold the encoder, else
    remote code (UnimaskForMaskedLM / UnimaskModel, export/remote.py). Objectives with auxiliary
    networks (MAE-LM's decoder, ELECTRA's and COCO-LM's generators) export their encoder only."""
    from .card import pretraining_card
    from .remote import needs_remote_code, write_remote_model

    checkpoint = find_checkpoint(path)
    config = _read_config(checkpoint)
    encoder, cfg = load_encoder(checkpoint)
    if cfg.embedding_size or cfg.position_offset:
        raise UserError(f"{checkpoint} continues a RoBERTa or ELECTRA model (position_offset / embedding_size); "
                        "exporting it back to its family is not supported yet")
    objective = config.get("objective_name")
    head_state = None
    if objective in MLM_HEADS:
        head_state = _read_tensors(checkpoint / "model.safetensors", MLM_HEADS[objective])
        if not head_state:
            raise UserError(f"{checkpoint}/model.safetensors has no {MLM_HEADS[objective]}* tensors although its "
                            f"objective is {objective}; the checkpoint is damaged")
    out = Path(out).expanduser().resolve()
    tokenizer_json = checkpoint / "tokenizer.json"
    remote = needs_remote_code(cfg)
    architecture = ("Unimask" if remote else "Bert") + ("ForMaskedLM" if head_state is not None else "Model")
    card = pretraining_card(checkpoint, config, architecture, remote)
    if not remote:
        export_encoder(encoder.state_dict(), head_state, cfg, tokenizer_json, out, overwrite=overwrite, card=card)
        return Exported(checkpoint, architecture, out)

    def write_model(directory: Path) -> None:
        written = write_remote_model(directory, cfg, encoder.state_dict(), lm_head_state=head_state)
        assert written == architecture, (written, architecture)

    write_directory(out, overwrite, _read_tokenizer(tokenizer_json, cfg), tokenizer_json, cfg.max_positions,
                    write_model, card)
    return Exported(checkpoint, architecture, out)


def export_any(path: str | Path, out: str | Path, overwrite: bool = False) -> Exported:
    """A `unimask finetune` output (finetune.json in PATH or PATH/best) -> export/finetuned.py's
    writer; anything else is a pretraining run or checkpoint -> `export_checkpoint`."""
    path = Path(path).expanduser()
    if any((candidate / "finetune.json").is_file() for candidate in (path, path / "best")):
        from .finetuned import export_finetuned
        return export_finetuned(path, out, overwrite)
    return export_checkpoint(path, out, overwrite)


EXPORTERS = {"hf": export_any}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `unimask export` options on `parser`."""
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="a run directory (its latest checkpoint), a checkpoint, or a `unimask finetune` output")
    parser.add_argument("--checkpoint", metavar="PATH", help="the same as PATH")
    parser.add_argument("--to", choices=sorted(EXPORTERS), default="hf", help="target format (default %(default)s)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")


def run(args: argparse.Namespace) -> int:
    """Run `unimask export` from parsed arguments; prints one line saying what was written and how to load it."""
    if args.path and args.checkpoint and Path(args.path) != Path(args.checkpoint):
        raise UserError("PATH and --checkpoint name different checkpoints; pass one of them")
    path = args.path or args.checkpoint
    if not path:
        raise UserError("no checkpoint given; pass a run directory or checkpoint as PATH (or --checkpoint)")
    from .card import PIPELINES, auto_class, load_arguments
    done = EXPORTERS[args.to](path, args.out, overwrite=args.overwrite)
    extra = load_arguments(done.architecture)
    how = (f'transformers.pipeline("{PIPELINES[done.architecture]}", model={str(done.out)!r}{extra})'
           if done.architecture in PIPELINES else
           f"transformers.{auto_class(done.architecture)}.from_pretrained({str(done.out)!r}{extra})")
    print(f"wrote {done.architecture} from {done.checkpoint} to {done.out} (model card: README.md); load it with {how}")
    return 0
