"""`unimask prepare`: raw text -> WordPiece tokenizer -> flat memory-mapped token arrays.

Output directory (read by :class:`unimask.data.store.TokenStore`)::

    tokenizer.json                 BERT-style WordPiece tokenizer, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
    train.bin, valid.bin           raw little-endian uint16/uint32 ids: every document's ids, then one [SEP]
    train.idx.npy, valid.idx.npy   int64 document start offsets, length n_docs + 1 (last = total tokens)
    manifest.json                  format, dtype, vocab, counts, source checksums, config, how it split,
                                   and the size and SHA-256 of each file above ("files")

Held-out text is chosen by tokens, not by documents, so `valid_fraction` is a share of the tokens
whatever the document lengths (one book per file is one document): a document of fewer than
2 * PIECE_TOKENS tokens goes whole to one split by a hash of its text; a longer one is cut into
pieces of about PIECE_TOKENS tokens (at line starts where one is near, else at a token position) and
every 1/valid_fraction-th piece is held out, from a phase set by a hash of the document. Adjacent
pieces that land in the same split stay one document there. A corpus too small to give
MIN_VALID_TOKENS that way has the end of its train stream moved to valid, up to MIN_VALID_SHARE of
its tokens. Documents that tokenize to nothing (only characters the normalizer deletes, such as
zero-width spaces) are dropped and counted per file.

Everything is written into a hidden sibling directory and renamed into place at the end, so a failed
run never leaves a half-written output.

The tokenizer is trained on all documents (train and valid). `tokenizers`' WordPiece trainer is not
bit-reproducible (the ids of "##" pieces and ties between merges follow hash-map order, upstream
huggingface/tokenizers#1794), so two trainings on the same text can give different ids; the token
arrays are deterministic given a tokenizer, so pass `--tokenizer` to reproduce a dataset exactly.
"""

from __future__ import annotations

import argparse
import bisect
import codecs
import collections
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from tokenizers import (
    Encoding, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
)

from unimask import __version__
from unimask.errors import UserError
from unimask.rundir import claim, damaged_file, file_records, guard_disk, sha256_file

FORMAT = "unimask-tokens/1"
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
DOC_SPLITS = ("blank_line", "line", "file")
INVALID_UTF8_MODES = ("replace", "error")
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
READ_CHARS = 1 << 22  # text read per step while streaming a file
BATCH_CHARS = 1 << 23  # documents handed to encode_batch at once; bounds peak memory
TRAIN_BATCH_CHARS = 1 << 20  # documents handed to the trainer at once
HASH_BLOCK = 1 << 20
SPLIT_METHOD = "pieces"  # recorded in the manifest; a directory split another way is not up to date
PIECE_TOKENS = 512  # held-out routing unit of a long document, tokens: one 512-token block of text
MIN_VALID_TOKENS = 2048  # held-out floor when valid_fraction > 0: 4 blocks of 512 or 16 of 128 tokens
MIN_VALID_SHARE = 0.05  # ... but the floor never takes more than this share of the corpus's tokens
CUT_MEMORY = 64  # piece starts remembered at the end of the train stream (a few MIN_VALID_TOKENS' worth)
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
T = TypeVar("T")


@dataclass
class PrepareConfig:
    """How to turn raw text into token arrays."""

    vocab_size: int = 30522
    lowercase: bool = True
    min_frequency: int = 2
    text_field: str = "text"  # for .jsonl inputs: each record is one document
    doc_split: str = "blank_line"  # for .txt/.txt.gz: "blank_line" | "line" | "file"
    valid_fraction: float = 0.01  # share of the tokens held out (whole documents or pieces of long ones)
    tokenizer: str | None = None  # an existing tokenizer.json to reuse instead of training one
    on_invalid_utf8: str = "replace"  # "replace" (U+FFFD, counted) | "error"


# ---------------------------------------------------------------- reading


