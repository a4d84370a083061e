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
