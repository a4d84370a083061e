"""COCO-LM (Meng et al. 2021): corruption and crop invariants, the gradient paths the paper cuts
(sampling, the detached copy weight), CLM and SCL against explicit references, the ablation
switches, every parameter learning, and a real run that falls, saves and resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import tiny_run_config
from unimask import bench
from unimask.config import apply_overrides, from_dict
from unimask.errors import UserError
from unimask.model.encoder import Encoder, EncoderConfig
from unimask.objectives import PretrainModel, TokenBatch, Vocab
from unimask.objectives import cocolm as cocolm_mod
from unimask.objectives.cocolm import CocoLM, CocoLMConfig, crop_view, scl_loss, view_length
from unimask.recipes import RECIPES
from unimask.train import checkpoint as ckpt
from unimask.train.loop import train

V = 100
VOCAB = Vocab(size=V)                 # pad 0, unk 1, cls 2, sep 3, mask 4


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and much faster on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def enc_cfg(dropout: float = 0.0) -> EncoderConfig:
    """2 layers x 32 wide, absolute positions + a shared relative bias table (COCO-LM's setting)."""
    return EncoderConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_positions=64, dropout=dropout, attention_dropout=dropout,
                         relative_buckets=8, relative_max_distance=32)


def build(dropout: float = 0.0, seed: int = 0, **objective) -> PretrainModel:
    torch.manual_seed(seed)
    cfg = enc_cfg(dropout)
    return PretrainModel(Encoder(cfg), CocoLM(CocoLMConfig(**{"generator_layers": 1, **objective}), cfg, VOCAB))


