"""Read-only access to a directory written by `unimask prepare`, without loading the corpus into RAM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from unimask.data.prepare import FORMAT
from unimask.errors import UserError

_HINT = "run `unimask prepare --text FILES --out DIR` first"


class TokenStore:
    """One split (`train` or `valid`) of a prepared directory.

    `tokens` is the flat id stream (every document followed by one [SEP]); document `i` spans
    `tokens[doc_offsets[i]:doc_offsets[i + 1]]`, its [SEP] included.
    """

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory = Path(directory)
        self.split = split
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.is_file():
            raise UserError(f"{self.directory} has no manifest.json; {_HINT}")
        try:
            self.manifest: dict = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{manifest_path} is not valid JSON ({e.msg}); {_HINT}") from None
        if self.manifest.get("format") != FORMAT:
            raise UserError(
                f"{manifest_path} has format {self.manifest.get('format')!r}, expected {FORMAT!r}; {_HINT}"
            )
        if split not in self.manifest.get("splits", {}):
            raise UserError(f"{self.directory} has no split {split!r}; {_HINT}")
        bin_path = self.directory / f"{split}.bin"
        idx_path = self.directory / f"{split}.idx.npy"
        for path in (bin_path, idx_path):
            if not path.is_file():
                raise UserError(f"{path} is missing; {_HINT}")

        dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        num_tokens = bin_path.stat().st_size // dtype.itemsize
        self.tokens: np.ndarray = (
            np.memmap(bin_path, dtype=dtype, mode="r", shape=(num_tokens,))
            if num_tokens
            else np.empty(0, dtype=dtype)
        )
        self.doc_offsets: np.ndarray = np.load(idx_path, mmap_mode="r")
        expected = self.manifest["splits"][split]["num_tokens"]
        if num_tokens != expected or int(self.doc_offsets[-1]) != expected:
            raise UserError(
                f"{bin_path} holds {num_tokens} tokens but the manifest says {expected}; the directory is "
                f"damaged, {_HINT} with --overwrite"
            )
        self.special_ids: dict[str, int] = dict(self.manifest["special_ids"])
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self._tokenizer: Tokenizer | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer that produced these ids (loaded once from `tokenizer.json`)."""
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        return self._tokenizer

    def word_start_mask(self) -> torch.Tensor:
        """(vocab_size,) bool: True where a token begins a word (no "##" prefix); specials are True.

        Used by whole-word masking: a word is a word-start token followed by its "##" pieces.
        """
        mask = torch.ones(self.vocab_size, dtype=torch.bool)
        continuation = [i for token, i in self.tokenizer().get_vocab().items() if token.startswith("##")]
        mask[torch.tensor(continuation, dtype=torch.long)] = False
        mask[list(self.special_ids.values())] = True
        return mask
