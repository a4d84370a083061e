"""Encoder invariants: mask layouts against a brute-force reference, T5 buckets, position ids,
pre/post-LN, and every parameter getting a gradient through the MLM objective."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from unimask.model.encoder import Encoder, EncoderConfig, relative_position_bucket
from unimask.objectives import PretrainModel, TokenBatch, Vocab
from unimask.objectives.mlm import MLM, MLMConfig

V = 50
POSITIONS = {"absolute": dict(absolute_positions=True, relative_buckets=0),
             "relative": dict(absolute_positions=False, relative_buckets=32),
             "both": dict(absolute_positions=True, relative_buckets=32)}
COMBOS = list(itertools.product(("post", "pre"), POSITIONS))


def tiny(norm: str = "post", positions: str = "both", **kw) -> EncoderConfig:
    fields = dict(vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                  max_positions=64, norm=norm, dropout=0.0, attention_dropout=0.0,
                  relative_max_distance=16, **POSITIONS[positions])
    return EncoderConfig(**{**fields, **kw})


def encoder(norm: str = "post", positions: str = "both", seed: int = 0, **kw) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(tiny(norm, positions, **kw)).eval()
    # an N(0, 0.02) bias table barely moves attention: a unit-scale one makes the position tests bite
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "table" in name:
                p.normal_(0, 1.0)
    return enc


def ids(B: int = 3, T: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, V, (B, T), generator=g)


def test_output_shape_and_embeds_path():
    enc = encoder()
    x = ids(3, 7)
    out = enc(x)
    assert out.shape == (3, 7, 16)
    torch.testing.assert_close(enc(inputs_embeds=enc.word_embeddings(x)), out)
    with pytest.raises(ValueError):
        enc(x, inputs_embeds=enc.word_embeddings(x))
    with pytest.raises(ValueError):
        enc()


@pytest.mark.parametrize("norm,positions", COMBOS)
def test_padding_mask_layouts_agree(norm, positions):
    enc = encoder(norm, positions)
    x = ids(3, 8)
    pad = torch.ones(3, 8, dtype=torch.bool)
    pad[0, 5:] = False
    pad[2, 2:] = False
    full = pad[:, None, :].expand(3, 8, 8)                     # (B, T, T): query i may see key j
    a = enc(x, attention_mask=pad)
    b = enc(x, attention_mask=full)
    c = enc(x, attention_mask=full[:, None])                   # (B, 1, T, T)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    # the mask does something: unmasked output differs at real positions of padded rows
    assert not torch.allclose(enc(x)[0, :5], a[0, :5], atol=1e-4)


@pytest.mark.parametrize("norm,positions", COMBOS)
def test_padding_does_not_change_real_positions(norm, positions):
    enc = encoder(norm, positions)
    x = ids(1, 5)
    alone = enc(x)                                             # (1, 5, D), no padding at all
    junk = torch.randint(5, V, (1, 4))                         # padded slots hold real tokens: only the mask hides them
    padded = torch.cat([x, junk], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    torch.testing.assert_close(enc(padded, attention_mask=mask)[:, :5], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(torch.cat([x, torch.zeros_like(junk)], 1), attention_mask=mask)[:, :5],
                               alone, atol=1e-5, rtol=1e-5)


def reference_forward(enc: Encoder, input_ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The encoder by hand: attention runs one query row at a time over only its allowed keys."""
    cfg = enc.config
    B, T = input_ids.shape
    H, Dh = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    pos = torch.arange(T)
    e = enc.embeddings
    x = e.word.weight[input_ids]
    if e.position is not None:
        x = x + e.position.weight[pos]
    x = x + e.token_type.weight[0]
    x = F.layer_norm(x, (cfg.hidden_size,), e.norm.weight, e.norm.bias, cfg.layer_norm_eps)

    def bias(h, i, j):
        if enc.relative_bias is None:
            return 0.0
        bucket = relative_position_bucket(torch.tensor(j - i), cfg.relative_buckets, cfg.relative_max_distance)
        return enc.relative_bias.table.weight[bucket, h]

    def attend(layer, h_in):
        q = h_in @ layer.query.weight.T + layer.query.bias
        k = h_in @ layer.key.weight.T + layer.key.bias
        v = h_in @ layer.value.weight.T + layer.value.bias
        out = torch.zeros_like(h_in)
        for b in range(B):
            for i in range(T):
                keys = [j for j in range(T) if allowed[b, i, j]]
                for h in range(H):
                    sl = slice(h * Dh, (h + 1) * Dh)
                    scores = torch.stack([q[b, i, sl] @ k[b, j, sl] / math.sqrt(Dh) + bias(h, i, j) for j in keys])
                    p = torch.softmax(scores, 0)
                    out[b, i, sl] = sum(p[n] * v[b, j, sl] for n, j in enumerate(keys))
        return out @ layer.out.weight.T + layer.out.bias

    def ln(mod, y):
        return F.layer_norm(y, (cfg.hidden_size,), mod.weight, mod.bias, cfg.layer_norm_eps)

    def mlp(m, y):
        return F.gelu(y @ m.up.weight.T + m.up.bias) @ m.down.weight.T + m.down.bias

    for block in enc.layers:
        if cfg.norm == "pre":
            x = x + attend(block.attn, ln(block.attn_norm, x))
            x = x + mlp(block.mlp, ln(block.mlp_norm, x))
        else:
            x = ln(block.attn_norm, x + attend(block.attn, x))
            x = ln(block.mlp_norm, x + mlp(block.mlp, x))
    return ln(enc.final_norm, x) if enc.final_norm is not None else x


