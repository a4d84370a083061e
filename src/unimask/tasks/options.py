"""The flags of the task commands (finetune, predict, probe, generate), made from the Config dataclasses
of tasks/configs.py so commands never restate their fields; torch-free, so `--help` answers at once.

Each field becomes `--field-name` (or `metadata["flag"]`), typed from its annotation, helped by
`metadata["help"]` (`metadata["cli"] = False`: no flag); `metadata["predict"] = True` also offers it on `unimask predict`
and `generate` (settings that change how a fine-tuned model is *used*, not what it *is*), and
`metadata["deprecated_flags"]` keeps old names working with a warning. A nested dataclass field (seq2seq's
`generation`) contributes its own fields. Flags default to None, so `config_from_args` can tell
"not given" from a value and lay what was given over a base (the defaults, or a model's saved options).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

from ..errors import UserError
from ..runtime import PRECISIONS
from .configs import DEFAULT_MAX_LENGTH, FinetuneConfig, GenerationConfig, ProbeConfig, SentenceConfig


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


class DeprecatedFlag(argparse.Action):
    """An old flag name that still works: it stores into the new flag's destination, with a warning."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated and will go; use {self.new_flag}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                         seen: set[str], predict: bool = False) -> None:
    """Add a flag for every field of `cls` (with `predict`, only those marked for predict, whose default
    is the fine-tuned model's) not in `seen`."""
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
        shown = " (default: as fine-tuned)" if predict else "" if default is None else f" (default: {_shown(default)})"
        if kind is tuple:
            kind, extra = _comma_separated, {"metavar": "A,B,..."}
        else:
            choices = field.metadata.get("choices")
            extra = {"choices": choices, "metavar": None if choices else flag.lstrip("-").replace("-", "_").upper()}
        parser.add_argument(flag, dest=dest_of(field), default=None, type=kind, help=help_text + shown, **extra)
        for old in () if predict else field.metadata.get("deprecated_flags", ()):
            parser.add_argument(old, dest=dest_of(field), type=kind, action=DeprecatedFlag, new_flag=flag)


def _comma_separated(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


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


# ---- the commands' flags ---------------------------------------------------------------------------

def add_model_and_data_arguments(p: argparse.ArgumentParser, tasks: list[str], command: str) -> None:
    """--checkpoint, --task, the data files, --out, --overwrite, --name, --random-init (finetune, probe)."""
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a unimask run directory or checkpoint (any objective), or a transformers BERT, RoBERTa or "
                        "ELECTRA directory")
    p.add_argument("--task", required=True, choices=tasks, metavar="TASK", help=", ".join(tasks))
    p.add_argument("--data", metavar="DIR", help="GLUE tasks: the task's folder with train.tsv and dev.tsv")
    p.add_argument("--train", metavar="FILE", help="classify / regress / squad: the training file; seq2seq: a JSONL file")
    p.add_argument("--dev", metavar="FILE", help="classify / regress / squad: the evaluation file; seq2seq: a JSONL file")
    p.add_argument("--out", metavar="DIR", help=f"output directory (default: runs/{command}/TASK-MODEL)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    p.add_argument("--name", help="the model's name in results and reports (default: the checkpoint's folder)")
    p.add_argument("--random-init", action="store_true",
                   help="the checkpoint's architecture and tokenizer with random weights (the no-pretraining baseline)")


