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
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from tokenizers import Tokenizer
from torch import Tensor

# the readers live in unimask/checkpoint.py; load_encoder, find_checkpoint, is_hf_directory and
# load_hf_encoder stay importable from here (README: Export), as do the BERT tables and `rename`
from ..checkpoint import (MLM_HEADS, RUN_HEADS, find_checkpoint, fit_state, is_hf_directory,  # noqa: F401
                          load_encoder, load_hf_encoder, read_carried, read_config, read_tensors, read_tokenizer,
                          special_tokens_of)
from ..errors import UserError
from ..model.encoder import Encoder, EncoderConfig, embedding_width
from ..model.families import (BERT_SPECIAL_TOKENS, BERT_TO_ENCODER_CONFIG, ENCODER_TO_BERT,  # noqa: F401
                               FAMILIES, FAMILY_TITLES, LM_HEAD_TO_BERT, Family, rename)
from ..model.heads import LMHead
from ..rundir import claim, guard_disk, save_tensors, tensor_bytes

if TYPE_CHECKING:
    from transformers import BertConfig

_LOAD_HINT = ("`unimask export` writes such encoders with remote code (export/remote.py), or load it with "
              "unimask.export.hf.load_encoder(checkpoint) (README: Export)")


class Exported(NamedTuple):
    checkpoint: Path
    architecture: str
    out: Path
    pooler: bool = False          # a BertModel written with the pooler its run carried from --init


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


