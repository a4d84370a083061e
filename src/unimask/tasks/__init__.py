"""The fine-tuning tasks, one registry for every command (finetune, predict, export, generate).

A task is one file: a `Task` subclass (tasks/base.py), `build(name, config, args)` (the task with its
data files, for finetune), `load(name, finetune.json)` (the task without data, for predict and export)
and `predict_file(model, args)` (`unimask predict` on a file). Its Config dataclass, whose fields
become the `unimask finetune` flags (tasks/options.py), sits in tasks/configs.py, which imports no
torch. A new task is that file, its Config, and one line in each of `task_configs` and `_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class TaskKind:
    """How the commands handle one kind of task."""

    config: type                                  # its Config dataclass
    build: Callable[[str, Any, Any], Any]         # (name, config, parsed args with the data flags) -> Task
    load: Callable[[str, dict], Any]              # (name, finetune.json) -> Task without data files
    predict_file: Callable[[Any, Any], int]       # (predict.Finetuned, parsed args) -> exit status


def task_configs() -> dict[str, type]:
    """Task name -> its Config dataclass (tasks/configs.py): what the commands' flags are made from,
    without importing torch (so `--help` answers at once)."""
    from .configs import GLUE, SentenceConfig, Seq2SeqConfig, SquadConfig
    return {**{name: SentenceConfig for name in GLUE}, "classify": SentenceConfig, "regress": SentenceConfig,
            "squad": SquadConfig, "seq2seq": Seq2SeqConfig}


def _registry() -> dict[str, TaskKind]:
    from . import generate, glue, predict, seq2seq, squad
    kinds = [TaskKind(glue.SentenceConfig, glue.build, glue.load, predict.predict_sentences),
             TaskKind(squad.SquadConfig, squad.build, squad.load, predict.predict_squad),
             TaskKind(seq2seq.Seq2SeqConfig, seq2seq.build, seq2seq.load, generate.generate_from)]
    by_config = {kind.config: kind for kind in kinds}
    return {name: by_config[config] for name, config in task_configs().items()}


def tasks() -> dict[str, TaskKind]:
    """Task name -> TaskKind (built on first use: the task modules import torch)."""
    global _TASKS
    if _TASKS is None:
        _TASKS = _registry()
    return _TASKS


_TASKS: dict[str, TaskKind] | None = None
