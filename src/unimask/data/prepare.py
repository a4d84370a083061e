"""`unimask prepare`: raw text -> WordPiece tokenizer -> flat memory-mapped token arrays.

Output directory (read by :class:`unimask.data.store.TokenStore`)::

    tokenizer.json                 BERT-style WordPiece tokenizer, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
    train.bin, valid.bin           raw little-endian uint16/uint32 ids: every document's ids, then one [SEP]
    train.idx.npy, valid.idx.npy   int64 document start offsets, length n_docs + 1 (last = total tokens)
    manifest.json                  format, dtype, vocab, counts, source checksums, config

Everything is written into a hidden sibling directory and renamed into place at the end, so a failed
run never leaves a half-written output.

The tokenizer is trained on all documents (train and valid). `tokenizers`' WordPiece trainer is not
bit-reproducible (the ids of "##" pieces and ties between merges follow hash-map order, upstream
huggingface/tokenizers#1794), so two trainings on the same text can give different ids; the token
arrays are deterministic given a tokenizer, so pass `--tokenizer` to reproduce a dataset exactly.
"""

from __future__ import annotations

import argparse
import codecs
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
from typing import BinaryIO

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from unimask import __version__
from unimask.errors import UserError

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
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


@dataclass
class PrepareConfig:
    """How to turn raw text into token arrays."""

    vocab_size: int = 30522
    lowercase: bool = True
    min_frequency: int = 2
    text_field: str = "text"  # for .jsonl inputs: each record is one document
    doc_split: str = "blank_line"  # for .txt/.txt.gz: "blank_line" | "line" | "file"
    valid_fraction: float = 0.01  # held-out documents, chosen by a hash of the document text
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

    def record(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "sha256": self.sha256}


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise UserError(
        f"{path}: unknown file type; use .txt, .txt.gz, .jsonl or .jsonl.gz (rename the file)"
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


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
        if doc := value.strip():
            yield doc


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


def _all_documents(sources: list[_Source], cfg: PrepareConfig, log: Callable[[str], None]) -> Iterator[str]:
    for source in sources:
        yield from _read_documents(source, cfg, log)


def _batches(docs: Iterator[str], max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
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


def _special_ids(tokenizer: Tokenizer, where: str) -> dict[str, int]:
    ids = {name: tokenizer.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}
    missing = [SPECIAL_TOKENS[name] for name, i in ids.items() if i is None]
    if missing:
        raise UserError(
            f"{where} has no {', '.join(missing)} token; "
            "use a BERT-style tokenizer or drop --tokenizer to train one"
        )
    return ids  # type: ignore[return-value]


def _load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist; pass the path of a tokenizer.json to --tokenizer")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(
            f"{path} is not a readable tokenizer.json ({e}); pass a file saved by the tokenizers library"
        ) from None


# ---------------------------------------------------------------- writing


def _in_valid(doc: str, valid_fraction: float) -> bool:
    return zlib.crc32(doc.encode()) % 1_000_000 < valid_fraction * 1_000_000


class _SplitWriter:
    """Appends documents (ids + [SEP]) to one flat .bin file and tracks their start offsets."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype):
        self.bin_path = directory / f"{split}.bin"
        self.idx_path = directory / f"{split}.idx.npy"
        self.dtype = dtype
        self._file = open(self.bin_path, "wb")
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0

    @property
    def num_docs(self) -> int:
        return sum(lengths.size for lengths in self._lengths)

    def write(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """`ids` is the concatenation of documents whose token counts (incl. [SEP]) are `lengths`."""
        if lengths.size:
            ids.astype(self.dtype, copy=False).tofile(self._file)
            self._lengths.append(lengths)
            self.num_tokens += int(ids.size)

    def pop_last(self) -> np.ndarray:
        """Remove and return the ids of the last document written."""
        self._file.flush()
        last = self._lengths[-1]
        n = int(last[-1])
        self._lengths[-1] = last[:-1]
        self.num_tokens -= n
        tail = np.fromfile(self.bin_path, dtype=self.dtype, offset=self.num_tokens * self.dtype.itemsize)
        self._file.seek(self.num_tokens * self.dtype.itemsize)
        self._file.truncate()
        return tail

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
    docs: Iterator[str],
    writers: dict[str, _SplitWriter],
    sep_id: int,
    valid_fraction: float,
    log: Callable[[str], None],
) -> None:
    """Tokenize in parallel batches and route each document to train or valid."""
    dtype = writers["train"].dtype
    sep = (sep_id,)
    total_docs = 0
    for batch in _batches(docs, BATCH_CHARS):
        encodings = tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) + 1 for e in encodings), np.int64, len(encodings))
        stream = itertools.chain.from_iterable(x for e in encodings for x in (e.ids, sep))
        ids = np.fromiter(stream, dtype, int(lengths.sum()))
        is_valid = np.fromiter((_in_valid(d, valid_fraction) for d in batch), bool, len(batch))
        if is_valid.any():
            token_is_valid = np.repeat(is_valid, lengths)
            writers["valid"].write(ids[token_is_valid], lengths[is_valid])
            writers["train"].write(ids[~token_is_valid], lengths[~is_valid])
        else:
            writers["train"].write(ids, lengths)
        total_docs += len(batch)
        log(f"tokenized {total_docs} documents")


def _write_outputs(
    tmp: Path, tokenizer: Tokenizer, sources: list[_Source], cfg: PrepareConfig, log: Callable[[str], None]
) -> dict:
    """Fill `tmp` with the token arrays and the manifest; returns the manifest."""
    special_ids = _special_ids(tokenizer, "the tokenizer")
    vocab_size = tokenizer.get_vocab_size()
    dtype = np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")
    writers = {split: _SplitWriter(tmp, split, dtype) for split in ("train", "valid")}
    try:
        docs = _all_documents(sources, cfg, log)
        _encode_into(tokenizer, docs, writers, special_ids["sep"], cfg.valid_fraction, log)
        train, valid = writers["train"], writers["valid"]
        if cfg.valid_fraction > 0 and valid.num_tokens == 0 and train.num_docs >= 2:
            last = train.pop_last()
            valid.write(last, np.array([last.size], np.int64))
        splits = {name: writer.finish() for name, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.close()
    return {
        "format": FORMAT,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "special_ids": special_ids,
        "splits": splits,
        "tokenizer_sha256": _file_sha256(tmp / "tokenizer.json"),
        "sources": [s.record() for s in sources],
        "config": asdict(cfg),
        "invalid_utf8_bytes": sum(s.invalid_utf8_bytes for s in sources),
        "created_by": f"unimask {__version__}",
    }


# ---------------------------------------------------------------- entry points


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


def _is_up_to_date(manifest_path: Path, sources: list[_Source], cfg: PrepareConfig) -> dict | None:
    """The existing manifest if it was made from these exact sources and config, else None."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("config") != asdict(cfg):
        return None
    recorded = manifest.get("sources", [])
    sizes = [(str(s.path), s.path.stat().st_size) for s in sources]
    if [(r.get("path"), r.get("bytes")) for r in recorded] != sizes:
        return None
    if [r.get("sha256") for r in recorded] != [_file_sha256(s.path) for s in sources]:
        return None
    if cfg.tokenizer is not None and manifest.get("tokenizer_sha256") != _file_sha256(Path(cfg.tokenizer)):
        return None
    return manifest


def _check_out(out: Path, sources: list[_Source], cfg: PrepareConfig, overwrite: bool) -> dict | None:
    """The existing manifest when `out` is already up to date; raises if `out` may not be replaced."""
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
        raise UserError(
            f"{out} holds data prepared from other inputs or settings; "
            "pass --overwrite or choose another --out"
        )
    return manifest


def _install(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`; an old `out` is removed only after the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def prepare(
    paths: list[str | Path],
    out: str | Path,
    cfg: PrepareConfig,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Tokenize `paths` into `out` (see the module docstring for the layout); returns the manifest.

    A re-run with the same sources and config is a no-op; a different one needs `overwrite=True`.
    """
    _check_config(cfg)
    if not paths:
        raise UserError("no input files; pass one or more with --text")
    sources = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"input file {p} does not exist; check the path given to --text")
        _kind(path)
        sources.append(_Source(path))
    if cfg.tokenizer is not None:
        cfg = replace(cfg, tokenizer=str(Path(cfg.tokenizer).expanduser().resolve()))
    out = Path(out).expanduser().resolve()
    if (existing := _check_out(out, sources, cfg, overwrite)) is not None:
        log(f"{out} is up to date")
        return existing

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if cfg.tokenizer is not None:
            tokenizer = _load_tokenizer(Path(cfg.tokenizer))
            _special_ids(tokenizer, cfg.tokenizer)
            shutil.copyfile(cfg.tokenizer, tmp / "tokenizer.json")
            log(f"reusing tokenizer {cfg.tokenizer} (vocab {tokenizer.get_vocab_size()})")
        else:
            log(f"training a WordPiece tokenizer (vocab {cfg.vocab_size}) on {len(sources)} file(s)")
            tokenizer = _train_tokenizer(_all_documents(sources, cfg, lambda _: None), cfg)
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
    parser.add_argument("--text", nargs="+", required=True, metavar="FILE",
                        help="input files: .txt, .txt.gz, .jsonl, .jsonl.gz")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size,
                        help="WordPiece vocabulary size (default %(default)s)")
    parser.add_argument("--tokenizer", default=d.tokenizer, metavar="JSON",
                        help="reuse this tokenizer.json instead of training one")
    parser.add_argument("--text-field", default=d.text_field,
                        help="text field of .jsonl records (default %(default)s)")
    parser.add_argument("--doc-split", choices=DOC_SPLITS, default=d.doc_split,
                        help="document boundaries in text files (default %(default)s)")
    parser.add_argument("--valid-fraction", type=float, default=d.valid_fraction,
                        help="fraction of documents held out for validation (default %(default)s)")
    parser.add_argument("--cased", action="store_true",
                        help="keep case and accents (default: lowercase and strip accents)")
    parser.add_argument("--min-frequency", type=int, default=d.min_frequency,
                        help="minimum pair frequency for a WordPiece merge (default %(default)s)")
    parser.add_argument("--on-invalid-utf8", choices=INVALID_UTF8_MODES, default=d.on_invalid_utf8,
                        help="replace bad bytes with U+FFFD and count them, or stop (default %(default)s)")
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
    return 0
