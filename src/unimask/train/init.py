"""`unimask pretrain --init PATH`: continue pretraining from released weights.

PATH is a unimask run directory or checkpoint, or a transformers directory of a family in
model/families.py (BERT, RoBERTa, ELECTRA discriminator). The encoder's weights and its architecture
come from PATH; heads the objective shares with PATH come too (`INIT_HEADS`: MLM and PMLM start from
BERT's / RoBERTa's / a unimask MLM run's LM head, ELECTRA from an ELECTRA discriminator's RTD head);
heads no objective trains (`checkpoint.CARRIED_HEADS`: BERT's pooler) are carried unchanged into every
checkpoint of the run, so it fine-tunes and exports as the released model did;
everything else the objective owns (generators, MAE-LM's decoder) is built fresh, and the optimizer,
scheduler and step start at zero. `--init-generator PATH` (ELECTRA and COCO-LM) loads their generator
from a transformers ELECTRA generator directory (`ElectraForMaskedLM`, e.g. the released
electra-*-generator models): its width and depth set the objective's generator shape, its blocks,
embedding projection and LM head load into `MLMGenerator`, and its embedding tables are the
encoder's (ELECTRA shares them, section 3.2). A run that already has a checkpoint resumes from it (--resume)
and never reads PATH again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from ..model.encoder import EncoderConfig, embedding_width
from ..model.families import GENERATOR_TO_ELECTRA, rename

INIT_HEADS: dict[str, dict[str, str]] = {
    "mlm": {"lm": "head"},
    "pmlm": {"lm": "head"},
    "electra": {"rtd": "rtd_head"},
}
"""Objective name -> {head kind in the init checkpoint: the objective's attribute it loads into}."""

FREE_FIELDS = ("dropout", "attention_dropout")
"""`model.*` fields a --set may change on top of --init (everything else is the checkpoint's architecture)."""


class Init(NamedTuple):
    source: str
    state: dict[str, Tensor]                   # Encoder state dict
    config: EncoderConfig
    tokenizer: Tokenizer
    heads: dict[str, dict[str, Tensor]]        # "lm" / "rtd" / "pooler" -> head state dict
    family: str                                # the transformers family the weights came from ("" none)


def read_init(path: str | Path) -> Init:
    """The weights, architecture, tokenizer and carried heads of a unimask checkpoint / run or a
    transformers directory (export.hf.load_hf_model); UserError naming what is wrong."""
    from ..checkpoint import (RUN_HEADS, find_checkpoint, is_hf_directory, load_encoder, load_hf_model, read_carried,
                              read_config, read_tensors, read_tokenizer)

    path = Path(path).expanduser()
    if is_hf_directory(path):
        loaded = load_hf_model(path)
        return Init(str(path), loaded.encoder.state_dict(), loaded.config, loaded.tokenizer, loaded.heads,
                    loaded.family.name)
    checkpoint = find_checkpoint(path)
    encoder, cfg = load_encoder(checkpoint)
    tokenizer = read_tokenizer(checkpoint / "tokenizer.json", cfg)
    heads = read_carried(checkpoint)
    config = read_config(checkpoint)
    kind_prefix = RUN_HEADS.get(config.get("objective_name"))
    if kind_prefix is not None:
        state = read_tensors(checkpoint / "model.safetensors", kind_prefix[1])
        if state:
            heads[kind_prefix[0]] = state
    return Init(str(checkpoint), encoder.state_dict(), cfg, tokenizer, heads, config.get("init_family", ""))


def check_model_overrides(init_cfg: EncoderConfig, cfg: EncoderConfig, source: str) -> None:
    """`cfg` is the checkpoint's `init_cfg` after the `--set model.*` overrides: any change outside
    FREE_FIELDS contradicts the checkpoint's architecture, a one-line UserError."""
    for f in dataclasses.fields(EncoderConfig):
        ours, theirs = getattr(cfg, f.name), getattr(init_cfg, f.name)
        if f.name not in FREE_FIELDS and ours != theirs:
            raise UserError(f"--set model.{f.name}={ours} contradicts --init {source}, whose model has "
                            f"{f.name}={theirs!r}; the architecture comes from the checkpoint: drop that --set")


def check_tokenizer(init: Init, data_tokenizer: Tokenizer, data_dir: Path) -> None:
    """The prepared data must use the checkpoint's tokenizer (the same vocabulary, token for id)."""
    if init.tokenizer.get_vocab(with_added_tokens=True) != data_tokenizer.get_vocab(with_added_tokens=True):
        raise UserError(f"{data_dir} was prepared with another tokenizer than --init {init.source}'s; prepare "
                        f"it with `unimask prepare --tokenizer {init.source} ...`")


def apply_init(encoder: nn.Module, objective: nn.Module, objective_name: str, init: Init) -> list[str]:
    """Load the init weights into a freshly built encoder and the heads `INIT_HEADS` lists into the
    objective; returns the names of the heads loaded."""
    encoder.load_state_dict(init.state, strict=True)
    loaded = []
    for kind, attribute in INIT_HEADS.get(objective_name, {}).items():
        if kind in init.heads:
            try:
                getattr(objective, attribute).load_state_dict(init.heads[kind], strict=True)
            except RuntimeError as e:
                raise UserError(f"--init {init.source}: its {kind} head does not fit the {objective_name} objective "
                                f"({str(e).splitlines()[0]})") from None
            loaded.append(kind)
    return loaded


GENERATOR_SHAPES: dict[str, Callable[[int, int, EncoderConfig], dict[str, object]]] = {
    "electra": lambda hidden, layers, main: {"generator_hidden_size": hidden, "generator_layers": layers},
    "cocolm": lambda hidden, layers, main: {"generator_width_ratio": hidden / main.hidden_size,
                                            "generator_layers": layers},
}
"""Objective name -> the `objective.*` fields that give its generator a width and a depth."""


class GeneratorInit(NamedTuple):
    source: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    stored: dict[str, Tensor]                  # the directory's tensors, by transformers' names


def read_init_generator(path: str | Path, main: EncoderConfig, tokenizer: Tokenizer) -> GeneratorInit:
    """An ELECTRA generator directory (`ElectraForMaskedLM`) for the encoder `main` (the --init model)
    and its `tokenizer`: UserError when it is not one, or when its embedding width, vocabulary,
    positions or token types differ from the encoder's (it shares the encoder's embeddings)."""
    from ..checkpoint import read_hf_config, read_hf_tokenizer, read_tensors

    path = Path(path).expanduser()
    config, family = read_hf_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{path} has no model.safetensors; save the generator with safe_serialization=True")
    stored = read_tensors(weights, "")
    if family.name != "electra" or "generator_predictions.dense.weight" not in stored:
        raise UserError(f"{path} is not an ELECTRA generator (ElectraForMaskedLM with generator_predictions.*); "
                        "--init-generator takes a directory such as electra-base-generator's")
    if config.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{path}/config.json has hidden_act={config['hidden_act']!r}; unimask generators use exact GELU")
    theirs = {"embedding_size": config.get("embedding_size", config.get("hidden_size")),
              "vocab_size": config.get("vocab_size"), "max_position_embeddings": config.get("max_position_embeddings"),
              "type_vocab_size": config.get("type_vocab_size")}
    ours = {"embedding_size": embedding_width(main), "vocab_size": main.vocab_size,
            "max_position_embeddings": main.max_positions, "type_vocab_size": main.type_vocab_size}
    for key, value in theirs.items():
        if value != ours[key]:
            raise UserError(f"--init-generator {path} has {key}={value} and the encoder has {ours[key]}; the generator "
                            "shares the encoder's embeddings: pass the generator released with that encoder")
    if any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "vocab.json")):
        if read_hf_tokenizer(path).get_vocab(with_added_tokens=True) != tokenizer.get_vocab(with_added_tokens=True):
            raise UserError(f"--init-generator {path} has another vocabulary than the encoder's tokenizer; pass the "
                            "generator released with that encoder")
    try:
        shape = [int(config[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}/config.json lacks a usable {e}; the directory is damaged") from None
    return GeneratorInit(str(path), *shape, stored)


def generator_fields(objective_name: str, gen: GeneratorInit, main: EncoderConfig) -> dict[str, object]:
    """The `objective.*` values that build a generator of `gen`'s width and depth (GENERATOR_SHAPES)."""
    if objective_name not in GENERATOR_SHAPES:
        raise UserError(f"--init-generator is for objectives with a generator ({', '.join(GENERATOR_SHAPES)}), "
                        f"not {objective_name}; drop it")
    return GENERATOR_SHAPES[objective_name](gen.hidden_size, gen.num_layers, main)


def check_objective_overrides(fields: dict[str, object], objective_cfg: object, source: str) -> None:
    """`--set objective.*` must not change what `generator_fields` took from the generator directory."""
    for name, value in fields.items():
        if getattr(objective_cfg, name) != value:
            raise UserError(f"--set objective.{name}={getattr(objective_cfg, name)} contradicts --init-generator "
                            f"{source}, whose generator gives {name}={value}; drop that --set")


def apply_init_generator(objective: nn.Module, word_embeddings: Tensor, gen: GeneratorInit) -> list[str]:
    """Load `gen` into `objective.generator` (an `MLMGenerator`: embedding projection, blocks, LM head;
    GENERATOR_TO_ELECTRA); returns warnings (the generator's embedding tables differ from the encoder's
    `word_embeddings` (V, E), which are the ones used). UserError when the generator's heads / FFN width or tensors do not fit."""
    generator = objective.generator
    built = generator.blocks.config
    if (built.num_heads, built.intermediate_size) != (gen.num_heads, gen.intermediate_size):
        raise UserError(f"--init-generator {gen.source} has {gen.num_heads} heads and FFN width {gen.intermediate_size}; "
                        f"unimask builds a {gen.hidden_size}-wide generator with {built.num_heads} and "
                        f"{built.intermediate_size} (heads of 64 dimensions, FFN 4x)")
    names = list(generator.state_dict())
    try:
        theirs = list(rename(dict.fromkeys(names, torch.empty(0)), GENERATOR_TO_ELECTRA))
    except KeyError as e:
        raise UserError(f"--init-generator {gen.source}: this generator has parameters an ELECTRA generator lacks "
                        f"({e.args[0]}); the encoder must be ELECTRA-shaped (post-LN, absolute positions)") from None
    missing = [name for name in theirs if name not in gen.stored]
    if missing:
        raise UserError(f"--init-generator {gen.source}/model.safetensors lacks {', '.join(missing[:3])}"
                        f"{' and more' if len(missing) > 3 else ''}; the directory is damaged")
    try:
        generator.load_state_dict({ours: gen.stored[name] for name, ours in zip(theirs, names)}, strict=True)
    except RuntimeError as e:
        raise UserError(f"--init-generator {gen.source} does not fit the generator ({str(e).splitlines()[-1].strip()})") from None
    shared = gen.stored.get("electra.embeddings.word_embeddings.weight")
    if shared is not None and not torch.equal(shared.to(word_embeddings.dtype), word_embeddings):
        return [f"{gen.source}'s embedding tables differ from the encoder's; the generator uses the encoder's "
                "(ELECTRA shares them)"]
    return []