@pytest.mark.parametrize("norm,positions", [("post", "absolute"), ("pre", "both"), ("post", "relative")])
def test_layout_mask_matches_brute_force(norm, positions):
    enc = encoder(norm, positions)
    x = ids(2, 6)
    g = torch.Generator().manual_seed(3)
    allowed = torch.rand(2, 6, 6, generator=g) < 0.4
    allowed |= torch.eye(6, dtype=torch.bool)                 # every query has at least one key
    with torch.no_grad():
        got = enc(x, attention_mask=allowed)
        want = reference_forward(enc, x, allowed)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        # and the reference is sensitive to the layout: all-visible differs
        assert not torch.allclose(want, reference_forward(enc, x, torch.ones(2, 6, 6, dtype=torch.bool)), atol=1e-4)


def t5_bucket(relative: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """T5's _relative_position_bucket (bidirectional), one integer at a time, in float64 maths."""
    half = num_buckets // 2
    bucket = half if relative > 0 else 0
    n = abs(relative)
    max_exact = half // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
    return bucket + min(large, half - 1)


def test_relative_position_bucket_matches_t5():
    rel = torch.arange(-300, 301)
    got = relative_position_bucket(rel, 32, 128).tolist()
    want = [t5_bucket(r) for r in rel.tolist()]
    assert got == want
    assert set(got) == set(range(32)) - {16}                   # all but "key after query at distance 0"
    assert got[300] == 0 and got[301] == 17 and got[299] == 1  # 0, +1 and -1 (key - query)
    # also on a (B, T, T) shaped input
    grid = rel[:64].view(1, 8, 8)
    assert relative_position_bucket(grid, 32, 128).flatten().tolist() == want[:64]


@pytest.mark.parametrize("positions", list(POSITIONS))
def test_position_ids_drive_positions(positions):
    enc = encoder("pre", positions)
    x = ids(2, 7)
    pos = torch.arange(7).expand(2, 7)
    base = enc(x, position_ids=pos)
    torch.testing.assert_close(enc(x), base)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    moved = enc(x[:, perm], position_ids=pos[:, perm])
    torch.testing.assert_close(moved, base[:, perm], atol=1e-5, rtol=1e-5)
    # permuting tokens but not their position ids changes the result: positions are really used
    assert not torch.allclose(enc(x[:, perm]), base[:, perm], atol=1e-4)


def test_relative_bias_uses_position_ids_not_indices():
    enc = encoder("post", "relative")
    x = ids(1, 6)
    shifted = enc(x, position_ids=torch.arange(6)[None] + 40)   # a pure shift: relative geometry unchanged
    torch.testing.assert_close(shifted, enc(x), atol=1e-5, rtol=1e-5)
    spread = enc(x, position_ids=torch.arange(6)[None] * 3)
    assert not torch.allclose(spread, enc(x), atol=1e-4)


def test_pre_and_post_norm():
    post, pre = encoder("post"), encoder("pre")
    assert post.final_norm is None and isinstance(pre.final_norm, torch.nn.LayerNorm)
    x = ids(2, 5)
    a, b = post(x), pre(x)
    assert a.shape == b.shape == (2, 5, 16)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    # the last op of both is a LayerNorm with unit weight at init: zero mean, unit variance per token
    for out in (a, b):
        torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError):
        tiny(norm="middle")
    with pytest.raises(ValueError):
        tiny(positions="relative", relative_buckets=0)