def _tokenizer_config(tokenizer_json: Path, max_length: int) -> dict:
    """tokenizer_config.json: `BertTokenizer` when transformers rebuilds exactly this pipeline from the
    vocabulary (WordPiece "##", BertNormalizer, BertPreTokenizer), else the tokenizer.json as it is,
    with its own special tokens ([CLS] ... or RoBERTa's <s> ...) and token types only where it has
    two (RoBERTa's one-type models take none)."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    roles = special_tokens_of(Tokenizer.from_file(str(tokenizer_json))) or dict(BERT_SPECIAL_TOKENS)
    special = {f"{role}_token": token for role, token in roles.items()}
    if roles["cls"] == "<s>":
        special.update(bos_token="<s>", eos_token="</s>")
    model, norm, pre = spec.get("model") or {}, spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    bert_shaped = (model.get("type") == "WordPiece" and model.get("continuing_subword_prefix") == "##"
                   and model.get("max_input_chars_per_word", 100) == 100
                   and norm.get("type") == "BertNormalizer" and norm.get("clean_text", True)
                   and pre.get("type") == "BertPreTokenizer")
    one_type = roles["cls"] == "<s>"
    config = {"model_max_length": max_length,
              "model_input_names": ["input_ids", "attention_mask"] if one_type else
                                   ["input_ids", "token_type_ids", "attention_mask"],
              **special}
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
        if ours.ids != theirs["input_ids"] or ("token_type_ids" in theirs and ours.type_ids != theirs["token_type_ids"]):
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
    export_family(encoder_state, ("lm", head_state) if head_state is not None else None, cfg, tokenizer_json, out,
                  FAMILIES["bert"], overwrite, card)


def export_family(
    encoder_state: dict[str, Tensor],
    head: tuple[str, dict[str, Tensor]] | None,
    cfg: EncoderConfig,
    tokenizer_json: Path,
    out: Path,
    family: Family,
    overwrite: bool = False,
    card: str | None = None,
    pooler: dict[str, Tensor] | None = None,
) -> str:
    """Write a transformers directory of `family` (BERT, RoBERTa, ELECTRA; model/families.py) to `out`;
    returns the architecture written (`family.architectures`). `head` is (kind, state): "lm" (an
    `LMHead` state) -> *ForMaskedLM, "rtd" (ELECTRA's `RTDHead`) -> ElectraForPreTraining; None -> the
    bare *Model. `pooler` (BERT's pooler as a dense layer's state, carried from a --init model) goes
    into a bare BertModel; the *For* classes written here have none. The tensors are renamed, never
    changed: transformers reproduces unimask's outputs (tests/test_families.py). UserError when the
    family cannot hold the encoder."""
    reasons = family.check_holds(cfg)
    if reasons:
        raise UserError(f"cannot export to transformers {FAMILY_TITLES[family.name]}: {'; '.join(reasons)}; {_LOAD_HINT}")
    kind, head_state = head if head is not None else ("", None)
    if kind not in family.architectures:
        raise UserError(f"transformers {FAMILY_TITLES[family.name]} has no class for a {kind} head")
    tokenizer_json, out = Path(tokenizer_json), Path(out).expanduser().resolve()
    with torch.device("meta"):
        fit_state(Encoder(cfg), encoder_state, "the encoder weights")
        if kind == "lm":
            fit_state(LMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps, embedding_size=embedding_width(cfg)),
                      head_state, "the MLM head weights")
    tokenizer = read_tokenizer(tokenizer_json, cfg)
    encoder_state = dict(encoder_state)
    if cfg.type_vocab_size == 0:             # transformers always adds a token-type row: a zero one
        embedding = encoder_state["embeddings.word.weight"]
        encoder_state["embeddings.token_type.weight"] = embedding.new_zeros(1, embedding_width(cfg))
    architecture = family.architectures[kind]
    if head_state is None:
        tensors = rename(encoder_state, family.encoder_table)
        if pooler and "pooler" in family.heads:
            tensors.update(rename(pooler, family.heads["pooler"]))
    else:
        tensors = {**rename(encoder_state, family.encoder_table, family.prefix), **rename(head_state, family.heads[kind])}
    values = family.config_dict(cfg)
    if family.name == "roberta":
        values.update(bos_token_id=tokenizer.token_to_id("<s>"), eos_token_id=tokenizer.token_to_id("</s>"))
    dtype = str(encoder_state["embeddings.word.weight"].dtype).removeprefix("torch.")
    try:
        from transformers import AutoConfig
    except ImportError:
        raise UserError("exporting to transformers needs the transformers package: pip install 'unimask[hf]'") from None
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values, architectures=[architecture], dtype=dtype)

    def write_model(directory: Path) -> None:
        hf_config.to_json_file(directory / "config.json")
        save_tensors(tensors, directory / "model.safetensors", metadata={"format": "pt"})

    write_directory(out, overwrite, tokenizer, tokenizer_json, cfg.max_positions, write_model, card,
                    needed=tensor_bytes(tensors))
    return architecture


def write_directory(out: Path, overwrite: bool, tokenizer: Tokenizer, tokenizer_json: Path, max_length: int,
                    write_model: Callable[[Path], None], card: str | None = None, needed: int = 0) -> None:
    """Write a transformers directory atomically: `write_model(tmp)` puts config.json and the weights
    (and any code) into a temporary sibling of `out`; the tokenizer files (tokenizer.json,
    tokenizer_config.json, vocab.txt for BERT-shaped vocabularies) are added and checked against
    transformers' AutoTokenizer, and `card` as README.md; then the directory replaces `out` (a non-empty
    `out` needs `overwrite`). `out` is held for this process throughout (`rundir.claim`); `needed`
    (the weights' bytes) must be free, and a full disk is a UserError that leaves `out` as it was."""
    with claim(out, "export"):
        tmp = _prepare_out(out, overwrite)
        needed += Path(tokenizer_json).stat().st_size
        try:
            with guard_disk(tmp, needed, f"the export {out}", "free some space or choose another --out"):
                write_model(tmp)
                if card is not None:
                    (tmp / "README.md").write_text(card, encoding="utf-8")
                shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
                tokenizer_config = _tokenizer_config(tokenizer_json, max_length)
                (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n",
                                                           encoding="utf-8")
                if tokenizer_config["tokenizer_class"] == "BertTokenizer":
                    _write_vocab_txt(tokenizer, tmp / "vocab.txt")
            _check_tokenizer(tmp, tokenizer)
            _install(tmp, out, overwrite)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def export_family_of(cfg: EncoderConfig, config: dict, requested: str | None = None) -> Family | None:
    """The family a checkpoint is exported in: `requested` (--family), else the family its --init weights
    came from (config.json "init_family": a continued RoBERTa stays a RoBERTa), else by architecture
    (RoBERTa's position offset, ELECTRA's embedding projection, BERT otherwise). None when that family
    cannot hold the encoder (pre-LN, relative positions): remote code. UserError when `requested` cannot."""
    if requested:
        if requested not in FAMILIES:
            raise UserError(f"--family {requested!r} is not one of {', '.join(FAMILIES)}")
        reasons = FAMILIES[requested].check_holds(cfg)
        if reasons:
            raise UserError(f"cannot export as {FAMILY_TITLES[requested]}: {'; '.join(reasons)}; drop --family "
                            "(the default is the family the model came from, or remote code)")
        return FAMILIES[requested]
    name = config.get("init_family") or ("roberta" if cfg.position_offset else
                                         "electra" if cfg.embedding_size else "bert")
    family = FAMILIES.get(name, FAMILIES["bert"])
    return None if family.check_holds(cfg) else family


def export_checkpoint(path: str | Path, out: str | Path, overwrite: bool = False, family: str | None = None,
                      bare: bool = False) -> Exported:
    """Export a checkpoint (or a run directory's latest) to `out`, natively in a transformers family
    (`export_family_of`: BERT, or the RoBERTa / ELECTRA it was continued from) with the head its
    objective shares with that family (`RUN_HEADS`: the tied MLM head -> *ForMaskedLM, ELECTRA's RTD
    head -> ElectraForPreTraining; else the bare *Model), or with remote code (UnimaskForMaskedLM /
    UnimaskModel, export/remote.py) when no family can hold the encoder. Objectives with auxiliary
    networks (MAE-LM's decoder, ELECTRA's and COCO-LM's generators) export their encoder only; `bare`
    leaves the head out for every objective. A bare BERT holds the pooler the run carried from its
    --init model (`read_carried`), which the *ForMaskedLM classes have no place for."""
    from .card import pretraining_card
    from .remote import write_remote_model

    checkpoint = find_checkpoint(path)
    config = read_config(checkpoint)
    encoder, cfg = load_encoder(checkpoint)
    chosen = export_family_of(cfg, config, family)
    if chosen is None and (cfg.embedding_size or cfg.position_offset):
        raise UserError(f"{checkpoint}: an encoder with position_offset or embedding_size exports to RoBERTa or "
                        "ELECTRA only, and neither holds this one")
    objective = config.get("objective_name")
    kind, prefix = RUN_HEADS.get(objective, ("", ""))
    if bare or kind not in (chosen.architectures if chosen is not None else ("lm",)):
        kind = ""                                          # a head the target has no class for stays behind
    head_state = None
    if kind:
        head_state = read_tensors(checkpoint / "model.safetensors", prefix)
        if not head_state:
            raise UserError(f"{checkpoint}/model.safetensors has no {prefix}* tensors although its "
                            f"objective is {objective}; the checkpoint is damaged")
    out = Path(out).expanduser().resolve()
    tokenizer_json = checkpoint / "tokenizer.json"
    if chosen is not None:
        architecture = chosen.architectures[kind]
        carried = read_carried(checkpoint).get("pooler") if "pooler" in chosen.heads else None
        pooler = carried if not kind else None
        card = pretraining_card(checkpoint, config, architecture, False, pooler=pooler is not None,
                                pooler_left_out=carried is not None and pooler is None)
        export_family(encoder.state_dict(), (kind, head_state) if kind else None, cfg, tokenizer_json, out, chosen,
                      overwrite, card, pooler)
        return Exported(checkpoint, architecture, out, pooler is not None)
    architecture = "Unimask" + ("ForMaskedLM" if head_state is not None else "Model")   # no pooler class
    card = pretraining_card(checkpoint, config, architecture, True)

    def write_model(directory: Path) -> None:
        written = write_remote_model(directory, cfg, encoder.state_dict(), lm_head_state=head_state)
        assert written == architecture, (written, architecture)

    write_directory(out, overwrite, read_tokenizer(tokenizer_json, cfg), tokenizer_json, cfg.max_positions,
                    write_model, card, needed=tensor_bytes(encoder.state_dict()) + tensor_bytes(head_state or {}))
    return Exported(checkpoint, architecture, out)


def export_any(path: str | Path, out: str | Path, overwrite: bool = False, family: str | None = None,
               bare: bool = False) -> Exported:
    """A `unimask finetune` output (finetune.json in PATH or PATH/best) -> export/finetuned.py's
    writer; anything else is a pretraining run or checkpoint -> `export_checkpoint`."""
    path = Path(path).expanduser()
    if any((candidate / "finetune.json").is_file() for candidate in (path, path / "best")):
        if family is not None or bare:
            raise UserError(f"--{'family' if family is not None else 'bare'} is for pretraining checkpoints; a "
                            "fine-tuned model exports with its task head, as BERT or remote code")
        from .finetuned import export_finetuned
        return export_finetuned(path, out, overwrite)
    return export_checkpoint(path, out, overwrite, family, bare)


EXPORTERS = {"hf": export_any}


def run(args: argparse.Namespace) -> int:
    """Run `unimask export` from parsed arguments; prints one line saying what was written and how to load it."""
    if args.path and args.checkpoint and Path(args.path) != Path(args.checkpoint):
        raise UserError("PATH and --checkpoint name different checkpoints; pass one of them")
    path = args.path or args.checkpoint
    if not path:
        raise UserError("no checkpoint given; pass a run directory or checkpoint as PATH (or --checkpoint)")
    from .card import PIPELINES, auto_class, load_arguments
    done = EXPORTERS[args.to](path, args.out, overwrite=args.overwrite, family=args.family, bare=args.bare)
    extra = load_arguments(done.architecture, done.pooler)
    how = (f'transformers.pipeline("{PIPELINES[done.architecture]}", model={str(done.out)!r}{extra})'
           if done.architecture in PIPELINES else
           f"transformers.{auto_class(done.architecture)}.from_pretrained({str(done.out)!r}{extra})")
    print(f"wrote {done.architecture} from {done.checkpoint} to {done.out} (model card: README.md); load it with {how}")
    return 0
