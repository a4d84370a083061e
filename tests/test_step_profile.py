"""benchmarks/step_profile.py (issue 20, part 3): the op-kind split behind the README's "why 3x is out
of reach" runs, classifies ops, and its bound is transformers' unprofiled step over unimask's matmul time."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT, run_benchmark

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_op_kinds():
    from step_profile import kind

    assert [kind(n) for n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::bernoulli_", "aten::copy_",
                              "aten::_fused_adamw_", "aten::native_layer_norm")] == \
        ["matmul", "matmul", "matmul", "dropout masks", "copies and casts", "optimizer", "other"]


@pytest.mark.slow
def test_tiny_profile_adds_up(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "profile.md"
    run_benchmark("step_profile.py", "--size", "tiny", "--batch", "4", "--seq", "16", "--dtype", "fp32",
                  "--steps", "2", "--warmup", "1", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    for engine in ("unimask", "transformers"):
        ms = result["ms_per_step"][engine]
        assert ms["matmul"] > 0 and result["unprofiled_ms_per_step"][engine] > 0
        assert sum(ms.values()) == pytest.approx(sum(result["ops_ms_per_step"][engine].values()), rel=1e-6)
    bound = result["unprofiled_ms_per_step"]["transformers"] / result["ms_per_step"]["unimask"]["matmul"]
    assert f"= {bound:.2f}x" in out.read_text()
