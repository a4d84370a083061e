"""train.compile (regional: torch.compile per Transformer block), the attention kernel setting, fused
AdamW and pinned batches: what `train/parallel.py parallelize` applies from outside."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_run_config
from unimask.errors import UserError
from unimask.model.encoder import Block, BlockStack, Encoder
from unimask.objectives import OBJECTIVES, PretrainModel, TokenBatch, Vocab
from unimask.train.loop import train
from unimask.train.optim import build_optimizer
from unimask.train.parallel import DistInfo, compile_blocks, parallelize


def losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] in ("train", "valid")]


@pytest.mark.slow
def test_compiled_blocks_train_to_the_same_losses(kjv_data, tmp_path):
    """Two runs from one seed, train.compile off and on, dropout 0.1: the same training and held-out
    losses (within float tolerance: compiled kernels may round differently). On the CPU the compiled
    blocks draw dropout masks with ATen's random ops (`compile_options`), so the masks are eager's;
    with inductor's own generator the losses differ from the first step."""
    curves = {}
    for compiled in (False, True):
        cfg = tiny_run_config(kjv_data, steps=3, compile=compiled, eval_batches=1)
        cfg.model.dropout = cfg.model.attention_dropout = 0.1
        train(cfg, tmp_path / str(compiled), progress=False)
        curves[compiled] = losses(tmp_path / str(compiled))
    assert len(curves[True]) == 4                                       # 3 steps + the final evaluation
    assert curves[True] == pytest.approx(curves[False], rel=1e-5)


@pytest.mark.slow
def test_compiled_pmlm_steps_match_eager_values_and_gradients():
    """PMLM encodes through `Block.step` with cached keys/values: the compiled step gives its values and
    gradients (the regional compile replaces `step`, which `forward` calls too)."""
    from unimask.config import sized

    cfg = sized("tiny", vocab_size=200, dropout=0.0, attention_dropout=0.0, num_layers=2, relative_buckets=8)
    vocab = Vocab(size=200)
    ids = torch.randint(5, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = vocab.cls
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = PretrainModel(Encoder(cfg), OBJECTIVES["pmlm"](OBJECTIVES["pmlm"].Config(), cfg, vocab)).train()
        if compiled:
            assert compile_blocks(model) == 2
        batch = model.objective.corrupt(TokenBatch(ids), torch.Generator().manual_seed(1))
        out = model(batch)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)


def test_compile_blocks_compiles_every_block_and_nothing_else():
    """Encoder and generator blocks alike; the model and its parameter names stay as they were."""
    from unimask.config import sized

    cfg = sized("tiny", vocab_size=100, num_layers=2)
    model = PretrainModel(Encoder(cfg), OBJECTIVES["electra"](OBJECTIVES["electra"].Config(), cfg, Vocab(size=100)))
    names = [n for n, _ in model.named_parameters()]
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    out = parallelize(model, DistInfo(), "ddp", compile_model=True)
    assert out is model and [n for n, _ in model.named_parameters()] == names
    assert len(blocks) > cfg.num_layers                                  # the generator's too
    assert all("step" in vars(b) and hasattr(b.step, "_torchdynamo_orig_callable") for b in blocks)


def test_parallelize_sets_the_attention_kernel_of_every_block_stack():
    from unimask.config import sized

    cfg = sized("tiny", vocab_size=100, num_layers=2)
    model = PretrainModel(Encoder(cfg), OBJECTIVES["maelm"](OBJECTIVES["maelm"].Config(), cfg, Vocab(size=100)))
    parallelize(model, DistInfo(), "ddp", compile_model=False, attention="sdpa")
    stacks = [m for m in model.modules() if isinstance(m, BlockStack)]
    assert len(stacks) == 2 and {s.attention_kernel for s in stacks} == {"sdpa"}


def test_flex_training_is_refused_where_it_cannot_run(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, attention="flex")
    with pytest.raises(UserError, match="CUDA only"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def test_compile_without_a_cpp_compiler_is_one_line_before_the_run_starts(kjv_data, tmp_path, monkeypatch):
    """Inductor builds C++ for the CPU: with no compiler on the search path it would fail only at the
    first step, with a long trace. The run is refused before its directory is written."""
    import torch._inductor.config as inductor_config

    from unimask.train.parallel import compile_unavailable

    assert compile_unavailable(torch.device("cpu")) is None                # this machine has g++
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler-here",))
    assert "C++ compiler" in compile_unavailable(torch.device("cpu"))
    with pytest.raises(UserError, match=r"^train.compile=true: .*C\+\+ compiler.*train.compile=false$"):
        train(tiny_run_config(kjv_data, compile=True), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="C\\+\\+ compiler"):
        parallelize(torch.nn.Linear(2, 2), DistInfo(), "ddp", compile_model=True)


def test_adamw_is_fused():
    opt = build_optimizer(torch.nn.Linear(4, 4), 1e-3, (0.9, 0.98), 1e-6, 0.01)
    assert all(g["fused"] for g in opt.param_groups)


def test_pinned_batches_map_every_tensor(monkeypatch):
    """`TokenBatch.pin_memory` pins each tensor, extras included (what the loader does for CUDA)."""
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t.shape) or t.clone())
    batch = TokenBatch(torch.zeros(2, 3, dtype=torch.long), labels=torch.zeros(2, 3, dtype=torch.long),
                       extras={"x": torch.zeros(5)})
    out = batch.pin_memory()
    assert sorted(pinned) == sorted([(2, 3), (2, 3), (5,)]) and out.attention_mask is None
    assert torch.equal(out.extras["x"], batch.extras["x"]) and out.extras["x"] is not batch.extras["x"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_loader_pins_batches_for_cuda(kjv_data):
    from unimask.data.loader import Blocks, TrainLoader
    from unimask.data.store import TokenStore

    loader = TrainLoader(Blocks(TokenStore(kjv_data, "train"), 32, True), 4, 0, lambda b, rng: b, pin_memory=True)
    assert next(loader).input_ids.is_pinned()
