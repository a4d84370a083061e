"""Command-line flags made from a task's Config dataclass, so commands never restate its fields.

Each field becomes `--field-name` (or `metadata["flag"]`), typed from its annotation, helped by
`metadata["help"]` (`metadata["cli"] = False`: no flag); `metadata["predict"] = True` also offers it on `unimask predict` (settings that
change how a fine-tuned model is *used*, not what it *is*). A nested dataclass field (seq2seq's
`generation`) contributes its own fields. Flags default to None, so `config_from_args` can tell
"not given" from a value and lay what was given over a base (the defaults, or a model's saved options).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ..errors import UserError


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _base_type(hint: Any) -> Any:
    """int / float / str / bool / tuple / a dataclass, from `X`, `X | None` or `tuple[str, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    if args and origin is not None and origin is not tuple:     # Optional[X] / X | None
        return _base_type(args[0])
    return hint


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def dest_of(field: dataclasses.Field) -> str:
    """The argparse destination: the field name, unless `metadata["dest"]` avoids a command's own flag."""
    return field.metadata.get("dest", field.name)


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                         seen: set[str], predict: bool = False) -> None:
    """Add a flag for every field of `cls` (with `predict`, only those marked for predict) not in `seen`."""
    for field, hint in _fields(cls):
        kind = _base_type(hint)
        if dataclasses.is_dataclass(kind):
            add_config_arguments(parser, kind, seen, predict)
            continue
        flag = flag_of(field)
        if flag in seen or not field.metadata.get("cli", True) or (predict and not field.metadata.get("predict")):
            continue
        seen.add(flag)
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        if kind is bool:
            parser.add_argument(flag, dest=dest_of(field), action="store_const", const=True, default=None, help=help_text)
            continue
        shown = "" if default is None or predict else f" (default {default})"
        if kind is tuple:
            parser.add_argument(flag, dest=dest_of(field), default=None, metavar="A,B,...",
                                type=lambda text: tuple(part.strip() for part in text.split(",")),
                                help=help_text + shown)
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(flag, dest=dest_of(field), default=None, type=kind, choices=choices,
                                help=help_text + shown)


def config_from_args(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """An instance of `cls`: `base` (a dict of field values, e.g. saved task options), overridden by
    every flag that was given; missing fields take their defaults. A bad value is a one-line error."""
    values: dict[str, Any] = {}
    base = dict(base or {})
    for field, hint in _fields(cls):
        kind = _base_type(hint)
        if dataclasses.is_dataclass(kind):
            values[field.name] = config_from_args(kind, args, base.get(field.name) or {})
            continue
        given = getattr(args, dest_of(field), None)
        if given is not None:
            values[field.name] = given
        elif field.name in base:
            value = base[field.name]
            values[field.name] = tuple(value) if kind is tuple and value is not None else value
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{cls.__name__}: {e}") from None
