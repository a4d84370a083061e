"""`unimask pretrain --init PATH`: continue pretraining from released weights.

PATH is a unimask run directory or checkpoint, or a transformers directory of a family in
model/families.py (BERT, RoBERTa, ELECTRA discriminator). The encoder's weights and its architecture
come from PATH; heads the objective shares with PATH come too (`INIT_HEADS`: MLM and PMLM start from
BERT's / RoBERTa's / a unimask MLM run's LM head, ELECTRA from an ELECTRA discriminator's RTD head);
everything else the objective owns (generators, MAE-LM's decoder) is built fresh, and the optimizer,
scheduler and step start at zero. A run that already has a checkpoint resumes from it (--resume)
and never reads PATH again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from tokenizers import Tokenizer
from torch import Tensor, nn

from ..errors import UserError
from ..model.encoder import EncoderConfig

INIT_HEADS: dict[str, dict[str, str]] = {
    "mlm": {"lm": "head"},
    "pmlm": {"lm": "head"},
    "electra": {"rtd": "rtd_head"},
}
"""Objective name -> {head kind in the init checkpoint: the objective's attribute it loads into}."""

_RUN_HEADS: dict[str, tuple[str, str]] = {
    "mlm": ("lm", "objective.head."),
    "pmlm": ("lm", "objective.head."),
    "electra": ("rtd", "objective.rtd_head."),
}
"""A unimask run's objective -> (head kind, its prefix in model.safetensors)."""

FREE_FIELDS = ("dropout", "attention_dropout")
"""`model.*` fields a --set may change on top of --init (everything else is the checkpoint's architecture)."""


class Init(NamedTuple):
    source: str
    state: dict[str, Tensor]                   # Encoder state dict
    config: EncoderConfig
    tokenizer: Tokenizer
    heads: dict[str, dict[str, Tensor]]        # "lm" / "rtd" -> head state dict


def read_init(path: str | Path) -> Init:
    """The weights, architecture, tokenizer and carried heads of a unimask checkpoint / run or a
    transformers directory (export.hf.load_hf_model); UserError naming what is wrong."""
    from ..checkpoint import (find_checkpoint, is_hf_directory, load_encoder, load_hf_model, read_config,
                              read_tensors, read_tokenizer)

    path = Path(path).expanduser()
    if is_hf_directory(path):
        loaded = load_hf_model(path)
        return Init(str(path), loaded.encoder.state_dict(), loaded.config, loaded.tokenizer, loaded.heads)
    checkpoint = find_checkpoint(path)
    encoder, cfg = load_encoder(checkpoint)
    tokenizer = read_tokenizer(checkpoint / "tokenizer.json", cfg)
    heads = {}
    kind_prefix = _RUN_HEADS.get(read_config(checkpoint).get("objective_name"))
    if kind_prefix is not None:
        state = read_tensors(checkpoint / "model.safetensors", kind_prefix[1])
        if state:
            heads[kind_prefix[0]] = state
    return Init(str(checkpoint), encoder.state_dict(), cfg, tokenizer, heads)


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
