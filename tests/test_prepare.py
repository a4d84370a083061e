"""Tests for `unimask prepare` (raw text -> tokenizer -> token arrays) and the TokenStore reader."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from unimask.data import prepare as prep
from unimask.data.prepare import PrepareConfig, prepare
from unimask.data.store import TokenStore
from unimask.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}

WORDS = (
    "the quick brown fox jumps over lazy dog while seven wizards quietly hex jolly zebras "
    "and many pretty boxes of liquor jugs wait near the old mill by a river"
).split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """`n` distinct small documents, some with two paragraphs-worth of lines."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(3, 20))).tolist()
        line = " ".join(words).capitalize()
        docs.append(f"Doc {i}: {line}." + (f"\n{words[0]} again, {i}!" if i % 3 == 0 else ""))
    return docs


def write_text(path: Path, docs: list[str], sep: str = "\n\n") -> Path:
    path.write_text(sep.join(docs) + "\n", encoding="utf-8")
    return path


def quiet(_: str) -> None:
    pass


def small_cfg(**kw) -> PrepareConfig:
    return PrepareConfig(**{"vocab_size": 200, "min_frequency": 1, **kw})


def squash(text: str) -> str:
    return "".join(text.split())


def stored_docs(store: TokenStore) -> list[np.ndarray]:
    o = store.doc_offsets
    return [np.asarray(store.tokens[o[i] : o[i + 1]]) for i in range(store.num_docs)]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    docs = make_docs(60)
    return write_text(tmp_path / "corpus.txt", docs), docs


# ---------------------------------------------------------------- layout and round trip


def test_round_trip_layout_and_special_ids(tmp_path, corpus):
    path, docs = corpus
    manifest = prepare([path], tmp_path / "out", small_cfg(valid_fraction=0.0), log=quiet)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tokenizer.json", "train.bin", "valid.bin", "train.idx.npy", "valid.idx.npy", "manifest.json"]
    )
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "unimask-tokens/1" and manifest["special_ids"] == SPECIALS
    assert manifest["dtype"] == "uint16" and manifest["config"]["vocab_size"] == 200
    assert manifest["sources"][0]["path"] == str(path.resolve())
    assert manifest["sources"][0]["bytes"] == path.stat().st_size
    assert manifest["splits"]["valid"] == {"num_tokens": 0, "num_docs": 0}

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == manifest["vocab_size"] <= 200
    assert tok.encode("jolly fox", "river").tokens[0] == "[CLS]"

    tokens = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    offsets = np.load(out / "train.idx.npy")
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(tokens)
    assert len(offsets) == len(docs) + 1 == manifest["splits"]["train"]["num_docs"] + 1
    assert (tokens[offsets[1:] - 1] == 3).all() and (tokens == 3).sum() == len(docs)
    assert not (tokens == 2).any() and not (tokens == 1).any()
    for i, doc in enumerate(docs):
        ids = tokens[offsets[i] : offsets[i + 1] - 1].tolist()
        assert squash(tok.decode(ids)) == squash(doc.lower())


def test_tokenizer_loads_in_transformers(tmp_path, corpus):
    transformers = pytest.importorskip("transformers")
    prepare([corpus[0]], tmp_path / "out", small_cfg(), log=quiet)
    bert = transformers.BertTokenizerFast(tokenizer_file=str(tmp_path / "out" / "tokenizer.json"))
    ids = bert("jolly fox")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert bert.convert_tokens_to_ids(["[PAD]", "[MASK]"]) == [0, 4]


def test_cased_keeps_case(tmp_path):
    path = write_text(tmp_path / "c.txt", ["Alpha Beta", "Gamma Delta", "Alpha Gamma"])
    prepare([path], tmp_path / "out", small_cfg(lowercase=False, valid_fraction=0), log=quiet)
    store = TokenStore(tmp_path / "out")
    text = store.tokenizer().decode(stored_docs(store)[0][:-1].tolist())
    assert text == "Alpha Beta"


