"""Starting from released transformers models (issue 17): BERT, RoBERTa and ELECTRA directories built
from tiny configs (never from the hub) load into unimask with the same hidden states, MLM / RTD logits
and tokenizer ids; tokenizer.json settings (padding, truncation) are switched off."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

transformers = pytest.importorskip("transformers")

from unimask.errors import UserError  # noqa: E402
from unimask import checkpoint  # noqa: E402
from unimask.model.heads import LMHead  # noqa: E402
from unimask.objectives.electra import RTDHead  # noqa: E402

TEXT = [
    "The quick brown fox jumps over the lazy dog.", "Café naïve résumé — déjà vu!", "北京 東京 서울 🙂 🚀",
    "In the beginning God created the heaven and the earth.", "And the earth was without form, and void;",
    "double  spaces\tand\nnewlines", "don't stop believing; it's 3.14 or 2,718", "ELECTRA RoBERTa BERT",
] * 4
ODD = ["Héllo  wörld!\nNew line", "北京欢迎你 🙂🚀", "  leading and trailing  ", "naïve café's résumé", "a\u00a0b\u200bc", ""]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert_tokenizer(directory: Path, padding: int = 0) -> Tokenizer:
    """A WordPiece tokenizer.json + vocab.txt as BertTokenizer builds it; `padding` > 0 stores a
    sentence-transformers style `padding: Fixed` and `truncation` in tokenizer.json."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(TEXT, trainers.WordPieceTrainer(vocab_size=150, min_frequency=1, special_tokens=BERT_SPECIALS,
                                                            continuing_subword_prefix="##", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    if padding:
        tok.enable_padding(pad_id=0, pad_token="[PAD]", length=padding)
        tok.enable_truncation(max_length=padding)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    vocab = tok.get_vocab()
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.__getitem__)), encoding="utf-8")
    return tok


def roberta_tokenizer(directory: Path) -> Tokenizer:
    """A byte-level BPE tokenizer.json + vocab.json + merges.txt as RobertaTokenizer builds it."""
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=400, min_frequency=1, special_tokens=ROBERTA_SPECIALS,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tok.model.save(str(directory))                                   # vocab.json, merges.txt
    return tok


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorms and biases too, so a misplaced tensor cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_bert(directory: Path, seed: int = 0, padding: int = 0) -> Path:
    tok = bert_tokenizer(directory, padding)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64, **TINY)
    _randomize(transformers.BertForMaskedLM(config), seed).save_pretrained(directory)
    transformers.BertTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(directory)
    bert_tokenizer(directory, padding)                  # the tokenizer.json under test, not transformers' rewrite
    return directory


def make_roberta(directory: Path, seed: int = 0) -> Path:
    tok = roberta_tokenizer(directory)
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=66, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2, **TINY)
    _randomize(transformers.RobertaForMaskedLM(config), seed).save_pretrained(directory)
    transformers.RobertaTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt")).save_pretrained(directory)
    roberta_tokenizer(directory)
    return directory


def make_electra(directory: Path, seed: int = 0, embedding_size: int = 16) -> Path:
    tok = bert_tokenizer(directory)
    torch.manual_seed(seed)
    config = transformers.ElectraConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64,
                                        embedding_size=embedding_size, **TINY)
    _randomize(transformers.ElectraForPreTraining(config), seed).save_pretrained(directory)
    transformers.ElectraTokenizer(vocab=str(directory / "vocab.txt")).save_pretrained(directory)
    bert_tokenizer(directory)
    return directory


MAKERS = {"bert": make_bert, "roberta": make_roberta, "electra": make_electra}
AUTO = {"bert": transformers.BertForMaskedLM, "roberta": transformers.RobertaForMaskedLM,
        "electra": transformers.ElectraForPreTraining}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: make(root / name) for name, make in MAKERS.items()}