@pytest.mark.parametrize("norm,positions", COMBOS)
def test_every_parameter_gets_a_gradient_through_mlm(norm, positions):
    cfg = tiny(norm, positions, dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    vocab = Vocab(size=V)
    model = PretrainModel(Encoder(cfg), MLM(MLMConfig(), cfg, vocab)).train()
    x = ids(4, 12)
    x[:, 0], x[:, -1] = vocab.cls, vocab.sep
    batch = model.objective.corrupt(TokenBatch(x, token_type_ids=(torch.arange(12) >= 6).long().expand(4, 12)),
                                    torch.Generator().manual_seed(0))
    assert batch.labels.ne(-100).any()
    out = model(batch)
    (out.loss / out.num_targets).backward()
    names = dict(model.named_parameters())
    assert "objective.head.bias" in names and "objective.head.dense.weight" in names
    assert ("encoder.relative_bias.table.weight" in names) == (positions != "absolute")
    assert ("encoder.embeddings.position.weight" in names) == (positions != "relative")
    missing = [n for n, p in names.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    tt = names["encoder.embeddings.token_type.weight"].grad
    assert (tt.abs().sum(-1) > 0).all()                         # both segment rows were used


def test_token_type_row_zero_is_the_default():
    enc = encoder()
    x = ids(2, 5)
    torch.testing.assert_close(enc(x), enc(x, token_type_ids=torch.zeros_like(x)))
    assert not torch.allclose(enc(x), enc(x, token_type_ids=torch.ones_like(x)), atol=1e-4)


@pytest.mark.parametrize("norm,positions", COMBOS)
def test_step_with_cache_equals_one_forward(norm, positions):
    """Encoder.step: a sequence run in chunks, each attending to the cached keys/values of the
    earlier ones, equals one forward under the same mask when no token attends to a later one."""
    enc = encoder(norm, positions)
    B, T = 3, 10
    x = ids(B, T)
    g = torch.Generator().manual_seed(3)
    # any mask in which tokens see only themselves and earlier tokens (holes allowed), with padding
    mask = torch.tril(torch.rand(B, T, T, generator=g) < 0.6) | torch.eye(T, dtype=torch.bool)
    position_ids = torch.randperm(30, generator=g)[:T].sort().values.expand(B, T).clone()
    position_ids[1] += 5                                       # positions are ids, not indices
    types = (torch.arange(T) >= 4).long().expand(B, T)
    full = enc(x, position_ids=position_ids, token_type_ids=types, attention_mask=mask)   # (B, T, D)
    past, chunks = None, []
    for a, b in ((0, 3), (3, 4), (4, 8), (8, 10)):
        h, new = enc.step(x[:, a:b], position_ids=position_ids[:, a:b], token_type_ids=types[:, a:b],
                          attention_mask=mask[:, a:b, :b], past=past,
                          past_position_ids=None if past is None else position_ids[:, :a])
        past = new if past is None else [(torch.cat([k, nk], 2), torch.cat([v, nv], 2))
                                         for (k, v), (nk, nv) in zip(past, new)]
        chunks.append(h)
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)
    assert past[0][0].shape == (B, 2, T, 8)                    # (B, H, P, Dh)
    # without a past, step is forward plus the keys/values
    h, _ = enc.step(x, position_ids=position_ids, token_type_ids=types, attention_mask=mask)
    torch.testing.assert_close(h, full)
    with pytest.raises(ValueError):
        enc.step(x[:, :2], past=past)


def test_relative_bias_with_separate_key_positions():
    enc = encoder("post", "relative")
    q = torch.tensor([[3, 7]])
    k = torch.tensor([[0, 3, 7, 9]])
    bias = enc.relative_bias(q, k)                             # (1, H, 2, 4)
    full = enc.relative_bias(torch.tensor([[0, 3, 7, 9]]))     # (1, H, 4, 4)
    torch.testing.assert_close(bias, full[:, :, 1:3])
