"""Read-only access to a directory written by `unimask prepare`, without loading the corpus into RAM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tokenizers import Tokenizer

from unimask.data.prepare import FORMAT, damaged_data
from unimask.errors import UserError

_HINT = "run `unimask prepare --text FILES --out DIR` first"

# The byte-level alphabet (GPT-2's bytes_to_unicode, the `tokenizers` ByteLevel pre-tokenizer) shows
# the bytes 0-32 as chr(256 + byte): a space is "Ġ", a newline "Ċ", a tab "ĉ".
_BYTE_LEVEL_SPACES = tuple(chr(256 + b) for b in b" \t\n\x0b\x0c\r")


def _parts(component: dict | None, key: str) -> list[dict]:
    """A normalizer / pre-tokenizer from tokenizer.json and, for a `Sequence`, the ones inside it."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [part for inner in component.get(key) or [] for part in _parts(inner, key)]
    return [component]


def _word_start_rule(spec: dict) -> Callable[[str], bool] | None:
    """token -> starts a word, from a tokenizer.json dict; None when it has no convention."""
    model = spec.get("model") or {}
    if model.get("type") == "WordLevel":                              # a token is a whole pre-token
        return lambda token: True
    prefix = model.get("continuing_subword_prefix")                   # WordPiece "##", some BPEs
    if prefix:
        return lambda token: not token.startswith(prefix)
    for part in _parts(spec.get("pre_tokenizer"), "pretokenizers"):
        if part.get("type") == "Metaspace" and part.get("replacement"):
            return lambda token, marker=part["replacement"]: token.startswith(marker)
        if part.get("type") == "ByteLevel":
            return lambda token: token.startswith(_BYTE_LEVEL_SPACES)
    for part in _parts(spec.get("normalizer"), "normalizers"):       # "▁" put in by the normalizer
        if part.get("type") == "Prepend" and part.get("prepend"):
            return lambda token, marker=part["prepend"]: token.startswith(marker)
        if part.get("type") == "Replace" and (part.get("pattern") or {}).get("String") == " " and part.get("content"):
            return lambda token, marker=part["content"]: token.startswith(marker)
    return None


def word_start_table(tokenizer: Tokenizer, where: str = "the tokenizer") -> torch.Tensor:
    """(vocab_size,) bool: True where a token begins a word, by the tokenizer's own convention.

    Read from its tokenizer.json, the first that applies:
    - a WordLevel model: every token is a word (the pre-tokenizer's unit);
    - a model `continuing_subword_prefix` (WordPiece "##" as in BERT, or a BPE with one): a token
      without the prefix starts a word, as in BERT's create_pretraining_data.py;
    - a Metaspace pre-tokenizer (SentencePiece style, a space shown as "▁"), also inside a
      Sequence: a token that starts with "▁" starts a word, the others continue one;
    - a ByteLevel pre-tokenizer (GPT-2, RoBERTa): a token that starts with a byte-level space ("Ġ")
      starts a word, as in fairseq's whole-word masking for GPT-2 BPE, and so does one that starts
      with other byte-level whitespace ("Ċ" for a newline, "ĉ" for a tab);
    - a normalizer that prepends "▁" or turns spaces into it (Llama style): as Metaspace.
    Punctuation without a space marker therefore continues the word before it, as in fairseq; the
    first word of a text may lack the marker, but whole-word masking starts a word after any special
    token anyway. Added tokens ([CLS], [MASK], ...) are words of their own. A BPE that only marks
    word ends (`end_of_word_suffix`, "</w>") has no per-token start and is refused like one with
    no convention: UserError naming `where` (the tokenizer file) and the fix.
    """
    spec = json.loads(tokenizer.to_str())
    starts_word = _word_start_rule(spec)
    if starts_word is None:
        raise UserError(
            f"{where} marks no word starts (no '##' continuation prefix, Metaspace '▁' or byte-level 'Ġ' "
            f"pieces), so whole-word masking cannot find words; use objective.masking=token or span, "
            f"or prepare the data with a tokenizer that has such pieces"
        )
    table = torch.zeros(tokenizer.get_vocab_size(), dtype=torch.bool)   # (V,)
    starts = [i for token, i in tokenizer.get_vocab().items() if starts_word(token)]
    table[torch.tensor(starts, dtype=torch.long)] = True
    table[[added["id"] for added in spec.get("added_tokens") or []]] = True
    return table


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
        if (problem := damaged_data(self.directory, self.manifest, [split])) is not None:
            raise self._damaged(problem)
        bin_path = self.directory / f"{split}.bin"
        dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        num_tokens = bin_path.stat().st_size // dtype.itemsize
        self.tokens: np.ndarray = (
            np.memmap(bin_path, dtype=dtype, mode="r", shape=(num_tokens,))
            if num_tokens
            else np.empty(0, dtype=dtype)
        )
        try:
            self.doc_offsets: np.ndarray = np.load(self.directory / f"{split}.idx.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise self._damaged(f"{split}.idx.npy is not a readable .npy file ({e})") from None
        expected = self.manifest["splits"][split]["num_tokens"]
        if num_tokens != expected or not self.doc_offsets.size or int(self.doc_offsets[-1]) != expected:
            raise self._damaged(f"{bin_path.name} holds {num_tokens} tokens but manifest.json says {expected}")
        self.special_ids: dict[str, int] = dict(self.manifest["special_ids"])
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self._tokenizer: Tokenizer | None = None

    def _damaged(self, problem: str) -> UserError:
        """The one-line error for a damaged file of this directory: what is wrong, and the fix."""
        return UserError(f"{self.directory} is damaged: {problem}; re-run `unimask prepare` with the same --text "
                         f"and --out {self.directory} to rebuild it")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer that produced these ids (loaded once from `tokenizer.json`)."""
        if self._tokenizer is None:
            try:
                self._tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
            except Exception as e:      # the tokenizers library raises plain Exception
                raise self._damaged(f"tokenizer.json is not a readable tokenizer ({e})") from None
            self._tokenizer.no_padding()            # settings a reused tokenizer.json may carry
            self._tokenizer.no_truncation()
        return self._tokenizer

    def word_start_mask(self) -> torch.Tensor:
        """(vocab_size,) bool: True where a token begins a word (see `word_start_table`); specials are True.

        Used by whole-word masking. Raises UserError naming tokenizer.json when the tokenizer has
        no word-start convention, so call it only when whole-word masking is asked for.
        """
        where = str(self.directory / "tokenizer.json")
        source = (self.manifest.get("config") or {}).get("tokenizer")
        if source:                                          # prepared with --tokenizer: name the user's file
            where += f" (from --tokenizer {source})"
        mask = word_start_table(self.tokenizer(), where)
        mask[list(self.special_ids.values())] = True
        return mask
