"""`unimask bench`: one JSON line with sane throughput, FLOPs, MFU and parameter counts (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from unimask import cli
from unimask.bench import train_flops_per_token
from unimask.config import sized
from unimask.model.encoder import Encoder
from unimask.objectives import OBJECTIVES, PretrainModel, Vocab
from unimask.train.malloc import keep_freed_memory_on

KEYS = {"objective", "size", "batch", "seq", "dtype", "tokens_per_s", "tokens_per_s_mean", "step_ms_median",
        "step_ms_mean", "peak_rss_mb", "params", "params_non_embedding", "train_flops_per_token",
        "achieved_tflops", "peak_tflops", "mfu"}


@pytest.mark.slow
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
    assert rec["keep_freed_memory"] is keep_freed_memory_on(torch.device("cpu"))   # on by default, as the trainer

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


def test_row_cross_entropy_gradient_for_any_row_weights():
    """The per-row CE's backward (positive row gradients folded into the exponent; zero or negative
    ones the plain way) equals F.cross_entropy's, over several chunks of rows, in fp32 and bf16."""
    import torch
    import torch.nn.functional as F

    from unimask.objectives.mlm import row_cross_entropy

    gen = torch.Generator().manual_seed(0)
    n, v = 45, 100_000                                   # the CPU's chunk is 41 rows at this vocabulary
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        x = (torch.randn(n, v, generator=gen) * 3).to(dtype)
        t = torch.randint(v, (n,), generator=gen)
        positive, mixed = torch.rand(n, generator=gen) + 0.1, torch.randn(n, generator=gen)
        mixed[3] = 0.0
        for w in (positive, mixed):
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            rows, _ = row_cross_entropy(a, t)
            (rows * w).sum().backward()
            (F.cross_entropy(b.float(), t, reduction="none") * w).sum().backward()
            assert a.grad.dtype == dtype
            torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=tol, atol=1e-6)


def _objective(name: str, cfg, **fields):
    return OBJECTIVES[name](OBJECTIVES[name].Config(**fields), cfg, Vocab(size=cfg.vocab_size))


def test_objective_flops_count_their_auxiliary_networks():
    """Each objective's FLOPs = the MLM formula's parts rearranged by hand (model/flops.py convention)."""
    from unimask.model.flops import stack_flops
    from unimask.objectives.generator import generator_config
    cfg = sized("mini", vocab_size=1000)
    D, V, T, f = cfg.hidden_size, cfg.vocab_size, 128, 19 / 128
    mlm = train_flops_per_token(cfg, T, f)
    head = 6 * (D * D + D * V)
    # MAE-LM: the encoder on the 109 kept tokens, each decoder layer on all 128
    deep, shallow = (_objective("maelm", cfg, decoder_layers=n).train_flops_per_token(T, f) for n in (4, 2))
    dec_layer = stack_flops(generator_config(cfg, D, 1), T)
    assert abs((deep - shallow) - 2 * dec_layer) < 1e-6 * deep
    assert abs(shallow - (109 / 128 * stack_flops(cfg, 109) + 2 * dec_layer + f * head)) < 1e-6 * deep
    # PMLM: without PAR it is MLM; with it the encoder's weights see T (1 + 2f) tokens, the T text
    # queries score T keys and the 38 appended ones all T + 38, and the head runs on 2f rows
    assert abs(_objective("pmlm", cfg, par_weight=0.0).train_flops_per_token(T, f) - mlm) < 1e-6 * mlm
    ext = T + 38
    weights = 6 * cfg.num_layers * (4 * D * D + 2 * D * cfg.intermediate_size) * ext
    scores = 6 * cfg.num_layers * 2 * D * (T * T + 38 * ext)
    assert abs(_objective("pmlm", cfg).train_flops_per_token(T, f) - ((weights + scores) / T + 2 * f * head)) < 1e-3
    # ELECTRA: discriminator + RTD head + a 64-wide generator and its head on the masked rows
    gen = generator_config(cfg, 64, cfg.num_layers)
    electra = stack_flops(cfg, T) + 6 * (D * D + D) + stack_flops(gen, T) + 6 * D * 64 + f * 6 * (64 * D + D * V)
    assert abs(_objective("electra", cfg).train_flops_per_token(T, f) - electra) < 1e-6 * electra
    # COCO-LM without SCL, generator sampled from its training pass: generator + main + copy + CLM projection
    coco = _objective("cocolm", cfg, scl_weight=0.0, generator_layers=1, generator_sample_mode="train")
    gen1 = generator_config(cfg, D, 1)
    expected = stack_flops(gen1, T) + f * head + stack_flops(cfg, T) + 6 * D + f * 6 * D * V
    assert abs(coco.train_flops_per_token(T, f) - expected) < 1e-6 * expected