class _HashingReader(io.RawIOBase):
    """Binary file wrapper that hashes and counts every byte read through it."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            view = memoryview(buffer)[:n]
            self.sha256.update(view)
            self.bytes += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the consumer left unread."""
        while block := self._raw.read(HASH_BLOCK):
            self.sha256.update(block)
            self.bytes += len(block)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _InvalidUtf8Counter:
    """A codecs error handler that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self, path: Path, mode: str):
        self.path = path
        self.mode = mode
        self.bad_bytes = 0
        self.name = f"unimask-prepare-{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, err: UnicodeError) -> tuple[str, int]:
        if not isinstance(err, UnicodeDecodeError):
            raise err
        if self.mode == "error":
            raise UserError(
                f"{self.path}: bytes {err.object[err.start:err.end]!r} are not valid UTF-8; "
                "fix the file or pass --on-invalid-utf8 replace"
            )
        self.bad_bytes += err.end - err.start
        return "\ufffd", err.end


@dataclass
class _Source:
    """One input file: its checksum, size and invalid-UTF-8 count once fully read."""

    path: Path
    bytes: int = 0
    sha256: str = ""
    invalid_utf8_bytes: int = 0
    empty_documents: int = 0  # documents that tokenize to nothing, dropped

    def record(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "sha256": self.sha256,
                "empty_documents": self.empty_documents}


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise UserError(
        f"{path}: unknown file type; use .txt, .txt.gz, .jsonl or .jsonl.gz (rename the file)"
    )


def _iter_chunks(text: io.TextIOBase) -> Iterator[str]:
    while chunk := text.read(READ_CHARS):
        yield chunk


def _text_documents(text: io.TextIOBase, doc_split: str) -> Iterator[str]:
    """Split a text stream into stripped, non-empty documents without reading it all at once."""
    if doc_split == "file":
        doc = text.read().strip()
        if doc:
            yield doc
        return
    separator = _BLANK_LINE if doc_split == "blank_line" else re.compile("\n")
    tail = ""
    for chunk in _iter_chunks(text):
        pieces = separator.split(tail + chunk)
        tail = pieces.pop()
        for piece in pieces:
            if doc := piece.strip():
                yield doc
    if doc := tail.strip():
        yield doc


def _jsonl_documents(text: io.TextIOBase, path: Path, field: str) -> Iterator[str]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{number}: not valid JSON ({e.msg}); each line must be one JSON object"
            ) from None
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise UserError(
                f"{path}:{number}: record has no string field {field!r}; "
                "name the text field with --text-field"
            )
        yield value.strip()      # a blank text is an empty document: dropped and counted like one


def _read_documents(source: _Source, cfg: PrepareConfig, log: Callable[[str], None]) -> Iterator[str]:
    """Yield the documents of one file; afterwards `source` holds its size, sha256 and bad-byte count."""
    counter = _InvalidUtf8Counter(source.path, cfg.on_invalid_utf8)
    with open(source.path, "rb") as raw:
        hashing = _HashingReader(raw)
        binary: BinaryIO = io.BufferedReader(hashing, HASH_BLOCK)
        if source.path.name.lower().endswith(".gz"):
            binary = gzip.GzipFile(fileobj=binary, mode="rb")
        text = io.TextIOWrapper(binary, encoding="utf-8", errors=counter.name)
        if _kind(source.path) == "jsonl":
            docs = _jsonl_documents(text, source.path, cfg.text_field)
        else:
            docs = _text_documents(text, cfg.doc_split)
        count = 0
        try:
            for doc in docs:
                count += 1
                yield doc
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise UserError(
                f"{source.path}: corrupt gzip data ({e}); re-download or decompress the file"
            ) from None
        hashing.drain()
    if count == 0:
        raise UserError(
            f"{source.path}: no documents (the file is empty or its text is blank); remove it from --text"
        )
    source.bytes, source.sha256 = hashing.bytes, hashing.sha256.hexdigest()
    source.invalid_utf8_bytes = counter.bad_bytes
    if counter.bad_bytes:
        log(f"warning: {source.path}: replaced {counter.bad_bytes} invalid UTF-8 bytes with U+FFFD")


def _all_documents(
    sources: list[_Source], cfg: PrepareConfig, log: Callable[[str], None]
) -> Iterator[tuple[int, str]]:
    """(index of the source file, document) for every document of every file, in order."""
    for i, source in enumerate(sources):
        for doc in _read_documents(source, cfg, log):
            yield i, doc


def _batches(items: Iterator[T], max_chars: int, chars_of: Callable[[T], int] = len) -> Iterator[list[T]]:
    """Groups of documents (or of items holding one) of about `max_chars` characters."""
    batch: list[T] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += chars_of(item)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------- tokenizer


def _new_tokenizer(lowercase: bool) -> Tokenizer:
    """An untrained BERT-style WordPiece tokenizer (accents stripped when lowercasing, as BERT does)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_post_processor(tokenizer: Tokenizer) -> None:
    cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )


