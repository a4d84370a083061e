"""The run configuration: small dataclasses composed into one RunConfig, with `--set a.b=value`.

Each component keeps its own Config next to its code (EncoderConfig in model/encoder.py, the
objective's in its file, DataConfig in data/loader.py, TrainConfig in train/loop.py); this file
only composes them, serialises them and applies typed overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .data.loader import DataConfig
from .errors import UserError
from .model.encoder import EncoderConfig
from .model.sizes import ENCODER_SIZES
from .objectives import OBJECTIVES
from .objectives.mlm import MLMConfig
from .train.loop import TrainConfig


@dataclass
class RunConfig:
    objective_name: str = "mlm"
    size: str = "mini"                  # an ENCODER_SIZES preset; model.* overrides come after it
    model: EncoderConfig = field(default_factory=EncoderConfig)
    objective: Any = field(default_factory=MLMConfig)   # OBJECTIVES[objective_name].Config
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: str = ""                      # --init: the checkpoint / transformers directory the weights came from
    init_family: str = ""               # the transformers family (bert, roberta, electra) --init's weights came from
    init_generator: str = ""            # --init-generator: the ELECTRA generator directory of ELECTRA's / COCO-LM's generator

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sized(size: str, **model_fields) -> EncoderConfig:
    if size not in ENCODER_SIZES:
        raise UserError(f"unknown size {size!r}; choose one of {', '.join(ENCODER_SIZES)}")
    return EncoderConfig(**{**ENCODER_SIZES[size], **model_fields})


def _strict(cls, values: dict, where: str):
    """Build dataclass `cls` from a dict, naming any unknown key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key {where}.{unknown[0]}; known keys: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid {where} config: {e}") from None


def from_dict(d: dict) -> RunConfig:
    """Inverse of RunConfig.to_dict, strict about keys (used to read a run's config.json)."""
    d = dict(d)
    name = d.get("objective_name", "mlm")
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    parts = {"model": EncoderConfig, "objective": OBJECTIVES[name].Config, "data": DataConfig, "train": TrainConfig}
    for key, cls in parts.items():
        if key in d:
            d[key] = _strict(cls, d[key], key)
    return _strict(RunConfig, d, "run")


# ---- --set overrides -------------------------------------------------------------------------

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse `text` as type `tp` (int, float, bool, str, Literal, Optional, or a tuple of one of them
    written comma-separated: `1000,5000`; `()` or nothing for none) or raise UserError."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        items = [t.strip() for t in text.strip().strip("()[]").split(",") if t.strip()]
        return tuple(parse_value(t, typing.get_args(tp)[0], key) for t in items)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise UserError(f"--set {key}={text}: expected one of {', '.join(map(str, choices))}")
        return text
    try:
        if tp is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise UserError(f"--set {key}={text}: expected {tp.__name__}") from None
    raise UserError(f"--set {key}: this field cannot be set from the command line")


def _field_types(obj) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def apply_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `a.b=value` strings. `objective_name` and `size` go first (they reset their parts)."""
    pairs = []
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
        pairs.append((key.strip(), value.strip()))
    first = [p for p in pairs if p[0] in ("objective_name", "size")]
    for key, value in first:
        cfg = _apply_one(cfg, key, value)
    # the fields of one part are validated together, so `model.num_heads=3 model.hidden_size=96`
    # works in either order (each part's __post_init__ only sees the final combination)
    changes: dict[str, dict[str, Any]] = {}
    for key, value in [p for p in pairs if p not in first]:
        part, name, parsed = _parse_one(cfg, key, value)
        changes.setdefault(part, {})[name] = parsed
    for part, fields in changes.items():
        try:
            new = dataclasses.replace(getattr(cfg, part), **fields)
        except ValueError as e:
            sets = " ".join(f"{part}.{k}" for k in fields)
            raise UserError(f"--set {sets}: {e}") from None
        cfg = dataclasses.replace(cfg, **{part: new})
    return cfg


def _apply_one(cfg: RunConfig, key: str, value: str) -> RunConfig:
    if key == "objective_name":
        if value not in OBJECTIVES:
            raise UserError(f"--set objective_name={value}: choose one of {', '.join(OBJECTIVES)}")
        return dataclasses.replace(cfg, objective_name=value, objective=OBJECTIVES[value].Config())
    # key == "size"
    keep = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ENCODER_SIZES.get(value, {})}
    return dataclasses.replace(cfg, size=value, model=sized(value, **keep))


def _parse_one(cfg: RunConfig, key: str, value: str) -> tuple[str, str, Any]:
    """`part.name`, text -> (part, name, typed value), or a UserError naming the key."""
    part, _, name = key.partition(".")
    parts = {"model": cfg.model, "objective": cfg.objective, "data": cfg.data, "train": cfg.train}
    if part not in parts or not name:
        known = list(parts) + ["objective_name", "size"]
        hint = difflib.get_close_matches(part, known, 1)
        raise UserError(f"unknown config key {key!r}{f' (did you mean {hint[0]}?)' if hint else ''}; "
                        f"keys look like train.lr, model.hidden_size, objective.mask_prob")
    target = parts[part]
    types_ = _field_types(target)
    if name not in types_:
        full = [f"{part}.{n}" for n in types_]
        hint = difflib.get_close_matches(key, full, 1)
        raise UserError(f"unknown config key {key!r}{f' (did you mean {hint[0]}?)' if hint else ''}; "
                        f"known {part} keys: {', '.join(types_)}")
    return part, name, parse_value(value, types_[name], key)
