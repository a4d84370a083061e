"""Tests for `unimask prepare` (raw text -> tokenizer -> token arrays) and the TokenStore reader."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
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


def test_tiny_input_moves_last_doc_to_valid(tmp_path):
    docs = ["one two", "three four", "five six"]
    assert not any(zlib.crc32(d.encode()) % 1_000_000 < 10_000 for d in docs)
    path = write_text(tmp_path / "t.txt", docs)
    m = prepare([path], tmp_path / "out", small_cfg(valid_fraction=0.01), log=quiet)
    assert m["splits"]["train"]["num_docs"] == 2 and m["splits"]["valid"]["num_docs"] == 1
    train, valid = TokenStore(tmp_path / "out", "train"), TokenStore(tmp_path / "out", "valid")
    assert len(train) + len(valid) == m["splits"]["train"]["num_tokens"] + m["splits"]["valid"]["num_tokens"]
    assert (tmp_path / "out" / "train.bin").stat().st_size == 2 * len(train)
    assert valid.tokenizer().decode(stored_docs(valid)[0].tolist()) == "five six"
    assert valid.doc_offsets.tolist() == [0, len(valid)]


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
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
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
    assert "train" in capsys.readouterr().out.strip().splitlines()[-1]
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config == {
        "vocab_size": 150, "lowercase": False, "min_frequency": 1, "text_field": "text",
        "doc_split": "line", "valid_fraction": 0.2, "tokenizer": None, "on_invalid_utf8": "replace",
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", str(out)])


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
    n_docs = train.num_docs + valid.num_docs
    assert n_docs == sum(1 for line in lines if line.startswith("= ")) and valid.num_docs >= 1
    assert m["vocab_size"] == 3000
    assert (train.tokens == SPECIALS["unk"]).mean() < 0.01
    tok = train.tokenizer()
    first = "".join(lines[: lines.index("\n")]).strip()
    decoded = tok.decode(stored_docs(train)[0][:-1].tolist())
    assert squash(decoded)[:200] == squash(tok.normalizer.normalize_str(first))[:200]