def padded_batch(tokenizer: Tokenizer, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer.encode(t).ids for t in ["The quick brown fox jumps over the lazy dog.", "Café 北京 🙂", "earth"]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    return ids, ids.ne(pad).long()


FIGURES: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("family", list(MAKERS))
def test_parity_with_transformers(family_dirs, family: str) -> None:
    """Hidden states (real tokens of a right-padded batch) within 1e-4; MLM / RTD logits where there is a head."""
    directory = family_dirs[family]
    loaded = checkpoint.load_hf_model(directory)
    assert loaded.family.name == family
    theirs = AUTO[family].from_pretrained(directory, attn_implementation="eager").eval()
    pad = loaded.tokenizer.token_to_id(loaded.special_tokens["pad"])
    assert pad == loaded.config.pad_token_id
    ids, mask = padded_batch(loaded.tokenizer, pad)
    with torch.no_grad():
        ours = loaded.encoder(ids, attention_mask=mask)                               # (B, T, D)
        out = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    hidden_diff = (ours - out.hidden_states[-1])[real].abs().max().item()
    assert hidden_diff <= 1e-4
    figures = {"hidden": hidden_diff}
    if family in ("bert", "roberta"):
        cfg = loaded.config
        head = LMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps)
        head.load_state_dict(loaded.heads["lm"])
        with torch.no_grad():
            logits = head(ours[real], loaded.encoder.word_embeddings.weight)
        figures["mlm_logits"] = (logits - out.logits[real]).abs().max().item()
        assert figures["mlm_logits"] <= 1e-4
    else:
        head = RTDHead(loaded.config.hidden_size)
        head.load_state_dict(loaded.heads["rtd"])
        assert loaded.encoder.embeddings.project is not None
        with torch.no_grad():
            figures["rtd_logits"] = (head(ours) - out.logits)[real].abs().max().item()
        assert figures["rtd_logits"] <= 1e-4
    FIGURES[family] = figures
    print(family, figures)


@pytest.mark.parametrize("family", list(MAKERS))
def test_tokenizer_ids_match_transformers_class(family_dirs, family: str) -> None:
    """unimask's tokenizer (from tokenizer.json, and rebuilt from the vocabulary files alone) gives the
    ids of transformers' own tokenizer class built from vocab.txt / vocab.json + merges.txt."""
    directory = family_dirs[family]
    ours = checkpoint.load_hf_model(directory).tokenizer
    if family == "roberta":
        theirs = transformers.RobertaTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    else:
        theirs = transformers.BertTokenizer(vocab=str(directory / "vocab.txt"))
    only_vocab = directory.parent / f"{family}-vocab-only"
    only_vocab.mkdir(exist_ok=True)
    for name in ("vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            (only_vocab / name).write_bytes((directory / name).read_bytes())
    rebuilt = checkpoint.read_hf_tokenizer(only_vocab)
    for text in ODD:
        expected = theirs(text)["input_ids"]
        assert ours.encode(text).ids == expected, text
        assert rebuilt.encode(text).ids == expected, text
        assert ours.encode(text, add_special_tokens=False).ids == theirs(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_json_padding_and_truncation_are_switched_off(tmp_path: Path) -> None:
    """A sentence-transformers style tokenizer.json (padding Fixed 128, truncation 128): unimask encodes
    `[CLS] text [SEP]` as transformers does, never `[CLS] text [PAD] ... [SEP]`; finetune's loader too."""
    directory = make_bert(tmp_path / "st", padding=128)
    spec = json.loads((directory / "tokenizer.json").read_text())
    assert spec["padding"] and spec["truncation"]
    theirs = transformers.BertTokenizer(vocab=str(directory / "vocab.txt"))
    _, _, tokenizer = checkpoint.load_hf_encoder(directory)
    from unimask.tasks.finetune import load_pretrained
    pretrained = load_pretrained(directory)
    from unimask.tasks.base import SpecialIds
    from unimask.tasks.glue import Example, glue_task
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\n")
    task = glue_task("sst2", tmp_path / "sst2")
    texts = ["The quick brown fox.", "Café 北京 🙂"]
    features = task.featurize([Example(t, None, "1") for t in texts], pretrained.tokenizer,
                              SpecialIds.of(pretrained.tokenizer), 128)
    assert [f["input_ids"] for f in features] == [theirs(t)["input_ids"] for t in texts]
    for tok in (tokenizer, pretrained.tokenizer):
        for text in ["The quick brown fox.", "Café 北京 🙂"]:
            assert tok.encode(text).ids == theirs(text)["input_ids"]
            assert 0 not in tok.encode(text, add_special_tokens=False).ids
        assert len(tok.encode("the " * 300).ids) == 302                  # no truncation either


def test_unsupported_family_and_missing_files(tmp_path: Path, family_dirs, capsys) -> None:
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert checkpoint.is_hf_directory(tmp_path / "gpt")
    with pytest.raises(UserError, match=r"'gpt2' model; unimask loads the bert, roberta, electra families"):
        checkpoint.load_hf_model(tmp_path / "gpt")
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((family_dirs["bert"] / "config.json").read_bytes())
    with pytest.raises(UserError, match="has no model.safetensors"):
        checkpoint.load_hf_model(no_weights)
    no_tokenizer = tmp_path / "notok"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((family_dirs["bert"] / name).read_bytes())
    with pytest.raises(UserError, match="has no tokenizer files: expected tokenizer.json, or vocab.txt"):
        checkpoint.load_hf_model(no_tokenizer)
    small = tmp_path / "small_vocab"                  # weights and tokenizer of different models
    shutil.copytree(family_dirs["bert"], small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 10}))
    with pytest.raises(UserError, match=r"tokenizer.json has \d+ tokens but the model only 10 embeddings"):
        checkpoint.load_hf_model(small)
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", "mlm_mini", "--init", str(small), "--data", str(tmp_path), "--out", str(run)]) == 2
    assert "tokens but the model only 10 embeddings" in capsys.readouterr().err and not run.exists()


