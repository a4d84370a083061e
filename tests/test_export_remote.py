"""Parity of the remote-code export (export/remote.py + export/modeling_unimask.py): transformers, with
trust_remote_code=True, must compute what unimask computes for every encoder BERT cannot hold."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

transformers = pytest.importorskip("transformers")

from test_export import perturbed, tiny_config, write_checkpoint  # noqa: E402
from unimask.cli import main  # noqa: E402
from unimask.errors import UserError  # noqa: E402
from unimask.export import hf, remote  # noqa: E402
from unimask.export import modeling_unimask  # noqa: E402
from unimask.model.encoder import Encoder, EncoderConfig, relative_position_bucket  # noqa: E402
from unimask.objectives.base import PretrainModel, Vocab  # noqa: E402
from unimask.objectives.maelm import MAELM, MAELMConfig  # noqa: E402
from unimask.objectives.mlm import MLM, MLMConfig  # noqa: E402
from unimask.tasks.glue import ClassificationHead  # noqa: E402

ATOL = 1e-4
IMPLEMENTATIONS = ["eager", "sdpa"]
VARIANTS = {
    "pre_ln": dict(norm="pre"),
    "relative": dict(relative_buckets=32, relative_max_distance=128),  # COCO-LM: absolute + relative, post-LN
    "relative_only": dict(absolute_positions=False, relative_buckets=32, type_vocab_size=0),
}
MAELM_ENCODER = dict(norm="pre", relative_buckets=32, relative_max_distance=128)
LENGTHS = (40, 23, 9)  # a padded batch; 40 tokens reach T5's logarithmic buckets (exact below 8)


def inputs(cfg: EncoderConfig, gapped_positions: bool = False) -> dict[str, torch.Tensor]:
    """Three sequences of LENGTHS, right-padded; token types where the model has them; optionally
    position ids with gaps (MAE-LM's encoder sees the unmasked tokens at their original positions)."""
    g = torch.Generator().manual_seed(1)
    T = max(LENGTHS)
    ids = torch.randint(5, cfg.vocab_size, (len(LENGTHS), T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    ids[~mask] = cfg.pad_token_id
    batch = {"input_ids": ids, "attention_mask": mask.long()}
    if cfg.type_vocab_size:
        batch["token_type_ids"] = (torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None] // 2).long() * mask
    if gapped_positions:
        batch["position_ids"] = torch.stack([torch.randperm(cfg.max_positions, generator=g)[:T].sort().values
                                             for _ in LENGTHS])
    return batch


def unimask_hidden(encoder: Encoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return encoder(batch["input_ids"], attention_mask=batch["attention_mask"].bool(),
                       token_type_ids=batch.get("token_type_ids"), position_ids=batch.get("position_ids"))


def load(auto_class, directory: Path, attn_implementation: str):
    """`auto_class.from_pretrained(directory, trust_remote_code=True)` in eval mode; every tensor of the
    directory is used and none is missing."""
    model, info = auto_class.from_pretrained(directory, trust_remote_code=True, output_loading_info=True,
                                             attn_implementation=attn_implementation)
    assert {k: v for k, v in info.items() if v} == {}
    assert model.config._attn_implementation == attn_implementation
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def lively(module: nn.Module, seed: int) -> nn.Module:
    """Weights at which every part moves the outputs: Linear weights N(0, 1/fan_in), embedding tables
    (the relative bias table too) N(0, 1), then LayerNorms and biases perturbed (test_export's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                scale = m.weight.shape[1] ** -0.5 if isinstance(m, nn.Linear) else 1.0
                m.weight.copy_(scale * torch.randn(m.weight.shape, generator=g))
    return perturbed(module, seed).eval()


def mlm_model(cfg: EncoderConfig, seed: int = 0) -> PretrainModel:
    return lively(PretrainModel(Encoder(cfg), MLM(MLMConfig(), cfg, Vocab(size=cfg.vocab_size))), seed)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory) -> tuple[PretrainModel, Path]:
    """An MLM checkpoint of the variant exported by `hf.export_checkpoint` (the `unimask export` path)."""
    root = tmp_path_factory.mktemp(request.param)
    model = mlm_model(tiny_config(**VARIANTS[request.param]))
    write_checkpoint(root / "run", model)
    done = hf.export_checkpoint(root / "run", root / "hf")
    assert done.architecture == "UnimaskForMaskedLM"
    return model, root / "hf"


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_hidden_states_and_mlm_logits(variant, attn_implementation: str) -> None:
    model, out = variant
    cfg = model.encoder.config
    base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True,
                                                  attn_implementation=attn_implementation).eval()
    mlm = load(transformers.AutoModelForMaskedLM, out, attn_implementation)
    assert type(base).__name__ == "UnimaskModel" and type(mlm).__name__ == "UnimaskForMaskedLM"
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.unimask.embeddings.word_embeddings.weight.data_ptr()
    for gapped in (False, True):
        batch = inputs(cfg, gapped_positions=gapped)
        keep = batch["attention_mask"].bool()
        hidden = unimask_hidden(model.encoder, batch)
        logits = model.objective.head(hidden[keep], model.encoder.word_embeddings.weight)
        with torch.no_grad():
            theirs = base(**batch, output_hidden_states=True)
            theirs_mlm = mlm(**batch)
        assert len(theirs.hidden_states) == cfg.num_layers + 1
        assert torch.equal(theirs.hidden_states[-1], theirs.last_hidden_state)
        assert max_diff(theirs.last_hidden_state[keep], hidden[keep]) <= ATOL
        assert max_diff(theirs_mlm.logits[keep], logits) <= ATOL


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("pooling, labels", [("cls", ["neg", "neutral", "pos"]), ("mean", None)])
def test_sequence_classification(variant, tmp_path: Path, attn_implementation: str, pooling: str,
                                 labels: list[str] | None) -> None:
    model, _ = variant
    cfg = model.encoder.config
    head = lively(ClassificationHead(cfg.hidden_size, len(labels or [0]), dropout=0.1, pooling=pooling), 2)
    classifier = {"state": head.state_dict(), "labels": labels, "pooling": pooling}
    assert remote.write_remote_model(tmp_path, cfg, model.encoder.state_dict(), classifier=classifier) \
        == "UnimaskForSequenceClassification"
    theirs = load(transformers.AutoModelForSequenceClassification, tmp_path, attn_implementation)
    assert theirs.config.classifier_pooling == pooling
    batch = inputs(cfg)
    with torch.no_grad():
        expected = head(unimask_hidden(model.encoder, batch), batch["attention_mask"].bool())
        got = theirs(**batch)
    assert max_diff(got.logits, expected) <= ATOL
    if labels is None:
        assert theirs.config.problem_type == "regression" and theirs.config.num_labels == 1
        target = torch.tensor([0.5, -1.0, 2.0])
        loss = torch.nn.functional.mse_loss(expected.squeeze(-1), target)
    else:
        assert theirs.config.id2label == dict(enumerate(labels)) and theirs.config.label2id["pos"] == 2
        target = torch.tensor([2, 0, 1])
        loss = torch.nn.functional.cross_entropy(expected, target)
    with torch.no_grad():
        assert abs(theirs(**batch, labels=target).loss.item() - loss.item()) <= ATOL


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_question_answering(tmp_path: Path, attn_implementation: str) -> None:
    model = mlm_model(tiny_config(**VARIANTS["relative"]))
    head = lively(nn.Linear(model.encoder.config.hidden_size, 2), 3)
    assert remote.write_remote_model(tmp_path, model.encoder.config, model.encoder.state_dict(),
                                     qa_head_state=head.state_dict()) == "UnimaskForQuestionAnswering"
    theirs = load(transformers.AutoModelForQuestionAnswering, tmp_path, attn_implementation)
    batch = inputs(model.encoder.config)
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = head(unimask_hidden(model.encoder, batch))  # (B, T, 2)
        got = theirs(**batch)
    assert max_diff(got.start_logits[keep], expected[..., 0][keep]) <= ATOL
    assert max_diff(got.end_logits[keep], expected[..., 1][keep]) <= ATOL


@pytest.fixture(scope="module")
def maelm_export(tmp_path_factory) -> tuple[Encoder, Path, Path]:
    """An MAE-LM checkpoint (encoder + decoder + tied head) exported by `hf.export_checkpoint`."""
    root = tmp_path_factory.mktemp("maelm")
    cfg = tiny_config(**MAELM_ENCODER)
    model = lively(PretrainModel(Encoder(cfg), MAELM(MAELMConfig(decoder_layers=1), cfg, Vocab(size=cfg.vocab_size))), 4)
    checkpoint = write_checkpoint(root / "run", model, objective="maelm")
    assert hf.export_checkpoint(root / "run", root / "hf").architecture == "UnimaskModel"
    return model.encoder, checkpoint, root / "hf"


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_maelm_encoder(maelm_export, attn_implementation: str) -> None:
    encoder, checkpoint, out = maelm_export
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        assert any(k.startswith("objective.decoder.") for k in f.keys())  # the decoder is in the checkpoint ...
    assert not any(k.startswith(("cls.", "objective", "decoder", "unimask.")) for k in names)  # ... but not exported
    assert json.loads((out / "config.json").read_text())["architectures"] == ["UnimaskModel"]
    theirs = load(transformers.AutoModel, out, attn_implementation)
    for gapped in (False, True):
        batch = inputs(encoder.config, gapped_positions=gapped)
        keep = batch["attention_mask"].bool()
        with torch.no_grad():
            got = theirs(**batch).last_hidden_state
        assert max_diff(got[keep], unimask_hidden(encoder, batch)[keep]) <= ATOL


def test_tensor_names_are_berts_where_the_architecture_agrees(variant, tmp_path: Path) -> None:
    model, out = variant
    cfg = model.encoder.config
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    shared = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith(("final_norm.", "relative_bias."))}
    bert_names = {"bert." + k for k in hf.rename(shared, hf.ENCODER_TO_BERT)}
    bert_names |= set(hf.rename(model.objective.head.state_dict(), hf.LM_HEAD_TO_BERT))
    renamed = {k.replace("bert.", "unimask.", 1) for k in bert_names}
    if cfg.norm == "post":
        assert names - renamed == {"unimask.encoder.relative_attention_bias.weight"} and renamed <= names
    else:  # RoBERTa-PreLayerNorm's names for the three LayerNorm positions BERT lacks
        assert {"unimask.LayerNorm.weight", "unimask.encoder.layer.1.attention.LayerNorm.bias",
                "unimask.encoder.layer.0.intermediate.LayerNorm.weight"} <= names
        assert not any("output.LayerNorm" in k for k in names)
        assert {k for k in renamed if "LayerNorm" not in k} <= names
    # what save_pretrained writes back, and the modeling file travels with it
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True)
    loaded.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == names
    assert (tmp_path / "modeling_unimask.py").read_text() == remote.MODELING_FILE.read_text()


def test_config_json(variant) -> None:
    model, out = variant
    cfg = model.encoder.config
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "unimask" and config["architectures"] == ["UnimaskForMaskedLM"]
    assert config["auto_map"]["AutoConfig"] == "modeling_unimask.UnimaskConfig"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM",
                                       "AutoModelForSequenceClassification", "AutoModelForQuestionAnswering"}
    expected = {"num_hidden_layers": cfg.num_layers, "max_position_embeddings": cfg.max_positions,
                "norm": cfg.norm, "absolute_positions": cfg.absolute_positions,
                "relative_buckets": cfg.relative_buckets, "type_vocab_size": cfg.type_vocab_size}
    assert {k: config[k] for k in expected} == expected
    assert (out / "modeling_unimask.py").is_file() and (out / "tokenizer.json").is_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tokenizer.mask_token_id == 4


@pytest.mark.slow
def test_modeling_file_imports_only_torch_and_transformers(maelm_export, tmp_path: Path) -> None:
    """By its imports, and by loading an export in a Python where unimask cannot be imported."""
    tree = ast.parse(remote.MODELING_FILE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "math", "typing", "torch", "transformers"}
    encoder, _, out = maelm_export
    batch = inputs(encoder.config)
    keep = batch["attention_mask"].bool()
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import sys; sys.modules['unimask'] = None\n"
        "import torch, transformers\n"
        f"m = transformers.AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        f"batch = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(**batch).last_hidden_state, {str(tmp_path / 'out.pt')!r})\n"
        "assert not any(name == 'unimask' or name.startswith('unimask.') for name in sys.modules if sys.modules[name])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=120)
    assert (tmp_path / "modules" / "transformers_modules").is_dir()
    got = torch.load(tmp_path / "out.pt")
    assert max_diff(got[keep], unimask_hidden(encoder, batch)[keep]) <= ATOL


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 16), (32, 20)])
def test_relative_position_bucket_is_unimasks(num_buckets: int, max_distance: int) -> None:
    relative = torch.arange(-600, 601)
    ours = relative_position_bucket(relative, num_buckets, max_distance)
    assert torch.equal(modeling_unimask.relative_position_bucket(relative, num_buckets, max_distance), ours)
    assert ours.min() == 0 and ours.max() == num_buckets - 1


def test_bad_input(tmp_path: Path) -> None:
    model = mlm_model(tiny_config(norm="pre"))
    cfg, state = model.encoder.config, model.encoder.state_dict()
    head = ClassificationHead(cfg.hidden_size, 2, dropout=0.1).state_dict()
    lm = model.objective.head.state_dict()
    with pytest.raises(UserError, match="one head") as e:
        remote.write_remote_model(tmp_path, cfg, state, lm_head_state=lm, classifier={"state": head, "labels": ["a", "b"]})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="2 outputs but 3 labels"):
        remote.write_remote_model(tmp_path, cfg, state, classifier={"state": head, "labels": ["a", "b", "c"]})
    with pytest.raises(UserError, match="regression"):
        remote.write_remote_model(tmp_path, cfg, state, classifier={"state": head, "labels": None})
    with pytest.raises(UserError, match="two or more distinct"):
        remote.write_remote_model(tmp_path, cfg, state, classifier={"state": head, "labels": ["a", "a"]})
    with pytest.raises(UserError, match="pooling 'max'"):
        remote.write_remote_model(tmp_path, cfg, state, classifier={"state": head, "labels": ["a", "b"], "pooling": "max"})
    with pytest.raises(UserError, match="checkpoint of another model"):
        remote.write_remote_model(tmp_path, replace(cfg, num_layers=3), state)
    assert list(tmp_path.iterdir()) == []


def test_bert_compatible_models_stay_bert() -> None:
    assert not remote.needs_remote_code(tiny_config())
    assert all(remote.needs_remote_code(tiny_config(**changes)) for changes in VARIANTS.values())


def test_cli_prints_how_to_load(tmp_path: Path, capsys) -> None:
    write_checkpoint(tmp_path / "run", mlm_model(tiny_config(**MAELM_ENCODER)), objective="electra")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    assert "wrote UnimaskModel" in printed and "AutoModel.from_pretrained(" in printed
    assert "trust_remote_code=True" in printed


def test_a_wrong_rename_table_is_an_export_bug(tmp_path: Path, monkeypatch) -> None:
    """The writer checks the renamed tensors against the modeling file's parameters before writing."""
    model = mlm_model(tiny_config(norm="pre"))
    wrong = (*hf.ENCODER_TO_BERT, (r"final_norm\.(weight|bias)", r"encoder.LayerNorm.\1"))  # post-LN names
    monkeypatch.setitem(remote.ENCODER_TO_REMOTE, "pre", wrong)
    with pytest.raises(RuntimeError, match="export bug"):
        remote.write_remote_model(tmp_path, model.encoder.config, model.encoder.state_dict())
    assert list(tmp_path.iterdir()) == []