def _train_tokenizer(docs: Iterator[str], cfg: PrepareConfig) -> Tokenizer:
    tokenizer = _new_tokenizer(cfg.lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tokenizer.train_from_iterator(_batches(docs, TRAIN_BATCH_CHARS), trainer)
    actual = tokenizer.get_vocab_size()
    if actual > cfg.vocab_size:
        raise UserError(
            f"--vocab-size {cfg.vocab_size} is too small: the special tokens and this corpus's alphabet "
            f"alone need {actual}; pass --vocab-size {actual} or more"
        )
    _add_post_processor(tokenizer)
    return tokenizer


def _special_tokens(tokenizer: Tokenizer, where: str) -> dict[str, str]:
    """The special tokens by role: BERT's [PAD] [UNK] [CLS] [SEP] [MASK], else RoBERTa's
    <pad> <unk> <s> </s> <mask> (model/families.py), whichever set the vocabulary holds whole."""
    from unimask.model.families import BERT_SPECIAL_TOKENS, ROBERTA_SPECIAL_TOKENS

    for names in (BERT_SPECIAL_TOKENS, ROBERTA_SPECIAL_TOKENS):
        if all(tokenizer.token_to_id(t) is not None for t in names.values()):
            return dict(names)
    missing = [t for t in SPECIAL_TOKENS.values() if tokenizer.token_to_id(t) is None]
    raise UserError(
        f"{where} has no {', '.join(missing)} token (nor RoBERTa's <pad> <unk> <s> </s> <mask>); "
        "use a BERT- or RoBERTa-style tokenizer or drop --tokenizer to train one"
    )


def _special_ids(tokenizer: Tokenizer, where: str) -> dict[str, int]:
    return {role: tokenizer.token_to_id(token) for role, token in _special_tokens(tokenizer, where).items()}


def _load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer.json, or a transformers directory's tokenizer (export.hf.read_hf_tokenizer: its
    tokenizer.json, vocab.txt or vocab.json + merges.txt), with the padding and truncation a
    tokenizer.json may carry switched off: prepare encodes documents whole, without special tokens."""
    if path.is_dir():
        from unimask.checkpoint import read_hf_tokenizer
        return read_hf_tokenizer(path)
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist; pass a tokenizer.json or a transformers model "
                        "directory to --tokenizer")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(
            f"{path} is not a readable tokenizer.json ({e}); pass a file saved by the tokenizers library"
        ) from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _tokenizer_source_sha256(path: Path) -> str:
    """The checksum of --tokenizer: the file, or a transformers directory's tokenizer files together."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (path / name).is_file():
            digest.update(name.encode() + b"\0" + sha256_file(path / name).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- splitting


def _in_valid(doc: str, valid_fraction: float) -> bool:
    """Whether a short document is held out: a hash of its text falls below `valid_fraction`."""
    return zlib.crc32(doc.encode()) % 1_000_000 < valid_fraction * 1_000_000


def _encode(tokenizer: Tokenizer, docs: list[str], offsets: bool) -> tuple[list[Encoding], list[bool]]:
    """Each document's encoding, and whether it carries character offsets (to find its lines).

    With `offsets`, only documents long enough to be cut (2 * PIECE_TOKENS characters or more) get
    them, as they cost tokenizer time; the rare shorter one that still makes that many tokens is cut
    at token positions only.
    """
    has_offsets = [offsets and len(doc) >= 2 * PIECE_TOKENS for doc in docs]
    plain = iter(tokenizer.encode_batch_fast([d for d, o in zip(docs, has_offsets) if not o],
                                             add_special_tokens=False))
    located = iter(tokenizer.encode_batch([d for d, o in zip(docs, has_offsets) if o],
                                          add_special_tokens=False))
    return [next(located) if o else next(plain) for o in has_offsets], has_offsets


def _even_bounds(num_tokens: int) -> np.ndarray:
    """(k + 1,) token indices 0 = b0 < ... < bk = num_tokens cutting a document of at least
    2 * PIECE_TOKENS tokens into k = num_tokens // PIECE_TOKENS pieces of equal size (PIECE_TOKENS to
    2 * PIECE_TOKENS tokens)."""
    k = num_tokens // PIECE_TOKENS
    return np.rint(np.arange(k + 1) * (num_tokens / k)).astype(np.int64)


def _line_starts_near(doc: str, encoding: Encoding, targets: np.ndarray, window: int) -> np.ndarray:
    """(L,) increasing token indices: for each target token, where its line starts and where the
    next line starts, if within `window` tokens of it.

    A line starts at the first token after a newline. A newline is never inside a token (it is
    whitespace to the BERT pre-tokenizer; a byte-level "Ċ" token stays with the line it ends), so
    cutting the ids there cuts the text at the newline. This reads a few tokens' offsets per target
    by bisection; the list of all offsets would cost seconds per ten million tokens.
    """
    def start(i: int) -> int:
        return encoding.token_to_chars(i)[0]                                     # char offset of token i

    found = set()
    for t in targets.tolist():
        lo, hi = max(t - window, 1), min(t + window, len(encoding) - 1)
        before = doc.rfind("\n", encoding.token_to_chars(lo - 1)[1], start(t))   # after token lo - 1
        after = doc.find("\n", start(t), start(hi))
        if before >= 0:
            found.add(lo + bisect.bisect_left(range(lo, t + 1), before + 1, key=start))
        if after >= 0:
            found.add(t + 1 + bisect.bisect_left(range(t + 1, hi + 1), after + 1, key=start))
    return np.array(sorted(found), np.int64)


def _snap_to_lines(bounds: np.ndarray, line_starts: np.ndarray) -> np.ndarray:
    """`bounds` (from `_even_bounds`) with each inner one moved to the nearest of `line_starts` within
    a quarter piece, so that held-out text begins and ends at a paragraph wherever one is near."""
    quarter = (bounds[-1] / (bounds.size - 1)) / 4
    if not line_starts.size or bounds.size < 3:
        return bounds
    inner = bounds[1:-1]                                                         # (k - 1,)
    right = np.searchsorted(line_starts, inner).clip(max=line_starts.size - 1)
    left = (right - 1).clip(min=0)
    candidates = np.stack([line_starts[left], line_starts[right]])               # (2, k - 1)
    nearest = candidates[np.abs(candidates - inner).argmin(0), np.arange(inner.size)]
    # boundaries a piece apart, each moved at most a quarter piece: they stay increasing
    inner = np.where(np.abs(nearest - inner) <= quarter, nearest, inner)
    return np.concatenate([bounds[:1], inner, bounds[-1:]])


def _piece_bounds(doc: str, encoding: Encoding, has_offsets: bool) -> np.ndarray:
    """(k + 1,) token indices cutting a long document into pieces: even ones, moved to line starts
    when the encoding has offsets to find them."""
    bounds = _even_bounds(len(encoding))
    if not has_offsets or bounds.size < 3:
        return bounds
    window = int(bounds[-1] / (bounds.size - 1) / 4)
    return _snap_to_lines(bounds, _line_starts_near(doc, encoding, bounds[1:-1], window))


def _valid_pieces(doc: str, num_pieces: int, valid_fraction: float) -> np.ndarray:
    """(num_pieces,) bool: the held-out pieces of one long document.

    Piece j is held out when j * valid_fraction + phase passes an integer, the phase in [0, 1) a hash
    of the text: every (1 / valid_fraction)-th piece, floor or ceil of num_pieces * valid_fraction of
    them, so a long document holds out its share of tokens to within one piece, spread through it
    (a hash per piece would give one book anywhere from none to twice its share).
    """
    phase = zlib.crc32(doc.encode()) % 1_000_000 / 1_000_000
    marks = np.floor(np.arange(num_pieces + 1) * valid_fraction + phase)        # (num_pieces + 1,)
    return np.diff(marks) > 0


@dataclass
class _Routes:
    """Where one batch's tokens go. Run r is `flat[starts[r]:starts[r] + lengths[r]]` of the batch's
    concatenated ids, written as one document (plus [SEP]) of valid when `is_valid[r]`, else of train.
    `cut_points` are flat positions inside train runs where a piece of a long document begins:
    places where the train stream may be cut later (see `_SplitWriter.take_tail`)."""

    starts: np.ndarray  # (R,) int64, increasing
    lengths: np.ndarray  # (R,) int64 tokens, [SEP] not included, all > 0
    is_valid: np.ndarray  # (R,) bool
    cut_points: np.ndarray  # (C,) int64, increasing
    documents_cut: int  # documents with pieces in both splits


def _route(
    docs: list[str], encodings: list[Encoding], has_offsets: list[bool], valid_fraction: float
) -> _Routes:
    """Runs of whole short documents and of same-split pieces of long ones; empty documents get none."""
    num = np.fromiter((len(e) for e in encodings), np.int64, len(encodings))     # (D,) tokens
    doc_starts = np.cumsum(num) - num                                            # (D,) flat positions
    short = np.flatnonzero((num > 0) & (num < 2 * PIECE_TOKENS))
    starts, lengths = [doc_starts[short]], [num[short]]
    is_valid = [np.fromiter((_in_valid(docs[i], valid_fraction) for i in short), bool, short.size)]
    cut_points, documents_cut = [np.zeros(0, np.int64)], 0
    for i in np.flatnonzero(num >= 2 * PIECE_TOKENS):
        bounds = _piece_bounds(docs[i], encodings[i], has_offsets[i])           # (k + 1,)
        held = _valid_pieces(docs[i], bounds.size - 1, valid_fraction)         # (k,)
        first = np.flatnonzero(np.concatenate([[True], held[1:] != held[:-1]]))  # (runs,) piece index
        run_bounds = bounds[np.append(first, held.size)]                         # (runs + 1,)
        starts.append(doc_starts[i] + run_bounds[:-1])
        lengths.append(np.diff(run_bounds))
        is_valid.append(held[first])
        inner = np.arange(1, held.size)                                          # pieces after the first
        cut_points.append(doc_starts[i] + bounds[inner[~held[inner]]])           # ... that start in train
        documents_cut += bool(held.any() and not held.all())
    order = np.argsort(np.concatenate(starts), kind="stable")
    return _Routes(np.concatenate(starts)[order], np.concatenate(lengths)[order],
                   np.concatenate(is_valid)[order], np.concatenate(cut_points), documents_cut)


# ---------------------------------------------------------------- writing


class _SplitWriter:
    """Appends documents (ids + [SEP]) to one flat .bin file and tracks their start offsets."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, sep_id: int):
        self.bin_path = directory / f"{split}.bin"
        self.idx_path = directory / f"{split}.idx.npy"
        self.dtype = dtype
        self.sep_id = sep_id
        self._file = open(self.bin_path, "wb")
        self._lengths: list[np.ndarray] = []
        self._cut_points: collections.deque[int] = collections.deque(maxlen=CUT_MEMORY)  # stream positions
        self.num_tokens = 0

    def write_runs(
        self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, cut_points: np.ndarray
    ) -> None:
        """Append runs `flat[s:s + n]` as documents, each followed by [SEP]; the last CUT_MEMORY
        `cut_points` (increasing flat positions inside the runs) are kept for `take_tail`."""
        if not lengths.size:
            return
        out_lengths = lengths + 1                                                # (R,) with [SEP]
        out_starts = np.cumsum(out_lengths) - out_lengths                        # (R,) in `ids`
        edges = np.zeros(flat.size + 1, np.int8)                                 # +1 where a run starts,
        edges[starts] += 1                                                       # -1 where it ends (each
        edges[starts + lengths] -= 1                                             # index once: += is safe)
        in_run = np.cumsum(edges[:-1], dtype=np.int8).view(bool)                 # (N,) runs are disjoint
        ids = np.insert(flat[in_run], np.cumsum(lengths), self.sep_id)          # (sum(out_lengths),)
        if cut_points.size:
            points = cut_points[-CUT_MEMORY:]                                    # (C,)
            run = np.searchsorted(starts, points, side="right") - 1             # (C,) the run holding each
            self._cut_points.extend((self.num_tokens + out_starts[run] + points - starts[run]).tolist())
        ids.tofile(self._file)
        self._lengths.append(out_lengths)
        self.num_tokens += int(ids.size)

    def append(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents: `ids` ends each one with its [SEP], `lengths` include it."""
        ids.astype(self.dtype, copy=False).tofile(self._file)
        self._lengths.append(lengths)
        self.num_tokens += int(ids.size)

    def take_tail(self, near: int, within: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Remove the end of the stream and return it as (ids, document lengths with [SEP], whether a
        document was cut in two).

        It starts at the document or piece start nearest stream position `near`, at most
        `within` tokens away, else at `near` itself (a token position). A cut document keeps its
        first part here, ended by a new [SEP]. At least one token stays; what goes is more than a [SEP].
        """
        self._file.flush()
        lengths = np.concatenate(self._lengths)                                  # (D,)
        ends = np.cumsum(lengths)                                                # (D,)
        lo, hi = 1, self.num_tokens - 2
        near = min(max(near, lo), hi)
        starts = np.concatenate([ends[:-1], np.fromiter(self._cut_points, np.int64)])
        starts = starts[(starts >= lo) & (starts <= hi) & (np.abs(starts - near) <= within)]
        at = int(starts[np.abs(starts - near).argmin()]) if starts.size else near
        first = int(np.searchsorted(ends, at, side="right"))                    # the document holding `at`
        if at == ends[first] - 1:                                          # its [SEP]: take the next one
            at, first = at + 1, first + 1
        doc_start = int(ends[first] - lengths[first])
        tail = np.fromfile(self.bin_path, dtype=self.dtype, offset=at * self.dtype.itemsize)
        tail_lengths = lengths[first:].copy()
        tail_lengths[0] = ends[first] - at
        self._file.seek(at * self.dtype.itemsize)
        self._file.truncate()
        self._lengths, self.num_tokens = [lengths[:first]], at
        self._cut_points.clear()
        cut = at > doc_start
        if cut:
            self.append(np.array([self.sep_id], self.dtype), np.array([at - doc_start + 1], np.int64))
        return tail, tail_lengths, cut

    def close(self) -> None:
        self._file.close()

    def finish(self) -> dict[str, int]:
        """Close the .bin, write the offsets index and return the split's counts."""
        self.close()
        lengths = np.concatenate([np.zeros(1, np.int64), *self._lengths]).astype(np.int64)
        offsets = np.cumsum(lengths)
        np.save(self.idx_path, offsets)
        return {"num_tokens": self.num_tokens, "num_docs": int(offsets.size - 1)}


def _encode_into(
    tokenizer: Tokenizer,
    docs: Iterator[tuple[int, str]],
    writers: dict[str, _SplitWriter],
    sources: list[_Source],
    valid_fraction: float,
    log: Callable[[str], None],
) -> int:
    """Tokenize in parallel batches and route documents and pieces to train or valid; count the
    documents that tokenize to nothing in their `sources`. Returns the documents cut between splits."""
    dtype = writers["train"].dtype
    total_docs = documents_cut = 0
    for batch in _batches(docs, BATCH_CHARS, chars_of=lambda item: len(item[1])):
        texts = [doc for _, doc in batch]
        encodings, has_offsets = _encode(tokenizer, texts, offsets=valid_fraction > 0)
        flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype,
                           sum(len(e) for e in encodings))                      # (N,) the batch's ids
        routes = _route(texts, encodings, has_offsets, valid_fraction)
        held = routes.is_valid
        writers["train"].write_runs(flat, routes.starts[~held], routes.lengths[~held], routes.cut_points)
        writers["valid"].write_runs(flat, routes.starts[held], routes.lengths[held], np.zeros(0, np.int64))
        for (source, _), encoding in zip(batch, encodings):
            sources[source].empty_documents += not len(encoding)
        documents_cut += routes.documents_cut
        total_docs += len(batch)
        log(f"tokenized {total_docs} documents")
    return documents_cut


def _min_valid_tokens(total_tokens: int) -> int:
    """The held-out floor for a corpus of `total_tokens` (with [SEP]s) when valid_fraction > 0."""
    return min(MIN_VALID_TOKENS, int(MIN_VALID_SHARE * total_tokens))


def _top_up_valid(train: _SplitWriter, valid: _SplitWriter, valid_fraction: float) -> tuple[int, bool]:
    """Move the end of the train stream to valid when valid holds fewer tokens than the floor (a small
    corpus, or a few long documents whose phases missed). Returns (tokens moved, a document cut)."""
    need = _min_valid_tokens(train.num_tokens + valid.num_tokens) - valid.num_tokens
    if valid_fraction == 0 or need <= 0 or train.num_tokens < 3:
        return 0, False
    tail, lengths, cut = train.take_tail(train.num_tokens - need, within=PIECE_TOKENS // 4)
    valid.append(tail, lengths)
    return int(tail.size), cut


def _split_settings() -> dict:
    """How held-out text is chosen; a directory prepared with other settings is not up to date."""
    return {"method": SPLIT_METHOD, "piece_tokens": PIECE_TOKENS, "min_valid_tokens": MIN_VALID_TOKENS,
            "min_valid_share": MIN_VALID_SHARE}


def _report_empty(sources: list[_Source], log: Callable[[str], None]) -> None:
    """One warning line per file that had documents tokenizing to nothing (they were dropped)."""
    for source in sources:
        if source.empty_documents:
            n = source.empty_documents
            log(f"warning: {source.path}: dropped {n} document{'' if n == 1 else 's'} that tokenize to "
                "nothing (only characters the tokenizer deletes, e.g. zero-width spaces)")


def _write_outputs(
    tmp: Path, tokenizer: Tokenizer, sources: list[_Source], cfg: PrepareConfig, log: Callable[[str], None]
) -> dict:
    """Fill `tmp` with the token arrays and the manifest; returns the manifest."""
    special_ids = _special_ids(tokenizer, "the tokenizer")
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")
    writers = {split: _SplitWriter(tmp, split, dtype, special_ids["sep"]) for split in ("train", "valid")}
    train, valid = writers["train"], writers["valid"]
    try:
        docs = _all_documents(sources, cfg, log)
        documents_cut = _encode_into(tokenizer, docs, writers, sources, cfg.valid_fraction, log)
        if train.num_tokens + valid.num_tokens == 0:
            empty = sum(s.empty_documents for s in sources)
            raise UserError(
                f"all {empty} documents of {', '.join(str(s.path) for s in sources)} tokenize to nothing "
                "(only characters the tokenizer deletes, e.g. zero-width spaces); check the input's text"
            )
        _report_empty(sources, log)
        floor = _min_valid_tokens(train.num_tokens + valid.num_tokens)
        moved, cut = _top_up_valid(train, valid, cfg.valid_fraction)
        total = train.num_tokens + valid.num_tokens
        if moved:
            log(f"valid: moved the last {moved} train tokens to valid, to hold out at least {floor} of "
                f"{total}")
        if cfg.valid_fraction > 0 and valid.num_tokens == 0:
            log(f"warning: the corpus has only {total} tokens, too few to hold any out; valid is empty")
        splits = {name: writer.finish() for name, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.close()
    return {
        "format": FORMAT,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "special_ids": special_ids,
        "special_tokens": _special_tokens(tokenizer, "the tokenizer"),
        "splits": splits,
        "split": {
            **_split_settings(),
            "valid_fraction": cfg.valid_fraction,
            "valid_token_fraction": valid.num_tokens / total,
            "documents_cut": documents_cut + cut,
            "moved_to_valid_tokens": moved,
        },
        "tokenizer_sha256": sha256_file(tmp / "tokenizer.json"),
        "files": file_records(tmp, data_files(("train", "valid"))),
        **({"tokenizer_source_sha256": _tokenizer_source_sha256(Path(cfg.tokenizer))} if cfg.tokenizer else {}),
        "sources": [s.record() for s in sources],
        "config": asdict(cfg),
        "invalid_utf8_bytes": sum(s.invalid_utf8_bytes for s in sources),
        "empty_documents": sum(s.empty_documents for s in sources),
        "created_by": f"unimask {__version__}",
    }


# ---------------------------------------------------------------- entry points


def data_files(splits) -> list[str]:
    """The files of a prepared directory that hold its data: tokenizer.json and each split's arrays."""
    return ["tokenizer.json", *[f"{split}{suffix}" for split in splits for suffix in (".bin", ".idx.npy")]]


def damaged_data(directory: Path, manifest: dict, splits=None) -> str | None:
    """The first data file of `directory` (of `splits`, default all) that is missing, has another size
    or another SHA-256 than manifest.json's "files" say, as `rundir.damaged_file` words it; None when
    all are intact. A manifest written before "files" existed is checked for the files being there and
    tokenizer.json's checksum."""
    splits = list(manifest.get("splits", {}) if splits is None else splits)
    names = data_files(splits)
    records = manifest.get("files")
    if not isinstance(records, dict):
        records = {name: {} for name in names}
        records["tokenizer.json"] = {"sha256": manifest.get("tokenizer_sha256")}
    return damaged_file(directory, {name: records.get(name, {}) for name in names}, "manifest.json")




def _check_config(cfg: PrepareConfig) -> None:
    if cfg.doc_split not in DOC_SPLITS:
        raise UserError(f"unknown --doc-split {cfg.doc_split!r}; choose one of {', '.join(DOC_SPLITS)}")
    if cfg.on_invalid_utf8 not in INVALID_UTF8_MODES:
        raise UserError(f"unknown --on-invalid-utf8 {cfg.on_invalid_utf8!r}; choose replace or error")
    if not 0.0 <= cfg.valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {cfg.valid_fraction} is out of range; use a value in [0, 1)")
    if cfg.tokenizer is None and cfg.vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(
            f"--vocab-size {cfg.vocab_size} cannot hold the special tokens and an alphabet; use e.g. 30522"
        )
    if cfg.min_frequency < 0:
        raise UserError(f"--min-frequency {cfg.min_frequency} is negative; use 0 or more")


def _is_up_to_date(
    manifest_path: Path, sources: list[_Source], cfg: PrepareConfig, same_split: bool = True
) -> dict | None:
    """The existing manifest if it was made from these exact sources and config (and, with
    `same_split`, split into train and valid the way this version does), else None."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("config") != asdict(cfg):
        return None
    split = manifest.get("split") if isinstance(manifest.get("split"), dict) else {}
    if same_split and {k: split.get(k) for k in _split_settings()} != _split_settings():
        return None  # split another way (e.g. by whole documents only, before "pieces")
    recorded = manifest.get("sources", [])
    sizes = [(str(s.path), s.path.stat().st_size) for s in sources]
    if [(r.get("path"), r.get("bytes")) for r in recorded] != sizes:
        return None
    if [r.get("sha256") for r in recorded] != [sha256_file(s.path) for s in sources]:
        return None
    if cfg.tokenizer is not None and Path(cfg.tokenizer).is_dir():
        if manifest.get("tokenizer_source_sha256") != _tokenizer_source_sha256(Path(cfg.tokenizer)):
            return None
    elif cfg.tokenizer is not None and manifest.get("tokenizer_sha256") != sha256_file(Path(cfg.tokenizer)):
        return None
    return manifest


def _check_out(
    out: Path, sources: list[_Source], cfg: PrepareConfig, overwrite: bool, log: Callable[[str], None]
) -> dict | None:
    """The existing manifest when `out` is already up to date and intact (None: prepare it again, with
    a warning when it was made from these inputs but a file is damaged); raises if `out` may not be
    replaced."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"{out} is a file; choose a directory for --out")
    if overwrite or not any(out.iterdir()):
        return None
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(
            f"{out} exists and is not a prepared directory; pass --overwrite or choose another --out"
        )
    if (manifest := _is_up_to_date(manifest_path, sources, cfg)) is None:
        if _is_up_to_date(manifest_path, sources, cfg, same_split=False) is not None:
            raise UserError(
                f"{out} was split into train and valid by an older unimask (by whole documents); "
                "pass --overwrite to split it by tokens"
            )
        raise UserError(
            f"{out} holds data prepared from other inputs or settings; "
            "pass --overwrite or choose another --out"
        )
    if (problem := damaged_data(out, manifest)) is not None:
        log(f"warning: {out} is damaged: {problem}; preparing it again")
        return None
    return manifest


def _install(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`; an old `out` is removed only after the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def _input_files(paths: list[str | Path]) -> list[Path]:
    """The files to read: each path given, a directory standing for the .txt / .txt.gz / .jsonl /
    .jsonl.gz files below it (sorted, hidden ones skipped); a file named twice is read once."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(TEXT_SUFFIXES
                           + JSONL_SUFFIXES) and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not found:
                raise UserError(f"--text {p} is a directory without .txt, .txt.gz, .jsonl or .jsonl.gz files; "
                                "pass the files, or a directory that holds some")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"input file {p} does not exist; check the path given to --text")
    return list(dict.fromkeys(files))


def prepare(
    paths: list[str | Path],
    out: str | Path,
    cfg: PrepareConfig,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    wait: bool = False,
) -> dict:
    """Tokenize `paths` into `out` (see the module docstring for the layout); returns the manifest.

    A re-run with the same sources and config is a no-op (or rebuilds a damaged `out`); a different one
    needs `overwrite=True`. `out` is held for this process (`rundir.claim`) from before it is looked at
    until it is in place: another process preparing it is a UserError, or, with `wait` (a shared
    cache), waited for. A full disk is a UserError naming the space needed and free.
    """
    _check_config(cfg)
    if not paths:
        raise UserError("no input files; pass one or more with --text")
    sources = []
    for path in _input_files(paths):
        _kind(path)
        sources.append(_Source(path))
    if cfg.tokenizer is not None:
        cfg = replace(cfg, tokenizer=str(Path(cfg.tokenizer).expanduser().resolve()))
    out = Path(out).expanduser().resolve()
    with claim(out, "prepare", wait=wait):
        if (existing := _check_out(out, sources, cfg, overwrite, log)) is not None:
            log(f"{out} is up to date")
            return existing
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        with guard_disk(tmp, 0, f"the prepared data {out}", "free some space, then run it again"):
            return _prepare_into(tmp, out, sources, cfg, log)


def _prepare_into(tmp: Path, out: Path, sources: list[_Source], cfg: PrepareConfig,
                  log: Callable[[str], None]) -> dict:
    """Write everything into `tmp`, then put it in place of `out`; `tmp` never outlives the call."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if cfg.tokenizer is not None:
            tokenizer = _load_tokenizer(Path(cfg.tokenizer))
            _special_ids(tokenizer, cfg.tokenizer)
            if Path(cfg.tokenizer).is_dir():
                tokenizer.save(str(tmp / "tokenizer.json"))
            else:
                shutil.copyfile(cfg.tokenizer, tmp / "tokenizer.json")
            log(f"reusing tokenizer {cfg.tokenizer} (vocab {tokenizer.get_vocab_size()})")
        else:
            log(f"training a WordPiece tokenizer (vocab {cfg.vocab_size}) on {len(sources)} file(s)")
            texts = (doc for _, doc in _all_documents(sources, cfg, lambda _: None))
            tokenizer = _train_tokenizer(texts, cfg)
            tokenizer.save(str(tmp / "tokenizer.json"))
        manifest = _write_outputs(tmp, tokenizer, sources, cfg, log)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `unimask prepare` options on `parser`."""
    d = PrepareConfig()
    parser.add_argument("--text", nargs="+", required=True, metavar="PATH",
                        help="input files: .txt, .txt.gz, .jsonl, .jsonl.gz; a directory stands for those below it")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size,
                        help="WordPiece vocabulary size")
    parser.add_argument("--tokenizer", default=d.tokenizer, metavar="PATH",
                        help="reuse this tokenizer.json, or the tokenizer of a transformers model directory "
                             "(tokenizer.json, vocab.txt, or vocab.json + merges.txt), instead of training one")
    parser.add_argument("--text-field", default=d.text_field,
                        help="text field of .jsonl records")
    parser.add_argument("--doc-split", choices=DOC_SPLITS, default=d.doc_split,
                        help="where text files split into documents: blank_line (paragraphs), line (every line) "
                             "or file (one document a file)")
    parser.add_argument("--valid-fraction", type=float, default=d.valid_fraction,
                        help="share of the tokens held out for validation")
    parser.add_argument("--cased", action="store_true",
                        help="keep case and accents (default: lowercase and strip accents)")
    parser.add_argument("--min-frequency", type=int, default=d.min_frequency,
                        help="minimum pair frequency for a WordPiece merge")
    parser.add_argument("--on-invalid-utf8", choices=INVALID_UTF8_MODES, default=d.on_invalid_utf8,
                        help="replace bad bytes with U+FFFD and count them, or stop")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing, different output directory")


def run(args: argparse.Namespace) -> int:
    """Run `unimask prepare` from parsed arguments; prints a one-line summary."""
    cfg = PrepareConfig(
        vocab_size=args.vocab_size,
        lowercase=not args.cased,
        min_frequency=args.min_frequency,
        text_field=args.text_field,
        doc_split=args.doc_split,
        valid_fraction=args.valid_fraction,
        tokenizer=args.tokenizer,
        on_invalid_utf8=args.on_invalid_utf8,
    )
    manifest = prepare(args.text, args.out, cfg, overwrite=args.overwrite)
    train, valid = manifest["splits"]["train"], manifest["splits"]["valid"]
    print(
        f"{args.out}: train {train['num_tokens']:,} tokens / {train['num_docs']:,} docs, "
        f"valid {valid['num_tokens']:,} tokens / {valid['num_docs']:,} docs, "
        f"vocab {manifest['vocab_size']} ({manifest['dtype']})"
    )
    print(f"next: unimask pretrain --recipe mlm_mini --data {args.out} --out runs/{Path(args.out).name} "
          "(`unimask pretrain --list-recipes` lists the recipes)")
    return 0