def test_chunked_reading_and_batching_match_one_shot(tmp_path, monkeypatch, corpus):
    path, docs = corpus
    prepare([path], tmp_path / "big", small_cfg(valid_fraction=0.2), log=quiet)
    tok = str(tmp_path / "big" / "tokenizer.json")
    monkeypatch.setattr(prep, "READ_CHARS", 7)
    monkeypatch.setattr(prep, "BATCH_CHARS", 50)
    prepare([path], tmp_path / "small", small_cfg(valid_fraction=0.2, tokenizer=tok), log=quiet)
    for name in ("tokenizer.json", "train.bin", "valid.bin", "train.idx.npy", "valid.idx.npy"):
        assert (tmp_path / "big" / name).read_bytes() == (tmp_path / "small" / name).read_bytes()


# ---------------------------------------------------------------- inputs


def test_doc_split_modes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("  a b\nc d\n \n\n\ne f  \n\n")
    counts = {}
    for mode in ("blank_line", "line", "file"):
        m = prepare([path], tmp_path / mode, small_cfg(doc_split=mode, valid_fraction=0), log=quiet)
        counts[mode] = m["splits"]["train"]["num_docs"]
    assert counts == {"blank_line": 2, "line": 3, "file": 1}


def test_jsonl_text_field_and_gzip(tmp_path):
    records = [{"body": d, "id": i} for i, d in enumerate(make_docs(10))] + [{"body": "   "}]
    lines = "\n".join(json.dumps(r) for r in records) + "\n\n"
    plain = tmp_path / "a.jsonl"
    plain.write_text(lines)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(lines.encode()))
    cfg = small_cfg(text_field="body", valid_fraction=0)
    m = prepare([plain, packed], tmp_path / "out", cfg, log=quiet)
    assert m["splits"]["train"]["num_docs"] == 20
    assert [s["path"] for s in m["sources"]] == [str(plain.resolve()), str(packed.resolve())]
    store = TokenStore(tmp_path / "out")
    first, eleventh = stored_docs(store)[0], stored_docs(store)[10]
    assert np.array_equal(first, eleventh)
    assert squash(store.tokenizer().decode(first.tolist())) == squash(records[0]["body"].lower())


def test_txt_gz_matches_plain_text(tmp_path, corpus):
    path, _ = corpus
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    a = prepare([path], tmp_path / "a", small_cfg(), log=quiet)
    tok = str(tmp_path / "a" / "tokenizer.json")
    b = prepare([packed], tmp_path / "b", small_cfg(tokenizer=tok), log=quiet)
    assert a["splits"] == b["splits"]
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    assert b["sources"][0]["bytes"] == packed.stat().st_size


# ---------------------------------------------------------------- valid split


def test_valid_split_is_deterministic_and_disjoint(tmp_path, corpus):
    path, docs = corpus
    cfg = small_cfg(valid_fraction=0.25)
    prepare([path], tmp_path / "a", cfg, log=quiet)
    prepare([path], tmp_path / "b", replace(cfg, tokenizer=str(tmp_path / "a" / "tokenizer.json")), log=quiet)
    for name in ("train.bin", "valid.bin", "valid.idx.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    in_valid = [zlib.crc32(d.encode()) % 1_000_000 < 250_000 for d in docs]
    train, valid = TokenStore(tmp_path / "a", "train"), TokenStore(tmp_path / "a", "valid")
    assert valid.num_docs == sum(in_valid) > 0 and train.num_docs == len(docs) - sum(in_valid)
    tok = train.tokenizer()
    decoded_train = [squash(tok.decode(d[:-1].tolist())) for d in stored_docs(train)]
    decoded_valid = [squash(tok.decode(d[:-1].tolist())) for d in stored_docs(valid)]
    assert decoded_train == [squash(d.lower()) for d, v in zip(docs, in_valid) if not v]
    assert decoded_valid == [squash(d.lower()) for d, v in zip(docs, in_valid) if v]


def book_lines(n_lines: int, seed: int = 0) -> list[str]:
    """Lines of a "book" (one paragraph a line, no blank line, so one document): 10-30 words each."""
    rng = np.random.default_rng(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS, size=int(rng.integers(10, 30)))) + " ."
            for i in range(n_lines)]


