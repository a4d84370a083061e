"""Everything distributed, applied to the model from outside: process groups, DDP / FSDP2, compile.

Nothing in model/ or objectives/ imports torch.distributed; the trainer calls these functions.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), else one process."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(device=torch.device("cuda" if want_cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", device_id=dev if want_cuda else None)
    return DistInfo(rank, world, local, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, info: DistInfo, strategy: str, compile_model: bool) -> nn.Module:
    """Wrap for data parallelism: "ddp" or "fsdp" (FSDP2 `fully_shard` per encoder block, then root)."""
    model.to(info.device)
    if info.world_size > 1:
        if strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

            for block in model.encoder.layers:
                fully_shard(block)
                # objectives that encode in pieces (PMLM) call Block.step: it must gather the shards too
                register_fsdp_forward_method(block, "step")
            fully_shard(model)
        else:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if compile_model:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain PretrainModel under compile / DDP wrappers (FSDP2 shards in place)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def gradient_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    inner = getattr(model, "_orig_mod", model)
    if hasattr(inner, "no_sync") and not sync:
        return inner.no_sync()
    if hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) on every rank -> (world*N, ...) in rank order; gradients flow back to each rank's part."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)
