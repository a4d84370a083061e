"""The objective registry: a new objective is one file plus one line here."""

from .base import Objective, ObjectiveOutput, PretrainModel, TokenBatch, Vocab
from .cocolm import CocoLM
from .electra import Electra
from .maelm import MAELM
from .mlm import MLM
from .pmlm import PMLM

OBJECTIVES: dict[str, type[Objective]] = {
    "mlm": MLM,
    "cocolm": CocoLM,
    "maelm": MAELM,
    "electra": Electra,
    "pmlm": PMLM,
}

__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "PretrainModel", "TokenBatch", "Vocab"]
