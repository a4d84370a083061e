"""MAE-LM (objectives/maelm.py): kept-token corruption, positions, decoder scatter, gradients,
save/resume and export of the encoder alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import tiny_run_config
from unimask import config as config_mod
from unimask.model.encoder import Encoder, EncoderConfig
from unimask.objectives import OBJECTIVES, PretrainModel, TokenBatch, Vocab
from unimask.objectives.maelm import MAELM, MAELMConfig
from unimask.train import checkpoint as ckpt
from unimask.train.loop import train

VOCAB = Vocab(size=60)          # pad 0, unk 1, cls 2, sep 3, mask 4


def encoder_config(**changes) -> EncoderConfig:
    base = EncoderConfig(vocab_size=VOCAB.size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_positions=64, dropout=0.0, attention_dropout=0.0)
    return dataclasses.replace(base, **changes)


def text(B: int = 4, T: int = 24, seed: int = 0, padded_row: bool = False) -> TokenBatch:
    """[CLS] + ordinary tokens with a few [SEP]s at random places (a different count per row)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB.size, (B, T), generator=g)
    ids[:, 0] = VOCAB.cls
    for b in range(B):
        ids[b, torch.randint(1, T, (b,), generator=g)] = VOCAB.sep
    if not padded_row:
        return TokenBatch(ids)
    real = torch.ones_like(ids, dtype=torch.bool)
    real[-1, T // 2:] = False
    return TokenBatch(ids.masked_fill(~real, VOCAB.pad), attention_mask=real)


def model(seed: int = 0, cfg: MAELMConfig | None = None, **encoder_changes) -> PretrainModel:
    torch.manual_seed(seed)
    enc_cfg = encoder_config(**encoder_changes)
    return PretrainModel(Encoder(enc_cfg), MAELM(cfg or MAELMConfig(), enc_cfg, VOCAB)).eval()


def corrupt(m: PretrainModel, batch: TokenBatch, seed: int = 1) -> TokenBatch:
    return m.objective.corrupt(batch, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("padded_row", [False, True])
def test_corrupt_keeps_unmasked_tokens_at_their_positions(padded_row: bool):
    m = model()
    batch = text(padded_row=padded_row)
    ids, (B, T) = batch.input_ids, batch.input_ids.shape
    out = corrupt(m, batch)
    real = batch.attention_mask if padded_row else torch.ones_like(ids, dtype=torch.bool)
    masked = out.labels.ne(-100)
    K = out.input_ids.shape[1]
    assert K == T - round(0.15 * T)                                   # 24 - 4: static, whatever the [SEP]s
    assert out.labels.shape == (B, T) and out.extras["source_index"].shape == (B, T)
    assert torch.equal(out.labels[masked], ids[masked])
    assert not masked[:, 0].any() and not (masked & ids.eq(VOCAB.sep)).any() and not (masked & ~real).any()
    assert masked.sum(-1).tolist() == [round(0.15 * int(n)) for n in real.sum(-1)]
    valid = out.attention_mask if out.attention_mask is not None else torch.ones(B, K, dtype=torch.bool)
    assert (out.attention_mask is not None) == padded_row
    for b in range(B):
        n = int(valid[b].sum())
        pos = out.position_ids[b, :n]
        assert valid[b, :n].all() and not valid[b, n:].any()
        assert torch.equal(pos, torch.nonzero(real[b] & ~masked[b]).squeeze(1))   # kept, in order
        assert torch.equal(out.input_ids[b, :n], ids[b, pos])                       # original ids there
        assert out.input_ids[b, n:].eq(VOCAB.pad).all()
        source = out.extras["source_index"][b]
        assert torch.equal(source[pos], torch.arange(n)) and source[~(real[b] & ~masked[b])].eq(K).all()
    assert not out.input_ids.eq(VOCAB.mask).any()
    again = corrupt(m, batch)
    assert torch.equal(again.input_ids, out.input_ids) and torch.equal(again.labels, out.labels)


def test_kept_tokens_see_what_they_would_see_in_place():
    """The encoder on the kept tokens equals the encoder on the full text with the masked tokens hidden
    as keys: positions reach both the absolute embedding and the relative bias."""
    m = model(relative_buckets=16, relative_max_distance=32)
    batch = text(padded_row=True)
    out = corrupt(m, batch)
    keep = batch.attention_mask & out.labels.eq(-100)
    with torch.no_grad():
        short = m.encoder(out.input_ids, position_ids=out.position_ids, attention_mask=out.attention_mask)
        full = m.encoder(batch.input_ids, attention_mask=keep)
        wrong = m.encoder(out.input_ids, attention_mask=out.attention_mask)     # positions 0..K-1
    for b in range(len(short)):
        n = int(keep[b].sum())
        torch.testing.assert_close(short[b, :n], full[b][keep[b]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(wrong[0], short[0], atol=1e-3)


def reference_loss(m: PretrainModel, batch: TokenBatch, masked: torch.Tensor) -> tuple[torch.Tensor, int]:
    """MAE-LM row by row, with loops: encoder on the kept tokens, scatter back, decoder, head."""
    enc, obj = m.encoder, m.objective
    ids, (B, T) = batch.input_ids, batch.input_ids.shape
    real = batch.attention_mask if batch.attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
    rows, targets = [], []
    for b in range(B):
        kept = [t for t in range(T) if real[b, t] and not masked[b, t]]
        h = enc(ids[b, kept][None], position_ids=torch.tensor(kept)[None])[0]
        x = torch.stack([h[kept.index(t)] if t in kept else enc.word_embeddings.weight[VOCAB.mask] for t in range(T)])
        y = obj.decoder(x[None], torch.arange(T)[None], real[b][None])[0]
        rows += [y[t] for t in range(T) if masked[b, t]]
        targets += [ids[b, t] for t in range(T) if masked[b, t]]
    logits = obj.head(torch.stack(rows), enc.word_embeddings.weight)
    return F.cross_entropy(logits, torch.stack(targets), reduction="sum"), len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_forward_matches_reference_and_never_shows_mask(norm: str):
    m = model(norm=norm, relative_buckets=16, initializer_range=0.3)    # peaked attention: order matters
    batch = text(padded_row=True)
    out = corrupt(m, batch)
    seen, head_rows = [], []
    m.encoder.embeddings.word.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    m.objective.head.register_forward_pre_hook(lambda mod, args: head_rows.append(args[0].shape[0]))
    with torch.no_grad():
        result = m(out)
        assert len(seen) == 1 and not seen[0].eq(VOCAB.mask).any() and seen[0].shape == out.input_ids.shape
        expected, n = reference_loss(m, batch, out.labels.ne(-100))
    assert head_rows[0] == n and int(result.num_targets) == n
    torch.testing.assert_close(result.loss, expected, atol=1e-4, rtol=1e-5)
    assert set(result.metrics) == {"mlm_loss", "mlm_acc"}
    assert "mlm_ppl" in m.objective.summarize({"mlm_loss": 2.0})


@pytest.mark.parametrize("changes", [{}, {"norm": "pre", "relative_buckets": 16}])
def test_every_parameter_gets_a_gradient(changes: dict):
    m = model(**changes).train()
    m(corrupt(m, text())).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert any(n.startswith("objective.decoder.") for n, _ in m.named_parameters())


def test_decoder_shape_and_config():
    m = model(cfg=MAELMConfig(decoder_layers=3), relative_buckets=16, dropout=0.1, attention_dropout=0.1)
    dec = m.objective.decoder
    assert len(dec.blocks.layers) == 3 and dec.blocks.relative_bias is None
    assert dec.blocks.config.hidden_size == 32 and dec.blocks.config.intermediate_size == 64
    assert all(mod.p == 0 for mod in dec.modules() if isinstance(mod, torch.nn.Dropout))
    assert dec.blocks.config.attention_dropout == 0.0
    assert len(MAELM(MAELMConfig(), encoder_config(), VOCAB).decoder.blocks.layers) == 4
    for bad in ({"mask_prob": 0.0}, {"mask_prob": 1.0}, {"decoder_layers": 0}, {"decoder_dropout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MAELMConfig(**bad)
    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["objective_name=maelm", "objective.decoder_layers=2"])
    assert isinstance(cfg.objective, MAELMConfig) and cfg.objective.decoder_layers == 2
    assert OBJECTIVES["maelm"] is MAELM


# ---- end to end: train, save, resume, export ---------------------------------------------------------

def maelm_run_config(data: Path, **train_changes):
    cfg = tiny_run_config(data, **{"steps": 6, "save_every": 3, "eval_every": 3, **train_changes})
    cfg.objective_name, cfg.objective = "maelm", MAELMConfig(decoder_layers=1)
    cfg.model.dropout = 0.1                    # resume must restore the dropout RNG too
    return cfg


def curve(run: Path, split: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == split]


@pytest.fixture(scope="module")
def maelm_run(kjv_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("maelm") / "run"
    last = train(maelm_run_config(kjv_data), run, progress=False)
    assert {"loss", "mlm_acc", "mlm_ppl"} <= set(last)
    return run


def test_save_and_resume_reproduce_the_run(kjv_data, maelm_run, tmp_path):
    weights = load_file(str(ckpt.latest_checkpoint(maelm_run) / "model.safetensors"))
    assert any(k.startswith("objective.decoder.blocks.layers.0.") for k in weights)
    assert "objective.head.bias" in weights and "encoder.embeddings.word.weight" in weights
    assert not any(k.startswith("encoder.") and "decoder" in k for k in weights)

    resumed = tmp_path / "resumed"                  # the run as if killed after its step-3 checkpoint
    shutil.copytree(maelm_run, resumed)
    shutil.rmtree(ckpt.latest_checkpoint(resumed))
    assert ckpt.latest_checkpoint(resumed).name == "step_00000003"
    train(maelm_run_config(kjv_data), resumed, resume=True, progress=False)
    assert curve(resumed, "train") == curve(maelm_run, "train")
    assert curve(resumed, "valid")[-1] == curve(maelm_run, "valid")[-1]
    again = load_file(str(ckpt.latest_checkpoint(resumed) / "model.safetensors"))
    assert all(torch.equal(again[k], weights[k]) for k in weights)


def test_export_is_the_pretraining_encoder(maelm_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from unimask.export import hf

    done = hf.export_checkpoint(maelm_run, tmp_path / "hf")
    assert done.architecture == "BertModel"
    weights = load_file(str(ckpt.latest_checkpoint(maelm_run) / "model.safetensors"))
    cfg = config_mod.from_dict(ckpt.load_config(ckpt.latest_checkpoint(maelm_run))).model
    pretraining = Encoder(cfg).eval()
    pretraining.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    loaded, _ = hf.load_encoder(maelm_run)
    bert = transformers.AutoModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False).eval()
    ids = torch.randint(5, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    with torch.no_grad():
        ours = pretraining(ids)
        torch.testing.assert_close(loaded(ids), ours)
        torch.testing.assert_close(bert(input_ids=ids).last_hidden_state, ours, atol=1e-4, rtol=1e-4)