def content(store: TokenStore) -> np.ndarray:
    """The split's ids without the [SEP] that ends each document."""
    return np.asarray(store.tokens)[np.asarray(store.tokens) != SPECIALS["sep"]]


def line_starts_of(tok: Tokenizer, lines: list[str]) -> set[str]:
    """The squashed text of each line's first 4 tokens (how a piece cut at that line begins)."""
    return {squash(tok.decode(tok.encode(line, add_special_tokens=False).ids[:4])) for line in lines}


def test_long_documents_are_held_out_by_tokens(tmp_path, monkeypatch):
    """Two books, one document each (the Gutenberg layout): valid holds about valid_fraction of the
    tokens, cut at line starts, not one whole book or nothing (issue 15, fault 6)."""
    books = [book_lines(1500, seed=1), book_lines(400, seed=2)]
    paths = [write_text(tmp_path / f"book{i}.txt", lines, sep="\n") for i, lines in enumerate(books)]
    cfg = small_cfg(valid_fraction=0.1)
    m = prepare(paths, tmp_path / "out", cfg, log=quiet)
    train, valid = TokenStore(tmp_path / "out"), TokenStore(tmp_path / "out", "valid")
    tok = train.tokenizer()

    whole = [np.array(tok.encode("\n".join(lines), add_special_tokens=False).ids) for lines in books]
    n = sum(ids.size for ids in whole)
    assert n > 20 * prep.PIECE_TOKENS                                       # long documents, many pieces
    assert content(train).size + content(valid).size == n                 # nothing lost or doubled
    vocab = tok.get_vocab_size()
    assert np.array_equal(np.bincount(np.concatenate([content(train), content(valid)]), minlength=vocab),
                          np.bincount(np.concatenate(whole), minlength=vocab))
    # each long document is held out to within one piece of its share (the books make ~67 and ~17 pieces)
    assert abs(content(valid).size - 0.1 * n) <= 2 * prep.PIECE_TOKENS
    assert valid.num_docs >= 7 and train.num_docs >= 2
    starts = line_starts_of(tok, books[0] + books[1])
    assert all(squash(tok.decode(d[:4].tolist())) in starts for d in stored_docs(valid))
    total = len(train) + len(valid)
    assert m["split"] == {"method": "pieces", "piece_tokens": prep.PIECE_TOKENS,
                          "min_valid_tokens": prep.MIN_VALID_TOKENS, "min_valid_share": prep.MIN_VALID_SHARE,
                          "valid_fraction": 0.1, "valid_token_fraction": len(valid) / total,
                          "documents_cut": 2, "moved_to_valid_tokens": 0}
    assert total == n + train.num_docs + valid.num_docs                    # one [SEP] per document

    monkeypatch.setattr(prep, "BATCH_CHARS", 3000)                          # batching changes nothing
    same_tokenizer = replace(cfg, tokenizer=str(tmp_path / "out" / "tokenizer.json"))
    prepare(paths, tmp_path / "again", same_tokenizer, log=quiet)
    for name in ("train.bin", "valid.bin", "train.idx.npy", "valid.idx.npy"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_piece_bounds_snap_to_lines_and_cover_the_document():
    n = 10 * prep.PIECE_TOKENS + 77
    bounds = prep._even_bounds(n)
    assert bounds[0] == 0 and bounds[-1] == n and bounds.size == 11
    assert set(np.diff(bounds)) <= {n // 10, n // 10 + 1}
    lines = np.arange(0, n, 100)
    snapped = prep._snap_to_lines(bounds, lines)
    assert bounds.size == snapped.size and snapped[0] == 0 and snapped[-1] == n
    assert set(snapped[1:-1]) <= set(lines) and np.all(np.abs(snapped - bounds) <= 50)
    far = prep._snap_to_lines(bounds, np.array([3, n - 3]))               # no line near: token positions
    assert np.array_equal(far, bounds)


def test_line_starts_near_match_every_line_start(tmp_path, corpus):
    """The bisection finds, per target token, the nearest line start on each side within the window:
    the same as reading every token's offsets."""
    prepare([corpus[0]], tmp_path / "out", small_cfg(), log=quiet)
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    doc = "\n".join(book_lines(60)) + "\n\n  \n" + "\n".join(book_lines(40, seed=5))
    encoding = tok.encode(doc, add_special_tokens=False)
    token_starts = np.array([start for start, _ in encoding.offsets])
    every = np.unique(np.searchsorted(token_starts, [i + 1 for i, c in enumerate(doc) if c == "\n"]))
    targets, window = np.arange(1, len(encoding) - 1, 37), 30
    expected = set()
    for t in targets:
        lo, hi = max(t - window, 1), min(t + window, len(encoding) - 1)
        before, after = every[(every >= lo) & (every <= t)], every[(every > t) & (every <= hi)]
        expected |= set(before[-1:].tolist() + after[:1].tolist())
    found = prep._line_starts_near(doc, encoding, targets, window)
    assert found.tolist() == sorted(expected) and len(found) > len(targets)


@pytest.mark.parametrize("valid_fraction", [0.01, 0.05, 0.3])
def test_valid_pieces_take_the_share_of_a_long_document(valid_fraction):
    for k in (2, 7, 100, 1234):
        for doc in ("a", "b", "some other text"):
            held = prep._valid_pieces(doc, k, valid_fraction)
            assert held.shape == (k,)
            assert int(held.sum()) in (int(np.floor(k * valid_fraction)), int(np.ceil(k * valid_fraction)))


def test_small_corpus_gets_a_floor_of_valid_tokens(tmp_path):
    """One short book at 1%: its share would be a fraction of one piece (or none); valid gets the
    floor, min(MIN_VALID_TOKENS, MIN_VALID_SHARE of the tokens), from the end of train (from a piece
    start when one is within a quarter piece of the floor, else from that token)."""
    lines = book_lines(300, seed=3)
    path = write_text(tmp_path / "book.txt", lines, sep="\n")
    logs: list[str] = []
    m = prepare([path], tmp_path / "out", small_cfg(valid_fraction=0.01), log=logs.append)
    train, valid = TokenStore(tmp_path / "out"), TokenStore(tmp_path / "out", "valid")
    tok = train.tokenizer()
    n = len(tok.encode("\n".join(lines), add_special_tokens=False).ids)
    assert 2 * prep.PIECE_TOKENS < n and 0.01 * n < prep.PIECE_TOKENS     # less than one piece of share
    assert not prep._valid_pieces("\n".join(lines), n // prep.PIECE_TOKENS, 0.01).any()  # nor its phase
    floor = min(prep.MIN_VALID_TOKENS, int(prep.MIN_VALID_SHARE * (n + 1)))
    assert abs(len(valid) - floor) <= prep.PIECE_TOKENS // 4 + 1
    assert m["split"]["moved_to_valid_tokens"] == len(valid) and m["split"]["documents_cut"] == 1
    assert (train.num_docs, valid.num_docs) == (1, 1)
    assert content(train).size + content(valid).size == n
    assert np.array_equal(np.concatenate([content(train), content(valid)]),
                          tok.encode("\n".join(lines), add_special_tokens=False).ids)   # the end of the book
    assert any(line.startswith(f"valid: moved the last {len(valid)} train tokens") for line in logs)


@pytest.mark.parametrize(
    ("near", "within", "at", "cut"),
    [(17, 2, 16, True),          # a remembered line / piece start inside the second document
     (12, 2, 11, False),         # the second document's start
     (10, 0, 11, False),         # on the first document's [SEP]: the next document instead
     (20, 0, 20, True),          # nothing near: the token position itself
     (40, 0, 30, True)],         # at most the last token and its [SEP]
)
def test_take_tail_moves_the_end_of_the_stream_without_losing_a_token(tmp_path, near, within, at, cut):
    writer = prep._SplitWriter(tmp_path, "train", np.dtype("<u2"), sep_id=3)
    flat = np.arange(10, 40, dtype=np.uint16)                                # 30 content tokens
    writer.write_runs(flat, np.array([0, 10]), np.array([10, 20]), np.array([15]))
    stream = np.concatenate([flat[:10], [3], flat[10:], [3]])               # flat 15 is stream 16
    tail, lengths, was_cut = writer.take_tail(near, within)
    counts = writer.finish()
    kept = np.fromfile(tmp_path / "train.bin", np.uint16)
    assert np.array_equal(tail, stream[at:]) and lengths.sum() == tail.size and was_cut == cut
    assert np.array_equal(kept, np.append(stream[:at], [3]) if cut else stream[:at])
    assert counts == {"num_tokens": kept.size, "num_docs": 2 if at > 11 else 1}
    assert np.load(tmp_path / "train.idx.npy")[-1] == kept.size and kept[-1] == 3


def test_tiny_corpus_holds_nothing_out_and_says_so(tmp_path):
    """Three 2-token documents: even one document would be a third of the corpus, more than
    MIN_VALID_SHARE; valid stays empty and a warning says why."""
    docs = ["one two", "three four", "five six"]
    assert not any(zlib.crc32(d.encode()) % 1_000_000 < 10_000 for d in docs)
    path = write_text(tmp_path / "t.txt", docs)
    logs: list[str] = []
    m = prepare([path], tmp_path / "out", small_cfg(valid_fraction=0.01), log=logs.append)
    assert m["splits"] == {"train": {"num_tokens": 9, "num_docs": 3},       # 3 x (2 words + [SEP])
                           "valid": {"num_tokens": 0, "num_docs": 0}}
    warnings = [line for line in logs if line.startswith("warning")]
    assert len(warnings) == 1 and "only 9 tokens" in warnings[0] and "valid is empty" in warnings[0]


def test_documents_that_tokenize_to_nothing_are_dropped_and_counted(tmp_path):
    """Documents of zero-width spaces only tokenize to no ids; they used to be kept as a lone [SEP]
    (issue 15, fault 5)."""
    docs = make_docs(12)
    empty = "\u200b\u200b"
    a = write_text(tmp_path / "a.txt", docs[:6] + [empty, "\u200b \u200b"] + docs[6:])
    b = write_text(tmp_path / "b.txt", [empty, "\ufeff\u200b"])
    c = write_text(tmp_path / "c.txt", docs[:3])
    logs: list[str] = []
    m = prepare([a, b, c], tmp_path / "out", small_cfg(valid_fraction=0), log=logs.append)
    assert m["empty_documents"] == 4
    assert [s["empty_documents"] for s in m["sources"]] == [2, 2, 0]
    warnings = [line for line in logs if line.startswith("warning")]
    assert len(warnings) == 2
    for path, count in ((a, 2), (b, 2)):
        (line,) = [w for w in warnings if str(path.resolve()) in w]
        assert f"dropped {count} documents" in line
    train = TokenStore(tmp_path / "out")
    assert train.num_docs == 15 and all(d.size > 1 for d in stored_docs(train))
    tok = train.tokenizer()
    assert [squash(tok.decode(d[:-1].tolist())) for d in stored_docs(train)] == \
        [squash(d.lower()) for d in docs + docs[:3]]
    jsonl = tmp_path / "d.jsonl"       # a record whose text is blank is an empty document too, counted
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in [docs[0], "  ", "", docs[1]]))
    logs.clear()
    m = prepare([jsonl], tmp_path / "out2", small_cfg(valid_fraction=0, tokenizer=str(tmp_path / "out" / "tokenizer.json")),
                log=logs.append)
    assert m["empty_documents"] == 2 and m["splits"]["train"]["num_docs"] == 2
    assert any("dropped 2 documents" in line for line in logs)


# ---------------------------------------------------------------- idempotence, overwrite, reuse


def test_rerun_is_noop_and_differing_rerun_refuses(tmp_path, corpus):
    path, _ = corpus
    out = tmp_path / "out"
    first = prepare([path], out, small_cfg(), log=quiet)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    logs: list[str] = []
    assert prepare([path], out, small_cfg(), log=logs.append) == first
    assert logs == [f"{out.resolve()} is up to date"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    with pytest.raises(UserError, match="--overwrite"):
        prepare([path], out, small_cfg(vocab_size=150), log=quiet)
    path.write_text(path.read_text() + "\n\nA brand new document.\n")
    with pytest.raises(UserError, match="--overwrite"):
        prepare([path], out, small_cfg(), log=quiet)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    second = prepare([path], out, small_cfg(), overwrite=True, log=quiet)
    assert second["sources"][0]["sha256"] != first["sources"][0]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "out"]


def test_directory_split_by_an_older_version_needs_overwrite(tmp_path, corpus):
    path, _ = corpus
    out = tmp_path / "out"
    prepare([path], out, small_cfg(), log=quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["split"]                                           # as written before "pieces"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="split into train and valid by an older unimask.*--overwrite"):
        prepare([path], out, small_cfg(), log=quiet)
    assert "split" in prepare([path], out, small_cfg(), overwrite=True, log=quiet)


def test_existing_out_dir(tmp_path, corpus):
    path, _ = corpus
    (tmp_path / "empty").mkdir()
    prepare([path], tmp_path / "empty", small_cfg(), log=quiet)
    assert (tmp_path / "empty" / "manifest.json").is_file()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    logs: list[str] = []
    with pytest.raises(UserError, match="not a prepared directory.*--overwrite"):
        prepare([path], tmp_path / "busy", small_cfg(), log=logs.append)
    assert logs == [] and (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    prepare([path], tmp_path / "busy", small_cfg(), overwrite=True, log=quiet)
    assert not (tmp_path / "busy" / "notes.txt").exists()


def test_source_checksums(tmp_path, corpus):
    path, _ = corpus
    packed = tmp_path / "corpus.txt.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    m = prepare([packed, path], tmp_path / "out", small_cfg(), log=quiet)
    for source, p in zip(m["sources"], (packed, path)):
        assert source == {"path": str(p.resolve()), "bytes": p.stat().st_size,
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "empty_documents": 0}
    tok = (tmp_path / "out" / "tokenizer.json").read_bytes()
    assert m["tokenizer_sha256"] == hashlib.sha256(tok).hexdigest()


def test_reuse_tokenizer(tmp_path, corpus):
    path, _ = corpus
    first = prepare([path], tmp_path / "a", small_cfg(), log=quiet)
    tok_path = tmp_path / "a" / "tokenizer.json"
    other = write_text(tmp_path / "other.txt", ["The fox and the zebra.", "Old river mill."])
    m = prepare([other], tmp_path / "b", small_cfg(tokenizer=str(tok_path)), log=quiet)
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    assert m["tokenizer_sha256"] == first["tokenizer_sha256"]
    assert m["config"]["tokenizer"] == str(tok_path.resolve())
    logs: list[str] = []
    prepare([other], tmp_path / "b", small_cfg(tokenizer=str(tok_path)), log=logs.append)
    assert logs[-1].endswith("is up to date")


def build_tokenizer(vocab: list[str], path: Path) -> Path:
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.save(str(path))
    return path


def test_large_vocab_uses_uint32(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(70_000)]
    tok_path = build_tokenizer(vocab, tmp_path / "big.json")
    path = write_text(tmp_path / "t.txt", ["w69999 w5", "w12 w70000"])
    m = prepare([path], tmp_path / "out", PrepareConfig(tokenizer=str(tok_path), valid_fraction=0), log=quiet)
    assert m["dtype"] == "uint32" and m["vocab_size"] == 70_005
    store = TokenStore(tmp_path / "out")
    assert store.tokens.dtype == np.uint32
    assert store.tokens.tolist() == [70_004, 10, 3, 17, 1, 3]


def test_reused_tokenizer_without_specials_fails(tmp_path, corpus):
    tok_path = build_tokenizer(["[UNK]", "[PAD]", "a", "b"], tmp_path / "nomask.json")
    with pytest.raises(UserError, match=r"\[CLS\], \[SEP\], \[MASK\]"):
        prepare([corpus[0]], tmp_path / "out", PrepareConfig(tokenizer=str(tok_path)), log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "nomask.json"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "content", "cfg", "message"),
    [
        ("missing.txt", None, {}, "does not exist"),
        ("notes.csv", "a,b\n", {}, "unknown file type"),
        ("empty.txt", "", {}, "no documents"),
        ("blank.txt", " \n\n \t\n", {}, "no documents"),
        ("zw.txt", "\u200b\n\n\u200b\u200b\n", {}, r"all 2 documents of .*zw\.txt tokenize to nothing"),
        ("bad.jsonl", '{"text": "fine"}\n{"text": oops}\n', {}, r"bad\.jsonl:2: not valid JSON"),
        ("field.jsonl", '{"text": "fine"}\n\n{"body": "x"}\n', {}, r"field\.jsonl:3: .*'text'.*--text-field"),
        ("bytes.txt", b"fine\n\ncaf\xe9 au lait\n", {"on_invalid_utf8": "error"}, "not valid UTF-8"),
        ("v.txt", "the alphabet: abcdefghijklmnopqrstuvwxyz", {"vocab_size": 20}, "too small"),
        ("v.txt", "text", {"doc_split": "paragraph"}, "--doc-split"),
        ("v.txt", "text", {"valid_fraction": 1.5}, "--valid-fraction"),
        ("broken.txt.gz", b"this is not gzip data", {}, "corrupt gzip"),
    ],
)
def test_bad_input_is_one_line_user_error(tmp_path, name, content, cfg, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        prepare([path], tmp_path / "out", small_cfg(**cfg), log=quiet)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_invalid_utf8_replaced_and_counted(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait\n\nna\xefve \xff\xfe text\n\ngood text here\n\ncut \xe2\x82")
    logs: list[str] = []
    m = prepare([path], tmp_path / "out", small_cfg(valid_fraction=0), log=logs.append)
    assert m["invalid_utf8_bytes"] == 6
    assert m["splits"]["train"]["num_docs"] == 4
    warnings = [line for line in logs if line.startswith("warning")]
    assert len(warnings) == 1 and str(path.resolve()) in warnings[0] and "6" in warnings[0]


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch, corpus):
    path, _ = corpus
    first = prepare([path], tmp_path / "a", small_cfg(), log=quiet)
    tok = str(tmp_path / "a" / "tokenizer.json")
    bad = tmp_path / "late.jsonl"
    bad.write_text('{"text": "fine"}\n' * 50 + "{broken\n")
    monkeypatch.setattr(prep, "BATCH_CHARS", 100)
    written: list[int] = []

    def log(_: str) -> None:
        written.extend(p.stat().st_size for p in tmp_path.glob(".out.tmp-*/train.bin"))

    with pytest.raises(UserError, match=r"late\.jsonl:51"):
        prepare([path, bad], tmp_path / "out", small_cfg(tokenizer=tok), log=log)
    assert max(written) > 0, "the run should have been writing tokens before it failed"
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))

    with pytest.raises(UserError, match=r"late\.jsonl:51"):
        prepare([path, bad], tmp_path / "a", small_cfg(), overwrite=True, log=quiet)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == first
    assert not list(tmp_path.glob(".a*"))


# ---------------------------------------------------------------- TokenStore


def test_token_store_reads_splits(tmp_path, corpus):
    path, docs = corpus
    m = prepare([path], tmp_path / "out", small_cfg(valid_fraction=0), log=quiet)
    train = TokenStore(tmp_path / "out")
    assert isinstance(train.tokens, np.memmap) and train.tokens.dtype == np.uint16
    assert len(train) == m["splits"]["train"]["num_tokens"] and train.num_docs == len(docs)
    assert train.doc_offsets.dtype == np.int64 and train.special_ids == SPECIALS
    assert train.vocab_size == m["vocab_size"]

    valid = TokenStore(tmp_path / "out", "valid")
    assert len(valid) == 0 and valid.tokens.shape == (0,) and valid.doc_offsets.tolist() == [0]

    mask = train.word_start_mask()
    assert mask.dtype == torch.bool and mask.shape == (train.vocab_size,)
    vocab = train.tokenizer().get_vocab()
    assert mask[list(SPECIALS.values())].all()
    assert all(bool(mask[i]) != token.startswith("##") for token, i in vocab.items())
    assert not mask.all() and mask.any()


def test_token_store_errors(tmp_path, corpus):
    with pytest.raises(UserError, match="unimask prepare --text FILES --out DIR"):
        TokenStore(tmp_path / "nowhere")
    prepare([corpus[0]], tmp_path / "out", small_cfg(), log=quiet)
    with pytest.raises(UserError, match="no split 'test'"):
        TokenStore(tmp_path / "out", "test")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["format"] = "something-else/9"
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="format"):
        TokenStore(tmp_path / "out")