def finetune_arguments(p: argparse.ArgumentParser) -> None:
    """`unimask finetune`: the model and data, the sweep and loop (FinetuneConfig), every task's Config."""
    from . import task_configs
    add_model_and_data_arguments(p, list(task_configs()), "finetune")
    p.add_argument("--train-src", metavar="FILE", help="seq2seq: training sources, one per line")
    p.add_argument("--train-tgt", metavar="FILE", help="seq2seq: training targets, line-aligned with --train-src")
    p.add_argument("--dev-src", metavar="FILE", help="seq2seq: evaluation sources, one per line")
    p.add_argument("--dev-tgt", metavar="FILE", help="seq2seq: evaluation references, line-aligned with --dev-src")
    d = FinetuneConfig()
    p.add_argument("--lr", type=float, nargs="+", default=list(d.lrs), help="learning rates to sweep")
    p.add_argument("--seed", type=int, nargs="+", default=list(d.seeds), help="seeds to sweep")
    p.add_argument("--epochs", type=float, default=d.epochs, help="passes over the training data (fractions allowed)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training examples per step")
    special = "; ".join(f"{task} {length}" for task, length in DEFAULT_MAX_LENGTH.items())
    p.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per input, longer inputs are truncated (default: {d.max_length}; {special}; "
                        "seq2seq: source + target tokens; generated tokens are --max-new-tokens)")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="share of the steps spent warming up")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--layer-decay", type=float, default=d.layer_decay, help="layer-wise lr decay factor (1 = off)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="the head's dropout")
    p.add_argument("--encoder-dropout", type=float, default=d.encoder_dropout,
                   help="the encoder's hidden and attention dropout while fine-tuning (the checkpoint's is ignored)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between evaluations (0: each epoch)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop a run after this many evaluations without improvement (0: never)")
    p.add_argument("--max-train-examples", type=int, default=d.max_train_examples,
                   help="train on the first N examples (0: all); with --epochs 1, a quick try")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    seen: set[str] = set()
    for config in dict.fromkeys(task_configs().values()):       # each task config once
        add_config_arguments(p.add_argument_group(f"{config.__name__} (tasks/configs.py)"), config, seen)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """--precision and --device, as runtime.py reads them."""
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where it is faster (CUDA, CPUs with bf16 instructions), else fp32")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N")


def predict_arguments(p: argparse.ArgumentParser) -> None:
    """`unimask predict`: a fine-tuned model, inputs and outputs, and the settings a model may be used with."""
    from . import task_configs
    p.add_argument("--model", "--checkpoint", dest="checkpoint", required=True, metavar="FT_RUN",
                   help="the --out directory of `unimask finetune` (or its best/)")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="sentence tasks: TSV, CSV or JSONL; squad: a SQuAD JSON; seq2seq: sources, one per line, or JSONL")
    p.add_argument("--output", metavar="FILE", help="where predictions go (default: standard output)")
    p.add_argument("--glue-submission", metavar="DIR",
                   help="GLUE models: write the leaderboard file (e.g. SST-2.tsv: index<TAB>prediction) into DIR")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per batch")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    seen: set[str] = set()
    add_generation_arguments(p.add_argument_group("seq2seq models (as `unimask generate`)"), seen)
    for config in dict.fromkeys(task_configs().values()):
        add_config_arguments(p, config, seen, predict=True)


def probe_arguments(p: argparse.ArgumentParser) -> None:
    """`unimask probe`: the classification tasks' model and data flags, ProbeConfig and the columns."""
    from . import task_configs
    add_model_and_data_arguments(p, [name for name, config in task_configs().items() if config is SentenceConfig],
                                 "probe")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p.add_argument_group("probe (tasks/configs.py ProbeConfig)"), ProbeConfig, set())
    add_config_arguments(p.add_argument_group("columns (tasks/configs.py SentenceConfig)"), SentenceConfig, {"--pooling"})


def generate_arguments(p: argparse.ArgumentParser) -> None:
    """`unimask generate`: a seq2seq model, its sources, and the decoding settings."""
    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, metavar="FT_RUN",
                   help="the --out directory of `unimask finetune --task seq2seq` (or its best/)")
    p.add_argument("--input", required=True, metavar="FILE",
                   help='sources, one per line, or a JSONL file with "src" (and optional "tgt" references); '
                        "- reads standard input")
    p.add_argument("--output", metavar="FILE", help="write one output per line here (default: standard output)")
    p.add_argument("--batch-size", type=int, default=32, help="sources decoded together")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N")
    add_generation_arguments(p)


def add_generation_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, seen: set[str] | None = None) -> None:
    """The decoding options (GenerationConfig's fields, default: as fine-tuned), --references and --no-cache;
    the flags added join `seen`."""
    p.add_argument("--references", metavar="FILE", help="reference outputs, line-aligned with --input: print scores")
    add_config_arguments(p, GenerationConfig, set() if seen is None else seen, predict=True)
    p.add_argument("--max-length", dest="max_new_tokens", type=int, action=DeprecatedFlag, new_flag="--max-new-tokens")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole prefix at every step instead of reusing keys/values (slower; same outputs)")
