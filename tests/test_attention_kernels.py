"""The flex_attention path (model/encoder.py FlexLayout) against SDPA's dense mask / bias.

On the CPU flex_attention runs forward only (torch 2.13 has no CPU backward), eagerly: these tests
compare hidden states in float64 under torch.no_grad; the gradients (and the compiled kernel) are
checked where there is a GPU (test at the end, and benchmarks/gpu_check.py's correctness part)."""

from __future__ import annotations

import pytest
import torch

from unimask.model import encoder as encoder_mod
from unimask.model.encoder import (Encoder, EncoderConfig, FlexLayout, RelativePositionBias, attention_bias,
                                   relative_position_bucket, set_attention_kernel)
from unimask.objectives import PretrainModel, TokenBatch, Vocab
from unimask.objectives.pmlm import PMLM, PMLMConfig
from unimask.tasks.seq2seq import s2s_layout

pytestmark = [pytest.mark.skipif(encoder_mod.flex_attention is None, reason="flex_attention needs torch >= 2.5"),
              pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")]

VOCAB = Vocab(size=60)


def config(positions: str = "both", **kw) -> EncoderConfig:
    fields = dict(vocab_size=VOCAB.size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_positions=200, dropout=0.0, attention_dropout=0.0, relative_max_distance=16,
                  absolute_positions=positions != "relative", relative_buckets=0 if positions == "absolute" else 32)
    return EncoderConfig(**{**fields, **kw})


def encoder(positions: str = "both", seed: int = 0, **kw) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(config(positions, **kw)).double().eval()
    with torch.no_grad():                       # a unit-scale bias table, so the bias matters
        for name, p in enc.named_parameters():
            if "table" in name:
                p.normal_(0, 1.0)
    return enc


def both_kernels(module: torch.nn.Module, run) -> tuple:
    """run() under the SDPA kernel, then under flex; the module is left on "auto"."""
    outs = []
    for kernel in ("sdpa", "flex"):
        set_attention_kernel(module, kernel)
        with torch.no_grad():
            outs.append(run())
    set_attention_kernel(module, "auto")
    return tuple(outs)


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(5, VOCAB.size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_bias_by_distance_is_the_bucketed_bias_at_every_distance():
    """Clamping key - query to [-M, M] keeps every bucket (distances beyond M share the last one)."""
    d = torch.arange(-1000, 1001)
    for buckets, M in ((32, 128), (32, 16), (8, 20)):
        exact = relative_position_bucket(d, buckets, M)
        assert torch.equal(relative_position_bucket(d.clamp(-M, M), buckets, M), exact)
    rel = RelativePositionBias(config(relative_max_distance=16)).double()
    pos = torch.tensor([[0, 3, 40, 7, 150, 2]])
    dense = rel(pos)[0]                                                          # (H, T, T)
    table = rel.by_distance()                                                    # (2M + 1, H)
    distance = (pos[0][None, :] - pos[0][:, None]).clamp(-16, 16) + 16          # (T, T) key - query
    assert torch.equal(table[distance].permute(2, 0, 1), dense)


def test_score_mod_and_mask_mod_equal_the_dense_construction():
    """FlexLayout's score_mod, evaluated on every (b, h, i, j), is attention_bias's float bias; its
    block mask's mask_mod is the boolean layout (what flex reads instead of the dense tensor)."""
    enc = encoder()
    B, Tq, Tk = 2, 5, 9
    qpos = torch.tensor([[4, 5, 6, 7, 8], [0, 2, 2, 3, 30]])
    kpos = torch.arange(Tk).expand(B, Tk).clone()
    kpos[1, 4] = 60
    allowed = torch.rand(B, Tq, Tk, generator=torch.Generator().manual_seed(0)) > 0.4
    allowed[:, :, 0] = True
    layout = FlexLayout.build(allowed, enc.relative_bias, qpos, kpos)
    H = enc.config.num_heads
    b, h, i, j = torch.meshgrid(torch.arange(B), torch.arange(H), torch.arange(Tq), torch.arange(Tk), indexing="ij")
    scores = layout.score_mod(torch.float64)(torch.zeros(b.shape, dtype=torch.float64), b, h, i, j)
    with torch.no_grad():
        dense = attention_bias(None, enc.relative_bias(qpos, kpos), torch.float64)      # (B, H, Tq, Tk)
    assert torch.equal(scores, dense)
    assert torch.equal(layout.block_mask.mask_mod(b, h, i, j), allowed[:, None].expand(B, H, Tq, Tk))


@pytest.mark.parametrize("positions", ["both", "relative", "absolute"])
def test_flex_equals_sdpa_on_padded_text(positions):
    """Padding (B, T) and the relative bias: the text pass of MLM / ELECTRA / COCO-LM."""
    enc = encoder(positions)
    x = ids(3, 70)
    real = torch.ones_like(x, dtype=torch.bool)
    real[1, 50:] = False
    real[2, 9:] = False
    for mask in (None, real):
        if mask is None and positions == "absolute":
            continue
        a, b = both_kernels(enc, lambda: enc(x, attention_mask=mask))
        torch.testing.assert_close(b[real], a[real], rtol=0, atol=1e-12)


def pmlm_model(positions: str) -> PretrainModel:
    enc = encoder(positions, seed=3)
    return PretrainModel(enc, PMLM(PMLMConfig(), enc.config, VOCAB).double()).eval()


@pytest.mark.parametrize("positions", ["both", "absolute"])
def test_flex_equals_sdpa_on_the_pmlm_layout(positions):
    """PMLM's pseudo-masked layout through `hidden_states` (text pass, then the appended slots against
    the text's cached keys/values: Tq != Tk), and one pass over the whole (T', T') layout."""
    m = pmlm_model(positions)
    x = ids(3, 48, seed=5)
    x[:, 0] = VOCAB.cls
    real = torch.ones_like(x, dtype=torch.bool)
    real[-1, 30:] = False
    batch = m.objective.corrupt(TokenBatch(x.masked_fill(~real, VOCAB.pad), attention_mask=real),
                                torch.Generator().manual_seed(0))
    assert batch.attention_mask.dim() == 3 and batch.input_ids.shape[1] > 48
    (text_a, par_a), (text_b, par_b) = both_kernels(m, lambda: m.objective.hidden_states(m.encoder, batch))
    torch.testing.assert_close(text_b[real], text_a[real], rtol=0, atol=1e-12)
    valid = batch.extras["pseudo_labels"].ne(-100)
    torch.testing.assert_close(par_b[valid], par_a[valid], rtol=0, atol=1e-12)
    whole = lambda: m.encoder(batch.input_ids, position_ids=batch.position_ids,            # noqa: E731
                              attention_mask=batch.attention_mask)
    a, b = both_kernels(m, whole)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    loss_a, loss_b = both_kernels(m, lambda: m(batch).loss)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)


def test_flex_equals_sdpa_on_the_seq2seq_layout():
    """The seq2seq fine-tuning layout [source | target | pseudo] with token types, relative bias."""
    enc = encoder("both", seed=4)
    S, T = 40, 30
    positions, types, mask = s2s_layout(torch.tensor([40, 25, 7]), torch.tensor([30, 12, 1]), S, T, 1)
    x = ids(3, S + 2 * T, seed=9)
    a, b = both_kernels(enc, lambda: enc(x, position_ids=positions, token_type_ids=types, attention_mask=mask))
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_auto_kernel_keeps_sdpa_on_the_cpu_and_flex_refuses_attention_dropout():
    enc = encoder()
    x = torch.zeros(1, 200, 32, dtype=torch.float64)
    pos = torch.arange(200)[None]
    assert not isinstance(enc.attention_inputs(x, pos), FlexLayout)             # auto on the CPU: SDPA
    set_attention_kernel(enc, "flex")
    assert isinstance(enc.attention_inputs(x, pos), FlexLayout)
    dropping = Encoder(config(attention_dropout=0.1)).train()
    set_attention_kernel(dropping, "flex")
    with pytest.raises(ValueError, match="dropout"):
        dropping(ids(1, 8))
    with pytest.raises(ValueError, match="kernel"):
        set_attention_kernel(enc, "fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention's backward needs CUDA here")
def test_flex_gradients_equal_sdpa_on_cuda():
    """Gradients through the compiled flex kernel (score_mod's learnable bias table included)."""
    m = pmlm_model("both").float().cuda().train()
    x = ids(4, 256, seed=2)
    x[:, 0] = VOCAB.cls
    batch = m.objective.corrupt(TokenBatch(x), torch.Generator().manual_seed(0)).to("cuda")
    grads = []
    for kernel in ("sdpa", "flex"):
        set_attention_kernel(m, kernel)
        m.zero_grad()
        m(batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-3, atol=1e-5, msg=n)