# ---------------------------------------------------------------- CLI glue and real data


def test_cli_arguments_and_run(tmp_path, corpus, capsys):
    parser = argparse.ArgumentParser()
    prep.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        ["--text", str(corpus[0]), "--out", str(out), "--vocab-size", "150", "--cased",
         "--min-frequency", "1", "--valid-fraction", "0.2", "--doc-split", "line"]
    )
    assert prep.run(args) == 0
    said = capsys.readouterr().out.strip().splitlines()
    assert "train" in said[-2] and said[-1].startswith(f"next: unimask pretrain --recipe mlm_mini --data {out}")
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config == {
        "vocab_size": 150, "lowercase": False, "min_frequency": 1, "text_field": "text",
        "doc_split": "line", "valid_fraction": 0.2, "tokenizer": None, "on_invalid_utf8": "replace",
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", str(out)])


def test_a_directory_stands_for_its_text_files(tmp_path, corpus):
    """Issue 21: `--text DIR/` reads the .txt / .txt.gz / .jsonl / .jsonl.gz files below DIR (not hidden ones)."""
    texts = tmp_path / "texts"
    (texts / "more").mkdir(parents=True)
    (texts / ".hidden").mkdir()
    shutil.copyfile(corpus[0], texts / "b.txt")
    write_text(texts / "more" / "a.txt", make_docs(10, seed=1))
    for ignored in (texts / "notes.md", texts / ".hidden" / "c.txt"):
        ignored.write_text("not read\n")
    m = prepare([texts], tmp_path / "out", small_cfg(), log=quiet)
    assert [s["path"] for s in m["sources"]] == [str(texts / "b.txt"), str(texts / "more" / "a.txt")]
    again = prepare([texts / "b.txt", str(texts) + "/"], tmp_path / "out2", small_cfg(), log=quiet)["sources"]
    assert [s["path"] for s in again] == [s["path"] for s in m["sources"]]          # b.txt named twice, read once
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is a directory without .txt, .txt.gz, .jsonl or .jsonl.gz files"):
        prepare([tmp_path / "empty"], tmp_path / "out3", small_cfg(), log=quiet)


def test_real_enwiki_slice(tmp_path):
    source = SHARED_DATA / "corpus" / "enwiki_sample.txt.gz"
    if not source.is_file():
        pytest.skip(f"{source} not available")
    with gzip.open(source, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(3000)]
    path = tmp_path / "enwiki_head.txt"
    path.write_text("".join(lines), encoding="utf-8")
    m = prepare([path], tmp_path / "out", PrepareConfig(vocab_size=3000), log=quiet)
    train, valid = TokenStore(tmp_path / "out"), TokenStore(tmp_path / "out", "valid")
    n_docs = train.num_docs + valid.num_docs - m["split"]["documents_cut"]     # a cut one is in both
    assert n_docs == sum(1 for line in lines if line.startswith("= ")) and valid.num_docs >= 1
    assert 0.005 < len(valid) / (len(train) + len(valid)) < 0.02
    assert m["vocab_size"] == 3000
    assert (train.tokens == SPECIALS["unk"]).mean() < 0.01
    tok = train.tokenizer()
    first = "".join(lines[: lines.index("\n")]).strip()
    decoded = tok.decode(stored_docs(train)[0][:-1].tolist())
    assert squash(decoded)[:200] == squash(tok.normalizer.normalize_str(first))[:200]
