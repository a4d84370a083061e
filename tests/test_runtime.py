"""One runtime: precision names and devices are checked in one place, for every command."""

from __future__ import annotations

import pytest
import torch

from unimask.errors import UserError
from unimask.runtime import autocast_for, check_precision, resolve_device


def test_an_unknown_precision_is_an_error_not_a_silent_fp32() -> None:
    with pytest.raises(UserError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        autocast_for("fp16", torch.device("cpu"))
    assert check_precision("bf16") == "bf16"
    with autocast_for("bf16", torch.device("cpu"))():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast_for("fp32", torch.device("cpu"))():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_devices_are_resolved_or_refused_in_one_line() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="'tpu' is not a device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")


def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path, monkeypatch) -> None:
    from unimask import runtime

    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    old = tmp_path / "avx2"
    old.write_text("flags\t\t: fpu sse avx avx2 fma\n")
    assert "amx_bf16" in runtime.cpu_flags(intel) and "bf16" in runtime.cpu_flags(arm)
    assert runtime.cpu_flags(tmp_path / "missing") is None
    read = runtime.cpu_flags
    for path, has in ((intel, True), (arm, True), (old, False)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda p=path: read(p))
        assert runtime.cpu_has_bf16() is has
    # the capability check is one function: without bf16 instructions "auto" is fp32, whatever a GEMM measures
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"      # asked for: kept
    with runtime.autocast_for("auto", torch.device("cpu"))():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
