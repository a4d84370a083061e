"""`unimask bench`: one JSON line with sane throughput, FLOPs, MFU and parameter counts (no timing asserts)."""

from __future__ import annotations

import json

from unimask import cli
from unimask.bench import train_flops_per_token
from unimask.config import sized
from unimask.model.encoder import Encoder
from unimask.objectives import OBJECTIVES, PretrainModel, Vocab

KEYS = {"objective", "size", "batch", "seq", "dtype", "tokens_per_s", "tokens_per_s_mean", "step_ms_median",
        "step_ms_mean", "peak_rss_mb", "params", "params_non_embedding", "train_flops_per_token",
        "achieved_tflops", "peak_tflops", "mfu"}


def test_bench_prints_one_sane_json_line(capsys):
    assert cli.main(["bench", "--objective", "mlm", "--size", "tiny", "--vocab", "1000", "--batch", "4",
                     "--seq", "32", "--steps", "2", "--warmup", "1", "--dtype", "fp32", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert KEYS <= rec.keys(), KEYS - rec.keys()
    assert (rec["objective"], rec["size"], rec["batch"], rec["seq"], rec["dtype"]) == ("mlm", "tiny", 4, 32, "fp32")
    assert rec["steps"] == 2
    assert rec["tokens_per_s"] > 0 and rec["tokens_per_s_mean"] > 0
    assert rec["step_ms_median"] > 0 and rec["step_ms_mean"] > 0
    assert rec["peak_rss_mb"] > 0 and rec["peak_tflops"] > 0 and rec["achieved_tflops"] > 0
    assert 0 < rec["mfu"] <= 1

    cfg = sized("tiny", vocab_size=1000)
    model = PretrainModel(Encoder(cfg), OBJECTIVES["mlm"](OBJECTIVES["mlm"].Config(), cfg, Vocab(size=1000)))
    assert rec["params"] == sum(p.numel() for p in model.parameters())
    D = cfg.hidden_size
    tables = cfg.vocab_size * D + cfg.max_positions * D + cfg.type_vocab_size * D
    assert rec["params_non_embedding"] == rec["params"] - tables

    # 15% of the 30 maskable tokens ([CLS] and [SEP] are not) = 4 predicted positions out of 32
    assert rec["train_flops_per_token"] == train_flops_per_token(cfg, 32, 4 / 32)
    L, I, V, T = cfg.num_layers, cfg.intermediate_size, cfg.vocab_size, 32
    by_hand = 6 * L * (4 * D * D + 2 * D * I) + 12 * L * T * D + 6 * (4 / 32) * (D * D + V * D)
    assert abs(rec["train_flops_per_token"] - by_hand) < 1e-6 * by_hand


def test_fused_cross_entropy_matches_torch():
    """The MLM loss's chunked CE (a speed change) equals F.cross_entropy on upcast logits."""
    import torch
    import torch.nn.functional as F

    from unimask.objectives.mlm import summed_cross_entropy

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for n, v in ((0, 11), (1, 5), (45, 1000)):
            x = (torch.randn(n, v, generator=gen) * 3).to(dtype)
            x[:, :2] = x.amax() if n else 0                      # ties: the first index wins, as argmax
            t = torch.randint(v, (n,), generator=gen)
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            loss, predicted = summed_cross_entropy(a, t)
            (0.5 * loss).backward()
            (0.5 * F.cross_entropy(b.float(), t, reduction="sum")).backward()
            ref = F.cross_entropy(x.float(), t, reduction="sum")
            assert loss.dtype == torch.float32 and torch.allclose(loss, ref, rtol=1e-6, atol=1e-5)
            assert torch.equal(predicted, x.argmax(-1))
            assert a.grad.dtype == dtype and torch.allclose(a.grad.float(), b.grad.float(), rtol=1e-2, atol=1e-6)
