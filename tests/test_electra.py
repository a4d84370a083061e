"""ELECTRA (objectives/electra.py): masking, the labelling rule, no gradient through the sampling,
every parameter trained, a falling loss on real text, and save / resume."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_config
from unimask.config import RunConfig, apply_overrides, sized
from unimask.errors import UserError
from unimask.model.encoder import Encoder, EncoderConfig
from unimask.objectives import OBJECTIVES, PretrainModel, TokenBatch, Vocab
from unimask.objectives.electra import Electra, ElectraConfig, generator_shape, replace_tokens
from unimask.train import checkpoint as ckpt
from unimask.train.loop import train

V = 100


def tiny(dropout: float = 0.0, **model) -> EncoderConfig:
    return EncoderConfig(**{**dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_positions=64, dropout=dropout, attention_dropout=dropout), **model})


def build(cfg: ElectraConfig | None = None, enc: EncoderConfig | None = None, seed: int = 0) -> PretrainModel:
    torch.manual_seed(seed)
    enc = enc or tiny()
    return PretrainModel(Encoder(enc), Electra(cfg or ElectraConfig(generator_hidden_size=16), enc, Vocab(size=V)))


def text(batch: int = 4, seq: int = 32, seed: int = 0, token: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (batch, seq), generator=g) if token is None else torch.full((batch, seq), token)
    ids[:, 0], ids[:, -1] = 2, 3                                      # [CLS] ... [SEP]
    return ids


def corrupted(model: PretrainModel, ids: torch.Tensor, seed: int = 1) -> TokenBatch:
    return model.objective.corrupt(TokenBatch(ids), torch.Generator().manual_seed(seed))


def electra_run(data, **train_fields) -> RunConfig:
    cfg = tiny_run_config(data, **train_fields)
    return dataclasses.replace(cfg, objective_name="electra", objective=ElectraConfig(generator_hidden_size=16))


def curve(run, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# ---- config ---------------------------------------------------------------------------------------

def test_config_is_validated_and_settable():
    for bad in (dict(mask_prob=0.0), dict(temperature=0.0), dict(rtd_weight=-1.0), dict(generator_layers=-1),
                dict(mask_token_prob=0.9, random_token_prob=0.2), dict(masking="words")):
        with pytest.raises(ValueError):
            ElectraConfig(**bad)
    cfg = apply_overrides(RunConfig(), ["objective_name=electra", "objective.rtd_weight=20",
                                        "objective.temperature=0.5", "objective.generator_hidden_size=128"])
    assert cfg.objective == ElectraConfig(rtd_weight=20.0, temperature=0.5, generator_hidden_size=128)
    with pytest.raises(UserError, match="temperature"):
        apply_overrides(RunConfig(), ["objective_name=electra", "objective.temperature=0"])


def test_generator_shape_defaults_and_heads():
    auto = ElectraConfig()
    assert generator_shape(auto, sized("base")) == (256, 12)         # ELECTRA-Base: 1/3 width, full depth
    assert generator_shape(auto, sized("small")) == (128, 4)         # ELECTRA-Small's 1/4
    assert generator_shape(auto, sized("large")) == (320, 24)
    assert generator_shape(auto, sized("mini")) == (64, 4)
    assert generator_shape(auto, tiny()) == (32, 2)                  # never wider than the discriminator
    assert generator_shape(ElectraConfig(generator_hidden_size=128, generator_layers=2), sized("small")) == (128, 2)
    enc = sized("small", vocab_size=V)
    gen = Electra(ElectraConfig(), enc, Vocab(size=V)).generator
    assert gen.blocks.config.num_heads == 2 and gen.blocks.config.intermediate_size == 4 * 128
    assert gen.project.in_features == 512 and gen.project.out_features == 128
    with pytest.raises(ValueError, match="generator_hidden_size=100"):
        Electra(ElectraConfig(generator_hidden_size=100), sized("small", vocab_size=V), Vocab(size=V))


# ---- corruption and labels ------------------------------------------------------------------------

def test_masking_ratio_and_official_replacement():
    """15% of the maskable tokens per row; of those 85% [MASK], 15% kept, no random token."""
    model = build()
    ids = text(batch=64, seq=64)
    batch = corrupted(model, ids)
    chosen = batch.labels.ne(-100)
    assert (chosen.sum(1) == round(0.15 * 62)).all()                 # [CLS] and [SEP] are not maskable
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(batch.labels[chosen], ids[chosen])
    assert torch.equal(batch.input_ids[~chosen], ids[~chosen])
    is_mask = batch.input_ids[chosen] == 4
    assert torch.equal(batch.input_ids[chosen][~is_mask], ids[chosen][~is_mask])   # no random tokens
    assert abs(is_mask.float().mean().item() - 0.85) < 0.04          # 576 draws: 4 sigma is 0.06


def test_replace_tokens_labels_correct_samples_original():
    ids = torch.tensor([[2, 4, 10, 4, 3], [2, 11, 4, 12, 3]])
    selected = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    originals = torch.tensor([20, 21, 11, 22])                        # row-major order
    sampled = torch.tensor([20, 30, 11, 31])                          # right, wrong, right, wrong
    fake, replaced = replace_tokens(ids, selected, sampled, originals)
    assert torch.equal(fake, torch.tensor([[2, 20, 10, 30, 3], [2, 11, 31, 12, 3]]))
    assert torch.equal(replaced, torch.tensor([[0, 0, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool))
    assert torch.equal(ids, torch.tensor([[2, 4, 10, 4, 3], [2, 11, 4, 12, 3]]))   # input untouched


@pytest.mark.parametrize("sample", ["original", "other", "pad"])
def test_forward_labels_sampled_originals_as_original(sample):
    """A generator that always samples token 7 on a text made of 7s replaces nothing; one that
    samples 8 (or [PAD]: still a real, replaced token) replaces every masked token. The loss is
    gen_mean + 50 x rtd_mean per micro-batch."""
    model = build()
    with torch.no_grad():
        model.objective.generator.head.bias[{"original": 7, "other": 8, "pad": 0}[sample]] = 1e4
    batch = corrupted(model, text(token=7))
    out = model(batch)
    m = {k: v.tolist() for k, v in out.metrics.items()}
    n = int(batch.labels.ne(-100).sum())
    assert out.num_targets == n and m["replaced_frac"][1] == batch.input_ids.numel()
    assert m["replaced_frac"][0] == (0 if sample == "original" else n)
    assert m["sampled_acc"] == ([n, n] if sample == "original" else [0, n])
    assert m["rtd_recall"][1] == m["replaced_frac"][0]
    per_part = out.metrics["gen_loss"][0] / n + 50 * out.metrics["rtd_loss"][0] / m["rtd_loss"][1]
    assert (out.loss / out.num_targets).item() == pytest.approx(per_part.item(), rel=1e-5)


@pytest.mark.parametrize("temperature, p_original", [(1.0, 0.75), (0.5, 0.9)])
def test_replacements_are_sampled_from_the_tempered_softmax(temperature, p_original):
    """Generator logits = its output bias alone: 7 (the original) at 20 + ln 3, 8 at 20, the rest 0;
    softmax(logits / T) gives 7 with probability 3 / 4 at T = 1 and 9 / 10 at T = 1/2 (not argmax)."""
    model = build(ElectraConfig(generator_hidden_size=16, temperature=temperature))
    head = model.objective.generator.head
    with torch.no_grad():
        head.dense.weight.zero_()                                    # LayerNorm(0) = its zero bias
        head.bias[7], head.bias[8] = 20 + math.log(3), 20.0
    out = model(corrupted(model, text(batch=64, seq=64, token=7)))
    kept, n = out.metrics["sampled_acc"].tolist()
    assert n == 64 * 9 and abs(kept / n - p_original) < 0.07          # > 3.9 sigma at n = 576
    assert out.metrics["replaced_frac"][0] == n - kept


def test_padding_is_not_a_real_token():
    model = build()
    ids = text()
    ids[1, 20:] = 0
    ids[1, 19] = 3
    batch = corrupted(model, ids).replace(attention_mask=ids.ne(0))
    out = model(batch)
    assert out.metrics["rtd_loss"][1] == ids.ne(0).sum() and out.metrics["rtd_acc"][1] == ids.ne(0).sum()


# ---- gradients ------------------------------------------------------------------------------------

def _grads(model, batch, seed=5) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)                                          # the same samples every call
    model(batch).loss.backward()
    return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


def test_no_gradient_path_from_the_discriminator_into_the_generator():
    cfg = ElectraConfig(generator_hidden_size=16)
    model = build(cfg)
    batch = corrupted(model, text())
    with_rtd = _grads(model, batch)
    model.objective.cfg = dataclasses.replace(cfg, rtd_weight=0.0)
    gen_only = _grads(model, batch)
    model.objective.cfg = dataclasses.replace(cfg, generator_weight=0.0)
    rtd_only = _grads(model, batch)
    generator_own = [k for k in with_rtd if k.startswith("objective.generator.")]
    assert len(generator_own) > 10
    for k in generator_own:                                          # the RTD loss adds nothing here
        torch.testing.assert_close(with_rtd[k], gen_only[k], rtol=1e-6, atol=0)
        assert rtd_only[k] is None or not rtd_only[k].any(), k
    # ... while it does train the shared embeddings, the discriminator and its head
    for k in ("encoder.embeddings.word.weight", "encoder.layers.0.attn.query.weight", "objective.rtd_head.out.weight"):
        assert rtd_only[k] is not None and rtd_only[k].abs().sum() > 0, k


@pytest.mark.parametrize("model_fields", [{}, dict(norm="pre", relative_buckets=8)])
def test_every_parameter_gets_a_gradient(model_fields):
    model = build(enc=tiny(dropout=0.1, **model_fields))
    grads = _grads(model, corrupted(model, text()))
    missing = [k for k, g in grads.items() if g is None or not g.abs().sum() > 0]
    assert not missing, missing
    assert any(k.startswith("objective.generator.blocks.relative_bias") for k in grads) == bool(model_fields)


def test_sampling_is_chunked_on_the_cpu_only(monkeypatch):
    """Row chunks keep the CPU's softmax in cache; elsewhere (meta stands in for CUDA) one pass, not
    one set of small kernels per 17 rows."""
    from unimask.objectives import electra as electra_mod
    from unimask.objectives import masking

    calls = []
    real = masking.sample_tokens
    monkeypatch.setattr(masking, "sample_tokens",
                        lambda logits, t, rng: calls.append(len(logits)) or real(logits, t, rng))
    cpu = electra_mod.sample_rows(torch.randn(100, 30522), 1.0, None)
    assert cpu.shape == (100,) and calls == [17] * 5 + [15]
    calls.clear()
    meta = electra_mod.sample_rows(torch.randn(100, 30522, device="meta"), 1.0, None)
    assert meta.shape == (100,) and calls == [100]


def test_evaluation_sampling_is_reproducible_and_leaves_the_training_rng_alone():
    model = build()
    batch = corrupted(model, text())
    model.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(batch), model(batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.loss == b.loss and torch.equal(a.metrics["sampled_acc"], b.metrics["sampled_acc"])


# ---- training -------------------------------------------------------------------------------------

def test_loss_falls_on_real_text(kjv_data, tmp_path):
    cfg = electra_run(kjv_data, steps=30, batch_size=8, lr=3e-3, warmup_steps=3, eval_batches=2)
    last = train(cfg, tmp_path / "run", progress=False)
    rows = curve(tmp_path / "run")
    first, final = rows[:8], rows[-8:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)             # noqa: E731
    assert mean(final, "loss") < mean(first, "loss") - 5.0           # 50 x RTD dominates: ~0.69 x 50 at start
    assert mean(final, "gen_loss") < mean(first, "gen_loss") - 0.3   # falls ~0.5 (seeds 0-2)
    assert mean(final, "rtd_loss") < mean(first, "rtd_loss") - 0.1
    assert {"gen_acc", "gen_ppl", "replaced_frac", "rtd_acc", "rtd_precision", "rtd_recall"} <= set(last)
    assert 0.05 < last["replaced_frac"] <= 5 / 32                    # 5 of 31 maskable tokens, minus hits
    weights = load_file(str(ckpt.latest_checkpoint(tmp_path / "run") / "model.safetensors"))
    assert "objective.rtd_head.out.weight" in weights and "objective.generator.head.bias" in weights
    assert not any(k.startswith("encoder.") and "generator" in k for k in weights)


def test_the_discriminator_learns_to_detect_replacements(kjv_data, tmp_path):
    """The replaced-token-detection path learns, not only the base rate: with a near-uniform generator
    (temperature 100 over the 1,000-token vocabulary) the replacements are detectable from the tokens
    themselves, so the discriminator must flag some of them (about 20% after 150 steps here). A discriminator that saw the original
    text, or labels out of line with its input, stays at the base rate: loss about H(15%) = 0.42
    nats and recall about 0. (With temperature 1 a weak generator's samples are plausible tokens and
    a short run may stay at the base rate: ELECTRA's task is hard at first.)"""
    cfg = electra_run(kjv_data, steps=150, batch_size=16, lr=3e-3, warmup_steps=10, log_every=10)
    cfg = dataclasses.replace(cfg, objective=ElectraConfig(generator_hidden_size=16, temperature=100.0))
    train(cfg, tmp_path / "run", progress=False)
    final = curve(tmp_path / "run")[-5:]
    q = sum(r["replaced_frac"] for r in final) / len(final)
    base_rate = -(q * math.log(q) + (1 - q) * math.log(1 - q))            # what predicting q everywhere scores
    assert sum(r["rtd_loss"] for r in final) / len(final) < base_rate - 0.07
    assert sum(r["rtd_recall"] for r in final) / len(final) > 0.1


def test_save_and_resume_reproduce_the_loss_curve(kjv_data, tmp_path):
    """A run stopped at step 4 and resumed to 8 logs what one straight run of 8 steps logs (constant
    schedule after warmup, so the 4-step run's schedule is the 8-step run's prefix)."""
    fields = dict(steps=8, save_every=4, eval_every=4, schedule="constant", warmup_steps=2)
    cfg = electra_run(kjv_data, **fields)
    cfg.model.dropout = 0.1                                          # the dropout and sampling RNG are restored
    train(cfg, tmp_path / "straight", progress=False)
    part = electra_run(kjv_data, **{**fields, "steps": 4})
    part.model.dropout = 0.1
    train(part, tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = curve(tmp_path / "split"), curve(tmp_path / "straight")
    assert [r["step"] for r in a] == list(range(1, 9))
    assert [(r["loss"], r["rtd_acc"]) for r in a] == [(r["loss"], r["rtd_acc"]) for r in b]
    valid = [[r["loss"] for r in curve(tmp_path / run, "valid")] for run in ("split", "straight")]
    assert len(valid[0]) == 2 and valid[0] == valid[1]
    x = load_file(str(ckpt.latest_checkpoint(tmp_path / "split") / "model.safetensors"))
    y = load_file(str(ckpt.latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in y)


def test_bench_builds_and_steps_electra():
    """`unimask bench --objective electra` builds its engine from the registry (the CLI path and the
    peak-GEMM measurement are covered by test_bench.py)."""
    from unimask import bench

    engine = bench.build_engine("electra", "tiny", 4, 32, 2, "fp32", 1000, bench.device_info("cpu"))
    bench.run_interleaved([engine], warmup=1, steps=1, block=1)
    assert len(engine.times) == 1 and all(math.isfinite(x) for x in engine.losses)
    assert OBJECTIVES["electra"] is Electra and isinstance(engine.model.objective, Electra)


def test_recipes_carry_the_official_hyperparameters():
    from unimask.recipes import RECIPES

    widths = {"electra_mini": (256, 64, 5e-4), "electra_small": (512, 128, 5e-4), "electra_base": (768, 256, 2e-4)}
    for name, (width, generator, lr) in widths.items():
        cfg = RECIPES[name]()
        assert cfg.objective_name == "electra" and isinstance(cfg.objective, ElectraConfig)
        assert (cfg.model.hidden_size, cfg.objective.generator_hidden_size, cfg.train.lr) == (width, generator, lr)
        assert (cfg.objective.rtd_weight, cfg.objective.mask_prob, cfg.objective.mask_token_prob) == (50.0, 0.15, 0.85)
        optim = (cfg.train.warmup_steps, cfg.train.beta2, cfg.train.adam_eps, cfg.train.weight_decay)
        assert optim == (10_000, 0.999, 1e-6, 0.01)
        Electra(cfg.objective, cfg.model, Vocab(size=cfg.model.vocab_size))          # the shapes fit