# ---- unimask prepare --tokenizer DIR, unimask pretrain --init DIR -----------------------------------

from safetensors.torch import load_file  # noqa: E402

from unimask.cli import main  # noqa: E402
from unimask.data.prepare import PrepareConfig, prepare  # noqa: E402

CORPUS = [f"{TEXT[i % len(TEXT)]} {TEXT[(3 * i + 1) % len(TEXT)]} line {i}." for i in range(240)]


@pytest.fixture(scope="module")
def family_data(family_dirs, tmp_path_factory) -> dict[str, Path]:
    """Each family's corpus prepared with `--tokenizer DIR` (the transformers directory itself)."""
    root = tmp_path_factory.mktemp("family-data")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(CORPUS) + "\n", encoding="utf-8")
    return {name: (prepare([text], root / name, PrepareConfig(tokenizer=str(directory), valid_fraction=0.1),
                           log=lambda *a: None), root / name)[1]
            for name, directory in family_dirs.items()}


def test_prepare_with_a_transformers_directory(family_data, family_dirs) -> None:
    manifest = json.loads((family_data["roberta"] / "manifest.json").read_text())
    assert manifest["special_tokens"] == {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}
    assert manifest["special_ids"] == {"pad": 1, "unk": 3, "cls": 0, "sep": 2, "mask": 4}
    theirs = transformers.RobertaTokenizer(vocab=str(family_dirs["roberta"] / "vocab.json"),
                                           merges=str(family_dirs["roberta"] / "merges.txt"))
    import numpy as np
    tokens = np.fromfile(family_data["roberta"] / "train.bin", dtype=manifest["dtype"])
    first = theirs(CORPUS[0], add_special_tokens=False)["input_ids"]
    assert any(tokens[i:i + len(first)].tolist() == first for i in range(0, 200))
    assert json.loads((family_data["bert"] / "manifest.json").read_text())["special_tokens"]["cls"] == "[CLS]"


RUN = ["--set", "data.seq_len=32", "--set", "train.batch_size=4", "--set", "train.eval_batches=1",
       "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "train.log_every=1",
       "--set", "train.warmup_steps=0", "--set", "train.device=cpu", "--set", "train.precision=fp32", "--quiet"]
HEAD_PREFIX = {"mlm": ("lm", "objective.head."), "pmlm": ("lm", "objective.head."), "electra": ("rtd", "objective.rtd_head.")}


