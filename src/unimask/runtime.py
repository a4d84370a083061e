"""One runtime for every command: the device, the precision and autocast, decided here.

`precision` is one name everywhere (pretrain's train.precision, finetune / predict --precision, bench
--dtype): "auto" (bf16 where it is faster: CUDA with bf16, CPUs with bf16 matmul instructions), "fp32"
or "bf16". Anything else is a one-line error, never a silent fp32. `device` is "auto" (CUDA when there
is one), "cpu", "cuda" or "cuda:N". The allocator setting is train/malloc.py's `keep_freed_memory_on`;
fp32 matmuls on CUDA use TensorFloat-32 (`tf32_matmuls`).
Multi-process training picks each rank's device in train/parallel.py (its local rank).

torch is imported by the functions that need it, so the commands' parsers (which read PRECISIONS)
answer `--help` without it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager

from .errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}     # x86 AVX512-BF16 / AMX-BF16 ("flags"), Arm BF16 ("Features")

_BF16_FASTER: dict[str, bool] = {}


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a one-line UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; "cpu", "cuda", "cuda:N" as given. A device that is
    not there (CUDA on a machine without it, a bad name) is a one-line UserError."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: this machine has no CUDA device; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (x86 `flags`, Arm `Features`) from /proc/cpuinfo; None where it is missing."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16, AMX-BF16, Arm BF16). Without them
    torch runs bf16 matmuls through fp32 conversions: slower than fp32, never faster. Where the flags
    cannot be read (not Linux), a bf16 GEMM that beats fp32 is taken as the answer."""
    flags = cpu_flags()
    if flags is None:
        return _cpu_bf16_matmul_faster()
    return bool(flags & BF16_CPU_FLAGS)


def _cpu_bf16_matmul_faster() -> bool:
    """A bf16 GEMM of BERT's shape beats fp32 by 20% on this CPU (measured once per process)."""
    import torch

    if "cpu" not in _BF16_FASTER:
        def clock(dtype):
            a, b = torch.randn(512, 768, dtype=dtype), torch.randn(768, 768, dtype=dtype)
            a @ b
            t = time.perf_counter()
            for _ in range(8):
                a @ b
            return time.perf_counter() - t
        _BF16_FASTER["cpu"] = clock(torch.bfloat16) < 0.8 * clock(torch.float32)
    return _BF16_FASTER["cpu"]


def bf16_is_faster(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 here (Ampere+ GPUs; CPUs with bf16 instructions whose bf16 GEMM
    measures faster)."""
    if device.type == "cuda":
        import torch
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16() and _cpu_bf16_matmul_faster()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": what `precision` means on `device` ("auto": bf16 where it is faster)."""
    if check_precision(precision) == "auto":
        return "bf16" if bf16_is_faster(device) else "fp32"
    return precision


def autocast_for(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the autocast context for `precision` on `device` (bf16 autocast or none)."""
    if resolve_precision(precision, device) == "bf16":
        import torch
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def tf32_matmuls(device: torch.device, enabled: bool = True) -> None:
    """fp32 matmuls on CUDA in TensorFloat-32 (Ampere and later: 10-bit mantissa products, fp32
    accumulation; what `precision=fp32` and autocast's fp32 regions get). Process-wide; the CPU keeps
    full fp32. `enabled=False` restores full precision (strict comparisons)."""
    if device.type == "cuda":
        import torch
        # the legacy switch: it keeps torch.get_float32_matmul_precision() answerable (inductor asks it),
        # which setting torch.backends.cuda.matmul.fp32_precision alone does not (torch 2.13)
        torch.backends.cuda.matmul.allow_tf32 = enabled