def text(B: int = 6, T: int = 24, seed: int = 0, lengths: list[int] | None = None) -> TokenBatch:
    """[CLS] + ordinary tokens (a [SEP] inside), row b padded after lengths[b] tokens if given."""
    ids = torch.randint(5, V, (B, T), generator=rng(seed))
    ids[:, 0] = VOCAB.cls
    ids[:, T // 3] = VOCAB.sep
    if lengths is None:
        return TokenBatch(ids)
    for b, n in enumerate(lengths):
        ids[b, n:] = VOCAB.pad
    return TokenBatch(ids, attention_mask=ids.ne(VOCAB.pad))


def corrupted(model: PretrainModel, batch: TokenBatch, seed: int = 1) -> TokenBatch:
    return model.objective.corrupt(batch, rng(seed))


def means(metrics: dict) -> dict[str, float]:
    return {k: float(v[0] / v[1]) for k, v in metrics.items()}


# ---- config ---------------------------------------------------------------------------------------

def test_config_defaults_validation_and_overrides():
    c = CocoLMConfig()
    assert (c.mask_prob, c.mask_token_prob, c.random_token_prob) == (0.15, 1.0, 0.0)     # official: all [MASK]
    assert (c.generator_layers, c.generator_width_ratio, c.generator_temperature) == (4, 1.0, 1.0)
    assert (c.generator_sample_mode, c.copy_weight, c.scl_weight, c.scl_temperature) == ("eval", 50.0, 1.0, 1.0)
    assert c.copy_weighting and c.scl_negatives == "local"
    for bad, match in [(dict(scl_temperature=0), "scl_temperature"), (dict(crop_fraction=1.5), "crop_fraction"),
                       (dict(copy_weight=0), "copy_weighting"), (dict(generator_layers=0), "generator_layers"),
                       (dict(copy_weight=0, clm_weight=0, scl_weight=0, copy_weighting=False), "learn nothing"),
                       (dict(clm_weight=-1), "clm_weight")]:
        with pytest.raises(ValueError, match=match):
            CocoLMConfig(**bad)
    cfg = apply_overrides(RECIPES["demo"](), ["objective_name=cocolm", "objective.scl_temperature=0.5",
                                              "objective.copy_weighting=false", "objective.scl_negatives=global",
                                              "objective.generator_sample_mode=train"])
    assert isinstance(cfg.objective, CocoLMConfig) and cfg.objective.scl_temperature == 0.5
    assert cfg.objective.copy_weighting is False and cfg.objective.scl_negatives == "global"
    with pytest.raises(UserError, match="copy_weight"):
        apply_overrides(cfg, ["objective.copy_weight=0", "objective.copy_weighting=true"])
    for name in ("cocolm_mini", "cocolm_small", "cocolm_base"):
        recipe = RECIPES[name]()
        assert recipe.objective_name == "cocolm" and recipe.model.relative_buckets == 32
        assert from_dict(json.loads(json.dumps(recipe.to_dict()))).to_dict() == recipe.to_dict()
    assert RECIPES["cocolm_base"]().objective.generator_layers == 4


# ---- corruption -----------------------------------------------------------------------------------

def test_corrupt_masks_an_exact_budget_with_mask_tokens_and_crops_a_view():
    model = build()
    T = 40
    batch = text(B=5, T=T, lengths=[40, 40, 31, 12, 2])
    out = corrupted(model, batch)
    again = corrupted(model, batch)
    assert torch.equal(out.input_ids, again.input_ids) and torch.equal(out.extras["scl_view_ids"],
                                                                       again.extras["scl_view_ids"])
    ids, masked = batch.input_ids, out.labels.ne(-100)
    maskable = ~torch.isin(ids, torch.tensor(VOCAB.special_ids))
    assert masked.sum(1).tolist() == [round(0.15 * int(n)) or 1 if n else 0 for n in maskable.sum(1)]
    assert not (masked & ~maskable).any()
    assert (out.input_ids[masked] == VOCAB.mask).all()                   # 100% [MASK], official
    assert torch.equal(out.input_ids[~masked], ids[~masked]) and torch.equal(out.labels[masked], ids[masked])
    view, vmask = out.extras["scl_view_ids"], out.extras["scl_view_mask"]
    assert view.shape == vmask.shape == (5, T)                            # static shapes
    for b, length in enumerate([40, 40, 31, 12, 2]):
        keep = max(1, int(0.9 * (length - 1)))
        assert vmask[b].sum() == 1 + keep and vmask[b, :1 + keep].all()
        assert view[b, 0] == VOCAB.cls and (view[b, 1 + keep:] == VOCAB.pad).all()
        body = view[b, 1:1 + keep].tolist()
        source = ids[b, 1:length].tolist()                                # the original, uncorrupted text
        assert any(source[s:s + keep] == body for s in range(len(source) - keep + 1))
    assert view_length(T, 0.9) == 1 + int(0.9 * (T - 1)) == int(vmask[0].sum())
    starts = {tuple(crop_view(ids[:1], None, 0.5, VOCAB, rng(s))[0][0, 1:3].tolist()) for s in range(30)}
    assert len(starts) > 5                                                # the crop position is random
    off = build(scl_weight=0)
    assert "scl_view_ids" not in corrupted(off, batch).extras


# ---- gradient paths -------------------------------------------------------------------------------

def generator_only(model: PretrainModel) -> list[torch.nn.Parameter]:
    return list(model.objective.generator.parameters())


def test_replacements_send_no_gradient_into_the_generator():
    model = build()
    parts, _ = model.objective.compute_parts(model.encoder, corrupted(model, text()))
    main = parts["copy"] * parts["copy_scale"] + parts["clm"] + parts["scl"] * parts["scl_scale"]
    main.backward()
    assert all(p.grad is None or not p.grad.any() for p in generator_only(model))
    assert model.encoder.layers[0].attn.query.weight.grad.abs().sum() > 0
    model.zero_grad()
    parts, _ = model.objective.compute_parts(model.encoder, corrupted(model, text()))
    parts["gen"].backward()                                               # the generator learns from its MLM only
    assert all(p.grad is not None and p.grad.any() for p in generator_only(model))


def test_clm_correction_sends_no_gradient_into_the_copy_head():
    model = build()
    parts, m = model.objective.compute_parts(model.encoder, corrupted(model, text()))
    parts["clm"].backward()
    head = model.objective.copy_head
    assert head.weight.grad is None or not head.weight.grad.any()
    assert head.bias.grad is None or not head.bias.grad.any()
    assert model.objective.clm_bias.grad.abs().sum() > 0
    assert means(m)["clm_loss"] < means(m)["clm_ce"]                       # the weights (< 1) are applied


def test_clm_and_copy_losses_equal_a_full_vocabulary_reference(monkeypatch):
    """With the replacements fixed, CLM = sum_masked CE(full softmax) x (1 - sigmoid(copy)) and the
    copy loss is the BCE against 'not replaced' over real tokens."""
    model = build()
    model.eval()
    batch = corrupted(model, text(lengths=[24, 24, 20, 24, 15, 24]))
    selected = batch.labels.ne(-100)
    targets = batch.labels[selected]
    fixed = torch.where(torch.arange(len(targets)) % 2 == 0, targets, (targets + 1) % V)   # half replaced
    monkeypatch.setattr(cocolm_mod.masking, "sample_tokens", lambda logits, t, g=None: fixed)
    parts, m = model.objective.compute_parts(model.encoder, batch)

    ids = batch.input_ids.masked_scatter(selected, fixed)
    hidden = model.encoder(ids, attention_mask=batch.attention_mask)
    copy = model.objective.copy_head(hidden).squeeze(-1)
    logits = hidden[selected] @ model.encoder.word_embeddings.weight.t() + model.objective.clm_bias
    ce = F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(parts["clm"], (ce * (1 - torch.sigmoid(copy[selected]))).sum())
    original = torch.ones_like(selected)
    original[selected] = fixed == targets
    real = batch.attention_mask
    bce = F.binary_cross_entropy_with_logits(copy[real], original[real].float(), reduction="sum")
    torch.testing.assert_close(parts["copy"], bce)
    assert means(m)["sampled_acc"] == pytest.approx(0.5, abs=0.1)
    assert means(m)["replaced_frac"] == pytest.approx((~original[real]).float().mean().item())


def test_replacements_come_from_a_separate_no_dropout_pass(monkeypatch):
    """generator_sample_mode='eval' (official default): sampling logits = the generator in eval mode,
    while the MLM loss pass keeps dropout; the modules' training flags are restored."""
    model = build(dropout=0.3)
    model.train()
    batch = corrupted(model, text())
    seen = []
    real_sample = cocolm_mod.masking.sample_tokens
    monkeypatch.setattr(cocolm_mod.masking, "sample_tokens",
                        lambda logits, t, g=None: seen.append(logits) or real_sample(logits, t, g))
    model(batch)
    assert model.objective.generator.training and model.encoder.embeddings.training
    assert not seen[0].requires_grad
    model.eval()
    with torch.no_grad():
        gen = model.objective.generator
        h = gen(model.encoder, batch.input_ids, None, None, None)
        reference = gen.logits(h[batch.labels.ne(-100)], model.encoder)
    torch.testing.assert_close(seen[0], reference)


def test_every_parameter_gets_a_gradient_with_all_parts_on():
    model = build(dropout=0.1)
    model.train()
    out = model(corrupted(model, text(lengths=[24, 24, 24, 20, 24, 24])))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing
    assert {"gen_acc", "sampled_acc", "replaced_frac", "copy_acc", "copy_precision", "copy_recall", "clm_acc",
            "gen_loss", "copy_loss", "clm_loss", "scl_loss", "scl_acc"} <= out.metrics.keys()


# ---- ablations --------------------------------------------------------------------------------------

ABLATIONS = {
    "full": dict(),
    "no_scl": dict(scl_weight=0),
    "no_copy_weighting": dict(copy_weighting=False),
    "no_clm": dict(clm_weight=0),
    "no_copy": dict(copy_weight=0, copy_weighting=False),
    "frozen_generator": dict(generator_weight=0),
    "scl_only": dict(copy_weight=0, copy_weighting=False, clm_weight=0, generator_sample_mode="train"),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_switches_remove_their_part_and_the_loss_is_the_sum_of_the_part_means(name):
    cfg = CocoLMConfig(generator_layers=1, **ABLATIONS[name])
    model = build(**dataclasses.asdict(cfg))
    model.train()
    out = model(corrupted(model, text()))
    out.loss.backward()
    m = means(out.metrics)
    grads = {n: p.grad is not None and bool(p.grad.any()) for n, p in model.objective.named_parameters()}
    has = lambda prefix: any(n.startswith(prefix) for n in grads)               # noqa: E731
    learns = lambda prefix: any(g for n, g in grads.items() if n.startswith(prefix))   # noqa: E731
    assert has("scl_head") == learns("scl_head") == (cfg.scl_weight > 0) == ("scl_loss" in m) == ("scl_acc" in m)
    assert has("clm_bias") == learns("clm_bias") == (cfg.clm_weight > 0) == ("clm_acc" in m)
    assert has("copy_head") == learns("copy_head") == (cfg.copy_weight > 0) == ("copy_loss" in m)
    assert learns("generator") == (cfg.generator_weight > 0) == ("gen_loss" in m)
    if "clm_loss" in m and not cfg.copy_weighting:
        assert m["clm_loss"] == pytest.approx(m["clm_ce"])
    expected = (cfg.generator_weight * m.get("gen_loss", 0) + cfg.copy_weight * m.get("copy_loss", 0)
                + cfg.clm_weight * m.get("clm_loss", 0) + cfg.scl_weight * m.get("scl_loss", 0))
    assert float(out.loss.detach() / out.num_targets) == pytest.approx(expected, rel=1e-5)
    assert out.num_targets == corrupted(model, text()).labels.ne(-100).sum()


# ---- sequence contrastive learning --------------------------------------------------------------------

def brute_force_scl(za: torch.Tensor, zb: torch.Tensor, t: float, others: list[torch.Tensor] = ()) -> float:
    """-log(exp(s(i, partner)/t) / sum_{k != i} exp(s(i, k)/t)) summed over the 2B local views, with
    cosine s; `others` are further (already normalised) keys from other ranks."""
    z = [v / v.norm() for v in torch.cat([za, zb]).double()]
    keys = z + [k.double() for other in others for k in other]
    B, total = za.shape[0], 0.0
    for i in range(2 * B):
        partner = (i + B) % (2 * B)
        den = sum(math.exp(float(z[i] @ keys[k]) / t) for k in range(len(keys)) if k != i)
        total -= math.log(math.exp(float(z[i] @ z[partner]) / t) / den)
    return total


def test_scl_loss_equals_a_brute_force_reference():
    g = rng(3)
    za, zb = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for t in (1.0, 0.3):
        loss, correct, views = scl_loss(za, zb, t)
        assert views == 6 and 0 <= int(correct) <= 6
        assert float(loss) == pytest.approx(brute_force_scl(za, zb, t), rel=1e-5)
    # identical pairs are all found
    _, correct, _ = scl_loss(za, za.clone(), 1.0)
    assert int(correct) == 6
    # cross-rank negatives: this rank's block sits between two others'; queries stay local
    before, after = (F.normalize(torch.randn(6, 5, generator=g), dim=-1) for _ in range(2))
    za.requires_grad_(True)
    loss, _, views = scl_loss(za, zb, 0.5, all_gather=lambda z: torch.cat([before, z, after]))
    assert views == 6
    assert loss.item() == pytest.approx(brute_force_scl(za.detach(), zb, 0.5, [before, after]), rel=1e-5)
    loss.backward()
    assert za.grad.abs().sum() > 0


def test_cross_rank_negatives_are_gathered_in_training_only():
    """scl_negatives='global' uses the trainer's all_gather hook while training; evaluation stays local
    (ranks can hold unequal numbers of eval batches, and a collective there would hang)."""
    model = build(scl_negatives="global")
    calls = []
    other = F.normalize(torch.randn(12, 32, generator=rng(0)), dim=-1)
    model.objective.all_gather = lambda z: calls.append(z.shape) or torch.cat([z, other])
    batch = corrupted(model, text())
    local = build(seed=0)
    model.train()
    m = means(model(batch).metrics)
    assert calls == [(12, 32)] and m["scl_loss"] > 0
    model.eval()
    local.eval()
    with torch.no_grad():
        evaluated, reference = means(model(batch).metrics), means(local(batch).metrics)
    assert len(calls) == 1 and evaluated["scl_loss"] == pytest.approx(reference["scl_loss"])


def test_scl_scores_identical_views_above_shuffled_ones_after_a_few_steps():
    model = build(copy_weight=0, copy_weighting=False, clm_weight=0, scl_temperature=0.2, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = text(B=8, T=24, seed=5)

    def similarity_gap() -> float:
        with torch.no_grad():
            b = corrupted(model, batch, seed=99)
            ids = b.input_ids.masked_fill(b.labels.ne(-100), VOCAB.mask)
            width = view_length(24, 0.9)
            za = F.normalize(model.objective.scl_head(model.encoder(ids)[:, 0]), dim=-1)
            zb = F.normalize(model.objective.scl_head(model.encoder(b.extras["scl_view_ids"][:, :width])[:, 0]), dim=-1)
            sim = za @ zb.t()                                            # (B, B)
            return float(sim.diag().mean() - sim[~torch.eye(8, dtype=torch.bool)].mean())

    before = similarity_gap()
    for step in range(25):
        out = model(corrupted(model, batch, seed=step))
        opt.zero_grad()
        (out.loss / out.num_targets).backward()
        opt.step()
    after = similarity_gap()
    assert after > 0.2 and after > before + 0.1, (before, after)
    assert means(out.metrics)["scl_acc"] == 1.0


# ---- end to end -------------------------------------------------------------------------------------

def cocolm_run_config(data: Path, **train):
    cfg = tiny_run_config(data, **train)
    cfg.model.relative_buckets, cfg.model.relative_max_distance = 8, 32
    cfg.model.dropout = cfg.model.attention_dropout = 0.1      # resume must restore the dropout and sampling RNG
    return dataclasses.replace(cfg, objective_name="cocolm", objective=CocoLMConfig(generator_layers=1))


def curve(run: Path, split: str = "train") -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == split]


def test_loss_falls_on_real_text_and_resume_reproduces_the_run(kjv_data, tmp_path):
    cfg = cocolm_run_config(kjv_data, steps=30, batch_size=8, lr=3e-3, save_every=15, keep_last=2, eval_every=15)
    last = train(cfg, tmp_path / "straight", progress=False)
    losses = [loss for _, loss in curve(tmp_path / "straight")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    for part in ("gen_loss", "clm_ce"):          # the LM parts learn the text, not only the copy base rate
        values = [r[part] for r in rows if r["split"] == "train"]
        assert sum(values[-5:]) / 5 < sum(values[:5]) / 5 - 0.2, (part, values)
    assert {"clm_acc", "clm_ppl", "copy_acc", "scl_acc", "gen_acc"} <= set(last)
    weights = load_file(str(ckpt.latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    assert {"objective.generator.head.bias", "objective.copy_head.weight", "objective.clm_bias",
            "objective.scl_head.dense.weight"} <= set(weights)
    saved = from_dict(ckpt.load_config(ckpt.latest_checkpoint(tmp_path / "straight")))
    assert saved.to_dict() == cfg.to_dict() and isinstance(saved.objective, CocoLMConfig)

    # a run killed after its step-15 checkpoint: same directory without the later checkpoint
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "checkpoints" / "step_00000030")
    train(cfg, killed, resume=True, progress=False)
    assert curve(killed) == curve(tmp_path / "straight")
    assert curve(killed, "valid") == curve(tmp_path / "straight", "valid")
    resumed = load_file(str(ckpt.latest_checkpoint(killed) / "model.safetensors"))
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)


def test_the_copy_head_learns_to_detect_replacements(kjv_data, tmp_path):
    """The copy head learns beyond the base rate (as ELECTRA's discriminator in test_electra.py): with
    a near-uniform generator (temperature 100 over the 1,000-token vocabulary) the replacements are
    detectable from the tokens themselves, so the head must flag some of them. A head that saw the
    original text, or copy targets out of line with its input, stays at the base rate: loss about
    H(replaced_frac) and recall about 0."""
    cfg = cocolm_run_config(kjv_data, steps=150, batch_size=16, lr=3e-3, warmup_steps=10, log_every=10)
    cfg.model.dropout = cfg.model.attention_dropout = 0.0
    cfg = dataclasses.replace(cfg, objective=CocoLMConfig(generator_layers=1, generator_width_ratio=0.25,
                                                          generator_temperature=100.0))
    train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["split"] == "train"][-5:]
    q = sum(r["replaced_frac"] for r in final) / len(final)
    base_rate = -(q * math.log(q) + (1 - q) * math.log(1 - q))            # what predicting q everywhere scores
    assert sum(r["copy_loss"] for r in final) / len(final) < base_rate - 0.07, (base_rate, final)
    assert sum(r["copy_recall"] for r in final) / len(final) > 0.1, final


def test_bench_builds_and_steps_the_objective():
    """`unimask bench --objective cocolm` builds it from the registry and steps it through train_step."""
    engine = bench.build_engine("cocolm", "tiny", batch=4, seq=32, count=2, dtype="fp32", vocab_size=1000,
                                info=bench.device_info("cpu"))
    bench.run_interleaved([engine], warmup=1, steps=1, block=1)
    assert len(engine.times) == 1 and all(math.isfinite(loss) for loss in engine.losses)
    assert isinstance(engine.model.objective, CocoLM)