@pytest.mark.parametrize("family,objective", [("bert", "mlm"), ("roberta", "mlm"), ("electra", "electra"),
                                              ("bert", "cocolm"), ("roberta", "maelm"), ("bert", "pmlm")])
@pytest.mark.slow
def test_pretrain_init(family_dirs, family_data, tmp_path: Path, family: str, objective: str) -> None:
    """(a) the encoder (and a shared head) start as the checkpoint's: one step at lr 1e-12 keeps them;
    (b) more steps train and save; (c) --resume continues the run, not --init."""
    run = tmp_path / "run"
    base = ["pretrain", "--recipe", f"{objective}_mini", "--init", str(family_dirs[family]),
            "--data", str(family_data[family]), "--out", str(run), *RUN]
    assert main([*base, "--set", "train.steps=1", "--set", "train.lr=1e-12"]) == 0
    loaded = checkpoint.load_hf_model(family_dirs[family])
    saved = load_file(run / "checkpoints" / "step_00000001" / "model.safetensors")
    for key, tensor in loaded.encoder.state_dict().items():
        torch.testing.assert_close(saved[f"encoder.{key}"], tensor, atol=1e-6, rtol=0)
    if objective in HEAD_PREFIX and HEAD_PREFIX[objective][0] in loaded.heads:
        kind, prefix = HEAD_PREFIX[objective]
        for key, tensor in loaded.heads[kind].items():
            torch.testing.assert_close(saved[prefix + key], tensor, atol=1e-6, rtol=0)
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(family_dirs[family]) and config["model"]["hidden_size"] == 32
    trained = tmp_path / "trained"
    assert main([*base[:-2 - len(RUN)], "--out", str(trained), *RUN, "--set", "train.steps=2"]) == 0
    assert main(["pretrain", "--out", str(trained), "--resume", "--set", "train.steps=3", "--quiet"]) == 0
    after = load_file(trained / "checkpoints" / "step_00000003" / "model.safetensors")
    word = "encoder.embeddings.word.weight"
    assert not torch.allclose(after[word], saved[word], atol=1e-5)
    run = trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]


