"""Everything applied to the model from outside: process groups, DDP / FSDP2, regional compile, the
attention kernel.

Nothing in model/ or objectives/ imports torch.distributed; the trainer calls these functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


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
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), else one process.

    Under torchrun the group is joined even with one process (`--nproc-per-node 1`), so FSDP runs its
    real code path (DTensor parameters, sharded state dicts) on a single device too."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and "RANK" not in os.environ:
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


def parallelize(model: nn.Module, info: DistInfo, strategy: str, compile_model: bool,
                attention: str = "auto") -> nn.Module:
    """Everything applied to the model from outside, in this order: TF32 matmuls on CUDA
    (`runtime.tf32_matmuls`), the attention kernel of every block stack (`set_attention_kernel` in
    model/encoder.py: "auto", "sdpa" or "flex"), regional compilation (`compile_blocks`), then
    data parallelism: "fsdp" (FSDP2 `fully_shard` per encoder block, then the root; also for one
    process under torchrun) or "ddp" (more than one process). Returns the model to call: the same
    object, except under DDP."""
    from ..model.encoder import set_attention_kernel
    from ..runtime import tf32_matmuls

    tf32_matmuls(info.device)
    if compile_model:
        check_compile(info.device)
    model.to(info.device)
    set_attention_kernel(model, attention)
    if compile_model:
        compile_blocks(model)
    if strategy == "fsdp" and dist.is_initialized():
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in model.encoder.layers:
            fully_shard(block)
            # objectives that encode in pieces (PMLM) call Block.step: it must gather the shards too
            register_fsdp_forward_method(block, "step")
        fully_shard(model)
    elif info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    return model


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for `device`, or None. Inductor writes C++ for the CPU
    (it needs a C++ compiler: $CXX, else g++) and Triton for CUDA; without them it fails only at the
    first step, with a long trace."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        return None if has_triton() else "torch.compile on CUDA needs Triton (pip install triton)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:                                     # a torch that moved it: look for the default
        found = shutil.which(os.environ.get("CXX", "g++"))
    else:
        try:
            found = get_cpp_compiler()
        except Exception:                                   # torch._inductor.exc.InvalidCxxCompiler
            found = None
    return None if found else ("torch.compile on the CPU needs a C++ compiler: install g++ "
                               "(apt install g++) or point $CXX at one")


def check_compile(device: torch.device) -> None:
    """Raise a one-line UserError when train.compile=true cannot work on `device`."""
    if missing := compile_unavailable(device):
        raise UserError(f"train.compile=true: {missing}; or set train.compile=false")


def compile_blocks(model: nn.Module) -> int:
    """Regional compilation: `torch.compile` each Transformer block (encoder, generators, decoders),
    not the whole model. Blocks of one shape share their compiled code (the parameters are inputs),
    so compiling costs about one block's graph per shape; what runs between the blocks (embeddings,
    masks, the objectives' heads, sampling, losses) stays eager and free to change shape.

    The block's `step` is compiled, as an attribute of the instance: `Block.forward` calls it, and so
    do the objectives that encode in pieces (PMLM) and FSDP's registered forward method. Returns the
    number of blocks compiled."""
    from ..model.encoder import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    device = next(model.parameters()).device
    for block in blocks:
        block.step = torch.compile(block.step, options=compile_options(device))
    return len(blocks)


def compile_options(device: torch.device) -> dict:
    """Inductor options of the compiled blocks. On the CPU, dropout draws its masks with ATen's
    random ops, as eager does (`fallback_random`): inductor's own CPU random generator made every
    objective's compiled step 3-9% slower than eager, with ATen's they are 0-5% faster
    (benchmarks/results/compile_table_*.md), and the masks are eager's. CUDA keeps inductor's."""
    return {"fallback_random": True} if device.type == "cpu" else {}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain PretrainModel under a DDP wrapper (FSDP2 shards in place, compile is per block)."""
    return getattr(model, "module", model)


def gradient_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
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
