"""unimask: pretrain BERT-style encoders with the masked/corrupted-text family of objectives."""

__version__ = "0.1.0"