def test_pretrain_init_refusals(family_dirs, family_data, kjv_data, tmp_path: Path, capsys) -> None:
    """--set model.* against the checkpoint, data of another tokenizer, an objective that cannot use
    ELECTRA's narrow embeddings: one-line errors, and no run directory."""
    cases = [
        (["--init", str(family_dirs["bert"]), "--data", str(family_data["bert"]), "--set", "model.hidden_size=64"],
         "--set model.hidden_size=64 contradicts --init"),
        (["--init", str(family_dirs["bert"]), "--data", str(kjv_data)], "was prepared with another tokenizer than --init"),
        (["--init", str(family_dirs["roberta"]), "--data", str(family_data["bert"])], "another tokenizer"),
        (["--init", str(family_dirs["electra"]), "--data", str(family_data["electra"]), "--set", "objective_name=cocolm"],
         "needs model.embedding_size equal to hidden_size"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert main(["pretrain", "--recipe", "mlm_mini", "--out", str(out), *args, *RUN]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert not out.exists()
    if (family_dirs["bert"] / "config.json").is_file():
        assert main(["pretrain", "--recipe", "mlm_mini", "--init", str(tmp_path / "nowhere"), "--out",
                     str(tmp_path / "x"), *RUN]) == 2


@pytest.mark.parametrize("family", ["roberta", "electra"])
def test_finetune_and_predict_a_transformers_directory(family_dirs, tmp_path: Path, capsys, family: str) -> None:
    """RoBERTa's <s> </s> <pad> names and its single token type, ELECTRA's narrow embeddings: a pair
    task fine-tunes from the directory and `unimask predict` runs the result."""
    import json as _json

    from unimask.cli import main

    rows = [(f"the cat {i}", f"a dog {i % 3}", "yes" if i % 2 else "no") for i in range(24)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(_json.dumps({"a": a, "b": b, "y": y}) + "\n" for a, b, y in rows))
    out = tmp_path / "ft"
    assert main(["finetune", "--checkpoint", str(family_dirs[family]), "--task", "classify", "--train", str(data),
                 "--dev", str(data), "--text-column", "a", "--text-pair-column", "b", "--label-column", "y",
                 "--max-length", "24", "--epochs", "1", "--batch-size", "8", "--precision", "fp32", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--input", str(data), "--device", "cpu", "--quiet"]) == 0
    predicted = [_json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(predicted) == 24 and all(p["prediction"] in ("no", "yes") for p in predicted)


# ---- --init-generator: an ELECTRA generator directory (ElectraForMaskedLM) ----

def make_electra_generator(directory: Path, discriminator: Path, hidden: int, seed: int = 1) -> Path:
    """A generator of width `hidden` (2 heads, FFN 4x, 1 layer) sharing `discriminator`'s embedding
    tables, as the released ELECTRA pairs do."""
    disc = json.loads((discriminator / "config.json").read_text())
    torch.manual_seed(seed)
    config = transformers.ElectraConfig(
        vocab_size=disc["vocab_size"], max_position_embeddings=disc["max_position_embeddings"],
        embedding_size=disc["embedding_size"], hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=4 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = _randomize(transformers.ElectraForMaskedLM(config), seed)
    shared = load_file(discriminator / "model.safetensors")
    with torch.no_grad():
        for name, parameter in model.electra.embeddings.named_parameters():
            parameter.copy_(shared[f"electra.embeddings.{name}"])
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "vocab.txt"):          # the discriminator's vocabulary (training is not deterministic)
        (directory / name).write_bytes((discriminator / name).read_bytes())
    return directory


@pytest.fixture(scope="module")
def generator_dirs(family_dirs, tmp_path_factory) -> dict[str, Path]:
    """electra: a 24-wide generator for the 16-wide embeddings (its own embedding projection);
    electra_full / electra_full_generator: a discriminator with embeddings as wide as its hidden
    size (what COCO-LM needs) and a 32-wide generator."""
    root = tmp_path_factory.mktemp("generators")
    full = make_electra(root / "electra_full", embedding_size=TINY["hidden_size"])
    return {"electra": make_electra_generator(root / "electra_generator", family_dirs["electra"], 24),
            "electra_full": full, "electra_full_generator": make_electra_generator(root / "full_generator", full, 32)}


@pytest.mark.parametrize("objective,discriminator,generator", [("electra", "electra", "electra"),
                                                               ("cocolm", "electra_full", "electra_full_generator")])
def test_init_generator_parity(family_dirs, generator_dirs, objective, discriminator, generator) -> None:
    """The generator unimask loads computes ElectraForMaskedLM's MLM logits (within 1e-4) on a padded
    batch, through the encoder's shared embeddings."""
    from unimask.objectives import OBJECTIVES
    from unimask.objectives.base import Vocab
    from unimask.train import init as init_mod

    disc_dir = family_dirs.get(discriminator) or generator_dirs[discriminator]
    init = init_mod.read_init(disc_dir)
    gen = init_mod.read_init_generator(generator_dirs[generator], init.config, init.tokenizer)
    fields = init_mod.generator_fields(objective, gen, init.config)
    spec = OBJECTIVES[objective]
    made = spec(spec.Config(**fields), init.config, Vocab(size=init.config.vocab_size))
    assert init_mod.apply_init_generator(made, init.state["embeddings.word.weight"], gen) == []
    encoder = checkpoint.load_hf_model(disc_dir).encoder
    theirs = transformers.ElectraForMaskedLM.from_pretrained(generator_dirs[generator], attn_implementation="eager").eval()
    ids, mask = padded_batch(init.tokenizer, init.config.pad_token_id)
    made.eval()
    with torch.no_grad():
        hidden = made.generator(encoder, ids, None, None, mask)                     # (B, T, Dg)
        real = mask.bool()
        ours = made.generator.logits(hidden[real], encoder)                        # (N, V)
        expected = theirs(input_ids=ids, attention_mask=mask).logits[real]
    diff = (ours - expected).abs().max().item()
    print(objective, "generator logits max abs diff", diff)
    assert diff <= 1e-4
    assert (made.generator.project is not None) == (gen.hidden_size != json.loads(
        (disc_dir / "config.json").read_text())["embedding_size"])


def test_pretrain_init_generator(family_dirs, family_data, generator_dirs, tmp_path: Path, capsys) -> None:
    """`pretrain --init DISC --init-generator GEN`: the run's generator shape comes from GEN, its weights
    start as GEN's (one step at lr 1e-12), and the config records both paths; refusals are one line
    and leave no run directory."""
    run = tmp_path / "run"
    base = ["pretrain", "--recipe", "electra_mini", "--init", str(family_dirs["electra"]),
            "--data", str(family_data["electra"]), *RUN]
    assert main([*base, "--out", str(run), "--init-generator", str(generator_dirs["electra"]),
                 "--set", "train.steps=1", "--set", "train.lr=1e-12"]) == 0
    assert "initialised the generator from" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["init_generator"] == str(generator_dirs["electra"])
    assert (config["objective"]["generator_hidden_size"], config["objective"]["generator_layers"]) == (24, 1)
    saved = load_file(run / "checkpoints" / "step_00000001" / "model.safetensors")
    stored = load_file(generator_dirs["electra"] / "model.safetensors")
    torch.testing.assert_close(saved["objective.generator.blocks.layers.0.attn.query.weight"],
                               stored["electra.encoder.layer.0.attention.self.query.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(saved["objective.generator.head.bias"], stored["generator_lm_head.bias"], atol=1e-6, rtol=0)
    cases = [
        (["--out", str(tmp_path / "b"), "--init-generator", str(family_dirs["electra"])], "is not an ELECTRA generator"),
        (["--out", str(tmp_path / "c"), "--init-generator", str(generator_dirs["electra_full_generator"])],
         "has embedding_size=32 and the encoder has 16"),
        (["--out", str(tmp_path / "d"), "--init-generator", str(generator_dirs["electra"]),
          "--set", "objective.generator_layers=2"], "--set objective.generator_layers=2 contradicts --init-generator"),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert not Path(args[1]).exists()
    out = tmp_path / "f"
    assert main(["pretrain", "--recipe", "mlm_mini", "--data", str(family_data["electra"]), "--out", str(out), *RUN,
                 "--init", str(family_dirs["electra"]), "--init-generator", str(generator_dirs["electra"])]) == 2
    assert "--init-generator is for objectives with a generator (electra, cocolm), not mlm" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "electra_mini", "--data", str(family_data["electra"]), "--out", str(out), *RUN,
                 "--init-generator", str(generator_dirs["electra"])]) == 2
    assert "--init-generator needs --init" in capsys.readouterr().err
    assert not out.exists()


def test_bert_pooler_starts_the_cls_classification_head(tmp_path: Path) -> None:
    """A BERT directory with a pooler (BertModel, BertForSequenceClassification): fine-tuning's [CLS]
    head starts from it, as transformers' BertForSequenceClassification does (pooled output within
    1e-5); mean pooling and random init start fresh."""
    from unimask.tasks.glue import ClassificationHead, SentenceTask

    directory = tmp_path / "bert_cls"
    tok = bert_tokenizer(directory)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64, **TINY)
    theirs = _randomize(transformers.BertForSequenceClassification(config), 3)
    theirs.save_pretrained(directory)
    bert_tokenizer(directory)
    pretrained = checkpoint.load_pretrained(directory)
    assert set(pretrained.heads) == {"pooler"}
    assert checkpoint.load_pretrained(directory, random_init=True).heads == {}
    task = object.__new__(SentenceTask)
    for pooling, expected in (("cls", ["pooler"]), ("mean", [])):
        task.pooling = pooling
        head = ClassificationHead(32, 2, 0.0, pooling)
        assert task.init_head(head, pretrained.heads) == expected
    head = ClassificationHead(32, 2, 0.0, "cls")
    task.pooling = "cls"
    task.init_head(head, pretrained.heads)
    ids, mask = padded_batch(pretrained.tokenizer, 0)
    encoder = pretrained.build(0, 0.0).eval()
    with torch.no_grad():
        ours = torch.tanh(head.dense(encoder(ids, attention_mask=mask)[:, 0]))
        pooled = theirs.bert(input_ids=ids, attention_mask=mask).pooler_output
    assert (ours - pooled).abs().max().item() <= 1e-5


def test_bert_pooler_is_carried_through_continued_pretraining(family_dirs, family_data, tmp_path: Path, capsys) -> None:
    """A released BERT with a pooler (BertForPreTraining, as bert-base ships): no objective trains the
    pooler, but every checkpoint of a run from it carries it unchanged (through --resume and a second
    --init too), fine-tuning's [CLS] head starts from it, and a bare export is a BertModel holding it,
    which transformers loads without add_pooling_layer=False and without missing weights."""
    directory = tmp_path / "bert_pretraining"
    config = transformers.BertConfig.from_pretrained(family_dirs["bert"])     # and its tokenizer, which made the data
    theirs = _randomize(transformers.BertForPreTraining(config), 5)
    theirs.save_pretrained(directory)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (family_dirs["bert"] / name).is_file():
            shutil.copyfile(family_dirs["bert"] / name, directory / name)
    released = {"weight": theirs.bert.pooler.dense.weight.detach(), "bias": theirs.bert.pooler.dense.bias.detach()}

    def assert_released_pooler(heads: dict) -> None:
        assert set(heads["pooler"]) == set(released)
        for name, tensor in released.items():
            assert torch.equal(heads["pooler"][name], tensor), name

    run = tmp_path / "maelm"
    assert main(["pretrain", "--recipe", "maelm_mini", "--init", str(directory), "--data", str(family_data["bert"]),
                 "--out", str(run), *RUN, "--set", "train.steps=1"]) == 0
    assert main(["pretrain", "--out", str(run), "--resume", "--set", "train.steps=2", "--quiet"]) == 0
    latest = checkpoint.find_checkpoint(run)
    assert latest.name == "step_00000002"
    assert_released_pooler(checkpoint.read_carried(latest))
    assert_released_pooler(checkpoint.load_pretrained(run).heads)
    assert checkpoint.load_pretrained(run, random_init=True).heads == {}

    chained = tmp_path / "mlm"
    assert main(["pretrain", "--recipe", "mlm_mini", "--init", str(run), "--data", str(family_data["bert"]),
                 "--out", str(chained), *RUN, "--set", "train.steps=1"]) == 0
    assert_released_pooler(checkpoint.load_pretrained(chained).heads)

    out = tmp_path / "hf"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote BertModel" in printed and "add_pooling_layer" not in printed, printed
    assert "add_pooling_layer" not in (out / "README.md").read_text()
    model, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(model.pooler.dense.weight, released["weight"])
    encoder, _ = checkpoint.load_encoder(latest)
    ids, mask = padded_batch(checkpoint.load_hf_model(out).tokenizer, 0)
    with torch.no_grad():
        ours = torch.tanh(torch.nn.functional.linear(encoder.eval()(ids, attention_mask=mask)[:, 0], *released.values()))
        pooled = model.eval()(input_ids=ids, attention_mask=mask).pooler_output
    assert (ours - pooled).abs().max().item() <= 1e-5

    # an MLM run exports as BertForMaskedLM, which has no pooler: the card says how to keep it (--bare)
    assert main(["export", str(chained), "--out", str(tmp_path / "hf-mlm")]) == 0
    assert "wrote BertForMaskedLM" in capsys.readouterr().out
    assert "unimask export --bare" in (tmp_path / "hf-mlm" / "README.md").read_text()
    assert main(["export", str(chained), "--out", str(tmp_path / "hf-bare"), "--bare"]) == 0
    assert "wrote BertModel" in capsys.readouterr().out
    model, info = transformers.BertModel.from_pretrained(tmp_path / "hf-bare", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(model.pooler.dense.bias, released["bias"])

    # a carried file that meta.json does not vouch for is not the run's
    meta_path = checkpoint.find_checkpoint(chained) / "meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("sha256", "bytes"):
        meta[key].pop("carried.safetensors")
    meta_path.write_text(json.dumps(meta))
    assert checkpoint.read_carried(meta_path.parent) == {}


def test_carried_heads_are_fp32_and_a_damaged_pooler_is_refused(family_dirs, family_data, tmp_path: Path, capsys) -> None:
    """The carried pooler is stored in the checkpoint's fp32 whatever the --init model was saved in; a
    pooler missing a tensor is a one-line error before any run directory is made."""
    half = {"pooler": {"weight": torch.ones(4, 4, dtype=torch.float16), "bias": torch.ones(4, dtype=torch.bfloat16)}}
    assert {t.dtype for t in checkpoint.carried_tensors(half).values()} == {torch.float32}
    assert checkpoint.carried_tensors({"lm": {"weight": torch.ones(2)}}) == {}          # only CARRIED_HEADS

    directory = tmp_path / "bert_damaged"
    config = transformers.BertConfig.from_pretrained(family_dirs["bert"])
    transformers.BertModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (family_dirs["bert"] / name).is_file():
            shutil.copyfile(family_dirs["bert"] / name, directory / name)
    stored = load_file(directory / "model.safetensors")
    del stored["pooler.dense.bias"]
    from safetensors.torch import save_file
    save_file(stored, directory / "model.safetensors", metadata={"format": "pt"})
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", "maelm_mini", "--init", str(directory), "--data", str(family_data["bert"]),
                 "--out", str(run), *RUN, "--set", "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has an incomplete or misshapen pooler (weight (32, 32); expected weight (32, 32) and bias (32,))" in err, err
    assert not run.exists()


@pytest.mark.parametrize("family,objective,architecture", [("roberta", "mlm", "RobertaForMaskedLM"),
                                                           ("electra", "electra", "ElectraForPreTraining"),
                                                           ("electra", "mlm", "ElectraForMaskedLM"),
                                                           ("roberta", "maelm", "RobertaModel")])
def test_export_back_in_family(family_dirs, family_data, tmp_path: Path, capsys, family, objective, architecture) -> None:
    """A model continued from RoBERTa / ELECTRA exports as a RoBERTa / ELECTRA that transformers loads
    natively: hidden states and head logits within 1e-4 of unimask's on a padded batch."""
    from unimask.objectives.electra import RTDHead
    from unimask.model.encoder import embedding_width

    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", f"{objective}_mini", "--init", str(family_dirs[family]),
                 "--data", str(family_data[family]), "--out", str(run), *RUN, "--set", "train.steps=2"]) == 0
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert f"wrote {architecture}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family and config["architectures"] == [architecture]
    ckpt = checkpoint.find_checkpoint(run)
    encoder, cfg = checkpoint.load_encoder(ckpt)
    theirs = getattr(transformers, architecture).from_pretrained(out, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["The quick brown fox jumps over the lazy dog.", "Café 北京 🙂", "earth"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    loaded = checkpoint.load_hf_model(family_dirs[family])
    assert ids[0].tolist()[:mask[0].sum()] == loaded.tokenizer.encode(texts[0]).ids
    real = mask.bool()
    with torch.no_grad():
        ours = encoder.eval()(ids, attention_mask=mask)
        out_hf = theirs(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        figures = {"hidden": (ours - out_hf.hidden_states[-1])[real].abs().max().item()}
        if architecture.endswith("ForMaskedLM"):
            head = LMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps, embedding_size=embedding_width(cfg))
            head.load_state_dict(checkpoint.read_tensors(ckpt / "model.safetensors", "objective.head."))
            figures["mlm_logits"] = (head(ours[real], encoder.word_embeddings.weight) - out_hf.logits[real]).abs().max().item()
        elif architecture == "ElectraForPreTraining":
            head = RTDHead(cfg.hidden_size)
            head.load_state_dict(checkpoint.read_tensors(ckpt / "model.safetensors", "objective.rtd_head."))
            figures["rtd_logits"] = (head(ours) - out_hf.logits)[real].abs().max().item()
    with capsys.disabled():
        print(family, objective, architecture, figures)
    assert all(v <= 1e-4 for v in figures.values()), figures
    assert main(["export", str(run), "--out", str(tmp_path / "as_bert"), "--family", "bert"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("unimask export: error: cannot export as BERT: its "), err
