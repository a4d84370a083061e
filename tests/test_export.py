"""Parity of `unimask export --to hf`: transformers' BERT must compute what unimask computes."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

transformers = pytest.importorskip("transformers")

from unimask.cli import main  # noqa: E402
from unimask.errors import UserError
from unimask.train.checkpoint import save_checkpoint  # noqa: E402
from unimask.export import hf  # noqa: E402
from unimask.model.encoder import Encoder, EncoderConfig  # noqa: E402
from unimask.objectives.base import PretrainModel, Vocab  # noqa: E402
from unimask.objectives.mlm import MLM, MLMConfig  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A café in Zürich serves strong coffee every morning!",
    "Masked language models predict hidden words from their context.",
    "Tokenizers split rare words into smaller pieces, like un-believ-able.",
]
TEXTS = ["The QUICK brown Café, serving coffee!", "unseen wordpieces: zebra quizzically", "the lazy dog"]


def tiny_config(**changes) -> EncoderConfig:
    base = EncoderConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_positions=64, dropout=0.0, attention_dropout=0.0)
    return replace(base, **changes)


def write_tokenizer(path: Path, lowercase: bool = True, bert_pre_tokenizer: bool = True) -> Path:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer() if bert_pre_tokenizer else pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=120, min_frequency=1, special_tokens=SPECIALS,
                                        continuing_subword_prefix="##", show_progress=False)
    tokenizer.train_from_iterator(SENTENCES, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    assert [tokenizer.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    tokenizer.save(str(path))
    return path


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every LayerNorm and bias off its initial value so that a wrong mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def pretrain_model(cfg: EncoderConfig, seed: int = 0) -> PretrainModel:
    torch.manual_seed(seed)
    encoder = Encoder(cfg)
    objective = MLM(MLMConfig(), cfg, Vocab(size=cfg.vocab_size))
    return perturbed(PretrainModel(encoder, objective), seed).eval()


def write_checkpoint(run_dir: Path, model: PretrainModel, objective: str = "mlm", step: int = 20,
                     **model_changes) -> Path:
    """A checkpoint as the trainer writes it (meta.json with checksums), in run_dir/checkpoints."""
    config = {"model": {**asdict(model.encoder.config), **model_changes}, "objective_name": objective}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(run_dir / "tokenizer.json")
    return save_checkpoint(run_dir, step, model.state_dict(), {}, config, run_dir / "tokenizer.json", keep_last=0)


def batch(vocab_size: int, token_types: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab_size, (3, 11), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    ids[~mask] = 0
    types = torch.zeros_like(ids)
    if token_types:
        types[:, 5:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def state(model: PretrainModel) -> tuple[dict, dict]:
    return model.encoder.state_dict(), model.objective.head.state_dict()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[PretrainModel, Path, Path]:
    root = tmp_path_factory.mktemp("export")
    model = pretrain_model(tiny_config())
    tokenizer = write_tokenizer(root / "tokenizer.json")
    hf.export_encoder(*state(model), model.encoder.config, tokenizer, root / "hf")
    return model, root / "hf", tokenizer


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("token_types", [False, True])
def test_mlm_parity(exported, attn_implementation: str, token_types: bool) -> None:
    model, out, _ = exported
    bert, info = transformers.AutoModelForMaskedLM.from_pretrained(
        out, output_loading_info=True, attn_implementation=attn_implementation)
    assert type(bert).__name__ == "BertForMaskedLM"
    assert {k: v for k, v in info.items() if v} == {}
    bert.eval()
    inputs = batch(model.encoder.config.vocab_size, token_types)
    keep = inputs["attention_mask"]
    with torch.no_grad():
        hidden = model.encoder(inputs["input_ids"], token_type_ids=inputs["token_type_ids"],
                               attention_mask=inputs["attention_mask"])
        logits = model.objective.head(hidden[keep], model.encoder.word_embeddings.weight)
        theirs = bert(**inputs, output_hidden_states=True)
    assert torch.allclose(theirs.hidden_states[-1][keep], hidden[keep], atol=1e-4)
    assert torch.allclose(theirs.logits[keep], logits, atol=1e-4)


def test_writes_what_save_pretrained_writes(exported, tmp_path: Path) -> None:
    _, out, _ = exported
    bert = transformers.AutoModelForMaskedLM.from_pretrained(out)
    bert.save_pretrained(tmp_path)
    with safe_open(str(out / "model.safetensors"), "pt") as ours, safe_open(str(tmp_path / "model.safetensors"), "pt") as ref:
        assert set(ours.keys()) == set(ref.keys())
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    assert config["hidden_act"] == "gelu" and config["layer_norm_eps"] == 1e-12
    assert bert.cls.predictions.decoder.weight.data_ptr() == bert.bert.embeddings.word_embeddings.weight.data_ptr()


def test_tokenizer(exported) -> None:
    _, out, tokenizer_json = exported
    ours = Tokenizer.from_file(str(tokenizer_json))
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs.is_fast and type(theirs).__name__ in ("BertTokenizer", "BertTokenizerFast")
    specials = [theirs.pad_token_id, theirs.unk_token_id, theirs.cls_token_id, theirs.sep_token_id, theirs.mask_token_id]
    assert specials == [0, 1, 2, 3, 4]
    assert theirs.model_max_length == 64
    assert theirs("HELLO Café")["input_ids"] == theirs("hello cafe")["input_ids"]
    for text in TEXTS:
        assert theirs(text)["input_ids"] == ours.encode(text).ids
        pair, expected = theirs(text, TEXTS[0]), ours.encode(text, TEXTS[0])
        assert (pair["input_ids"], pair["token_type_ids"]) == (expected.ids, expected.type_ids)


@pytest.mark.parametrize("lowercase, bert_pre_tokenizer", [(False, True), (True, False)])
def test_other_tokenizers(tmp_path: Path, lowercase: bool, bert_pre_tokenizer: bool) -> None:
    model = pretrain_model(tiny_config())
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json", lowercase, bert_pre_tokenizer)
    hf.export_encoder(*state(model), model.encoder.config, tokenizer, tmp_path / "hf")
    theirs, ours = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"), Tokenizer.from_file(str(tokenizer))
    assert theirs.is_fast and theirs.mask_token_id == 4
    for text in TEXTS:
        assert theirs(text)["input_ids"] == ours.encode(text).ids


def test_encoder_only_export(tmp_path: Path) -> None:
    model = pretrain_model(tiny_config(type_vocab_size=0))
    hf.export_encoder(model.encoder.state_dict(), None, model.encoder.config,
                      write_tokenizer(tmp_path / "tokenizer.json"), tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertModel"]
    bert, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}
    bert, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True,
                                                        add_pooling_layer=False)
    assert {k: v for k, v in info.items() if v} == {}
    inputs = batch(model.encoder.config.vocab_size, token_types=False)
    keep = inputs["attention_mask"]
    with torch.no_grad():
        hidden = model.encoder(inputs["input_ids"], attention_mask=keep)
        theirs = bert.eval()(input_ids=inputs["input_ids"], attention_mask=keep).last_hidden_state
    assert torch.allclose(theirs[keep], hidden[keep], atol=1e-4)


@pytest.mark.parametrize("changes, reason", [
    ({"norm": "pre"}, "pre-LN"),
    ({"relative_buckets": 32}, "relative position bias"),
    ({"absolute_positions": False, "relative_buckets": 32}, "no absolute position"),
])
def test_exports_what_bert_cannot_hold_with_remote_code(tmp_path: Path, changes: dict, reason: str) -> None:
    """The native BERT writer refuses these encoders (one line, saying why); `export_checkpoint` writes
    them with remote code instead (tests/test_export_remote.py checks their parity)."""
    model = pretrain_model(tiny_config(**changes))
    with pytest.raises(UserError, match=reason) as e:
        hf.export_encoder(*state(model), model.encoder.config, write_tokenizer(tmp_path / "t.json"), tmp_path / "hf")
    assert "\n" not in str(e.value) and "load_encoder" in str(e.value)
    assert not (tmp_path / "hf").exists()
    write_checkpoint(tmp_path / "run", model)
    assert hf.export_checkpoint(tmp_path / "run", tmp_path / "hf").architecture == "UnimaskForMaskedLM"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "unimask"
    theirs = transformers.AutoModel.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    inputs = batch(model.encoder.config.vocab_size, token_types=True)
    keep = inputs["attention_mask"]
    with torch.no_grad():
        hidden = model.encoder(inputs["input_ids"], token_type_ids=inputs["token_type_ids"], attention_mask=keep)
        assert torch.allclose(theirs(**inputs).last_hidden_state[keep], hidden[keep], atol=1e-4)


def test_refuses_existing_out(exported, tmp_path: Path) -> None:
    model, _, tokenizer = exported
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        hf.export_encoder(*state(model), model.encoder.config, tokenizer, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    hf.export_encoder(*state(model), model.encoder.config, tokenizer, tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists() and (tmp_path / "hf" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_load_encoder_and_export_checkpoint(tmp_path: Path, capsys) -> None:
    model = pretrain_model(tiny_config(norm="pre", relative_buckets=8, relative_max_distance=16))
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, pretrain_model(tiny_config(), seed=1), step=10)
    write_checkpoint(run_dir, model, step=20)
    encoder, cfg = hf.load_encoder(run_dir)
    assert cfg == model.encoder.config and not encoder.training
    ids = torch.randint(5, 120, (2, 9))
    with torch.no_grad():
        assert torch.equal(encoder(ids), model.encoder(ids))
    assert main(["export", str(run_dir), "--out", str(tmp_path / "remote")]) == 0  # pre-LN: remote code
    assert "wrote UnimaskForMaskedLM" in capsys.readouterr().out
    remote = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "remote", trust_remote_code=True).eval()
    with torch.no_grad():
        hidden = model.encoder(ids)
        logits = model.objective.head(hidden.flatten(0, 1), model.encoder.word_embeddings.weight)
        assert torch.allclose(remote(input_ids=ids).logits.flatten(0, 1), logits, atol=1e-4)

    good = pretrain_model(tiny_config(), seed=2)
    checkpoint = write_checkpoint(tmp_path / "ckpt", good)
    assert main(["export", "--checkpoint", str(checkpoint), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "BertForMaskedLM" in capsys.readouterr().out
    bert = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, 120, (2, 9))
    with torch.no_grad():
        hidden = good.encoder(ids)
        logits = good.objective.head(hidden.flatten(0, 1), good.encoder.word_embeddings.weight)
        assert torch.allclose(bert(input_ids=ids).logits.flatten(0, 1), logits, atol=1e-4)


def test_other_objective_exports_encoder_only(tmp_path: Path, capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "run", pretrain_model(tiny_config()), objective="electra")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertModel"]
    bert, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True,
                                                        add_pooling_layer=False)
    assert {k: v for k, v in info.items() if v} == {}
    printed = capsys.readouterr().out
    assert "wrote BertModel" in printed and 'AutoModel.from_pretrained(' in printed
    assert printed.rstrip().endswith(", add_pooling_layer=False)")             # the hint loads without warnings
    assert "add_pooling_layer=False" in (tmp_path / "hf" / "README.md").read_text()


def test_refuses_mismatched_checkpoint(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "ckpt", pretrain_model(tiny_config()), hidden_size=64)
    with pytest.raises(UserError, match="checkpoint of another model"):
        hf.load_encoder(checkpoint)
    with pytest.raises(UserError, match="checkpoint of another model"):
        hf.export_checkpoint(checkpoint, tmp_path / "hf")
    with pytest.raises(UserError, match="holds no checkpoint"):
        hf.load_encoder(tmp_path / "ckpt" / "checkpoints")
    with pytest.raises(UserError, match="not a directory"):
        hf.export_checkpoint(checkpoint / "model.safetensors", tmp_path / "hf")


def test_model_card_of_a_pretraining_run(kjv_data, tmp_path: Path) -> None:
    """Every export writes README.md: objective, architecture, data counts, steps, tokens, last valid record."""
    from conftest import tiny_run_config
    from unimask.train.loop import train

    train(tiny_run_config(kjv_data, steps=4, save_every=4), tmp_path / "run", progress=False)
    hf.export_checkpoint(tmp_path / "run", tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    manifest = json.loads((kjv_data / "manifest.json").read_text())
    valid = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("split") == "valid"][-1]
    assert card.startswith("# mlm encoder pretrained with unimask")
    assert "`BertForMaskedLM`; encoder: 2 layers, hidden 32" in card
    assert "4 optimizer steps of 4 x 1 sequences of 32 tokens per process, 512 tokens per process" in card
    assert f"train {manifest['splits']['train']['num_tokens']:,} tokens" in card
    assert "**Last validation** (step 4): " in card and f"loss {valid['loss']:.4g}" in card
    assert "AutoModelForMaskedLM.from_pretrained" in card