@pytest.mark.slow
def test_bench_set_configures_the_objective(capsys):
    args = ["bench", "--objective", "maelm", "--size", "tiny", "--vocab", "1000", "--batch", "2", "--seq", "32",
            "--steps", "1", "--warmup", "0", "--dtype", "fp32", "--device", "cpu"]
    flops = {}
    for layers in (1, 3):
        assert cli.main([*args, "--set", f"objective.decoder_layers={layers}"]) == 0
        rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rec["overrides"] == [f"objective.decoder_layers={layers}"] and rec["flops_source"] == "objective"
        flops[layers] = rec["train_flops_per_token"]
    assert flops[3] > flops[1]
    assert cli.main([*args, "--set", "objective.decoder_layer=2"]) == 2
    assert "did you mean objective.decoder_layers" in capsys.readouterr().err
    assert cli.main([*args, "--set", "train.lr=1"]) == 2


@pytest.mark.slow
def test_bench_against_prints_both_engines_and_a_ratio(capsys):
    assert cli.main(["bench", "--objective", "pmlm", "--against", "mlm", "--size", "tiny", "--vocab", "1000",
                     "--batch", "2", "--seq", "32", "--steps", "2", "--warmup", "0", "--dtype", "fp32",
                     "--device", "cpu", "--set", "model.relative_buckets=8", "--no-keep-freed-memory"]) == 0
    first, second, ratio = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert (first["objective"], second["objective"]) == ("pmlm", "mlm") and first["steps"] == second["steps"] == 2
    assert first["keep_freed_memory"] is second["keep_freed_memory"] is False
    assert first["train_flops_per_token"] > second["train_flops_per_token"]   # PMLM's appended tokens
    assert ratio["ratio"] == "pmlm step / mlm step" and ratio["paired"] > 0
    assert abs(ratio["step_ms_median"] - first["step_ms_median"] / second["step_ms_median"]) < 0.01
    flops = first["train_flops_per_token"] / second["train_flops_per_token"]   # same text tokens per step
    assert ratio["flops"] == pytest.approx(flops, abs=1e-3) and ratio["flops"] > 1


def test_bench_compare_compile_times_both_and_reports_the_compile_time(capsys, monkeypatch):
    """--compare-compile: the same objective compiled (each block) and eager, interleaved; the ratio line
    carries the compile time (the compiled engine's first step minus its median). torch.compile is
    stubbed here (tests/test_compile.py compiles for real)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    assert cli.main(["bench", "--objective", "mlm", "--compare-compile", "--size", "tiny", "--vocab", "1000",
                     "--batch", "2", "--seq", "16", "--steps", "2", "--warmup", "1", "--dtype", "fp32",
                     "--device", "cpu"]) == 0
    first, second, ratio = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert len(compiled) == 2                                     # tiny: 2 blocks, in the first engine only
    assert (first["compile"], second["compile"]) == (True, False) and first["first_step_ms"] > 0
    assert ratio["ratio"] == "mlm compiled step / eager step" and ratio["flops"] == 1.0
    assert ratio["compile_s"] == pytest.approx(first["first_step_ms"] / 1e3 - first["step_ms_median"] / 1e3, abs=0.02)
    with pytest.raises(SystemExit):                               # one second engine at a time
        cli.main(["bench", "--compare-compile", "--against", "mlm"])
def test_bf16_on_a_cpu_without_bf16_times_fp32_against_the_fp32_peak(capsys, monkeypatch):
    """Issue 21: one warning line, the record says what ran, and MFU is against the fp32 peak."""
    from unimask import bench, runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)         # the capability check
    peaks = []
    real_peak = bench.measure_peak_tflops
    monkeypatch.setattr(bench, "measure_peak_tflops", lambda dtype, device: peaks.append(dtype) or
                        real_peak(dtype, device, n=256, reps=1))
    assert cli.main(["bench", "--size", "tiny", "--vocab", "1000", "--batch", "2", "--seq", "16", "--steps", "1",
                     "--warmup", "0", "--dtype", "bf16", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no bf16 instructions" in warnings[0] and "fp32" in warnings[0]
    rec = json.loads(out)
    assert (rec["dtype"], rec["dtype_requested"]) == ("fp32", "bf16")
    assert peaks and set(peaks) == {torch.float32}
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)          # a CPU with bf16: as asked
    assert cli.main(["bench", "--size", "tiny", "--vocab", "1000", "--batch", "2", "--seq", "16", "--steps", "1",
                     "--warmup", "0", "--dtype", "bf16", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and json.loads(out)["dtype"] == "bf16" and "dtype_requested" not in json.loads(out)
    assert peaks[-1] == torch.bfloat16
