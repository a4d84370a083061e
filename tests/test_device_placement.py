"""What a CUDA run needs that a CPU run cannot show: every tensor an objective's forward makes lives on
the model's device. On the CPU a tensor made without `device=` lands on the same device by luck; on
CUDA `torch.stack` / `torch.cat` of it with a CUDA tensor fail ("Expected all tensors to be on the
same device"). The test makes such tensors visible: forward and backward run with meta as the
default device while the model and the batch are on the CPU, so a factory call without a device
makes a meta tensor, and mixing it with the model's fails here as it would on CUDA."""

from __future__ import annotations

import pytest
import torch

from unimask.config import sized
from unimask.model.encoder import Encoder
from unimask.objectives import OBJECTIVES, PretrainModel, TokenBatch, Vocab


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_forward_makes_no_tensor_off_the_model_device(name, padded):
    cfg = sized("tiny", vocab_size=200, num_layers=2, relative_buckets=8)
    vocab = Vocab(size=200)
    ids = torch.randint(5, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = vocab.cls
    mask = None
    if padded:
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[1, 20:] = mask[3, 9:] = False
        ids = ids.masked_fill(~mask, vocab.pad)
    torch.manual_seed(0)
    model = PretrainModel(Encoder(cfg), OBJECTIVES[name](OBJECTIVES[name].Config(), cfg, vocab)).train()
    batch = model.objective.corrupt(TokenBatch(ids, attention_mask=mask), torch.Generator().manual_seed(1))
    with torch.device("meta"):
        out = model(batch)
        out.loss.backward()
    assert out.loss.device.type == "cpu" and all(v.device.type == "cpu" for v in out.metrics.values())
    assert all(p.grad is None or p.grad.device.type == "cpu" for p in model.parameters())
