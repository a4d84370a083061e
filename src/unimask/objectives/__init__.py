"""The objective registry: a new objective is one file plus one line here."""

from .base import Objective, ObjectiveOutput, PretrainModel, TokenBatch, Vocab
from .mlm import MLM

OBJECTIVES: dict[str, type[Objective]] = {
    "mlm": MLM,
}

__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "PretrainModel", "TokenBatch", "Vocab"]
