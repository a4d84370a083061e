"""torchrun data parallelism: 2 gloo processes on the CPU == 1 process with twice the accumulation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_config
from test_train import overrides
from unimask.train import checkpoint as ckpt


def run(args: list[str], nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "unimask", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,objective", [("ddp", "mlm"), ("fsdp", "mlm"), ("fsdp", "pmlm")])
def test_two_processes_match_one_with_double_accumulation(kjv_data, tmp_path, strategy, objective):
    """PMLM under FSDP: its encoder runs in two calls through `Block.step` (objectives/pmlm.py)."""
    if shutil.which("torchrun") is None and not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    weights = {}
    for name, (nproc, accum) in {"single": (1, 2), strategy: (2, 1)}.items():
        cfg = tiny_run_config(kjv_data, steps=4, batch_size=4, grad_accum=accum, parallel=strategy,
                              save_every=2, keep_last=5)
        cfg.model.dropout = cfg.model.attention_dropout = 0.0
        if objective != "mlm":
            from unimask.objectives import OBJECTIVES
            cfg.objective_name, cfg.objective = objective, OBJECTIVES[objective].Config()
        run(["pretrain", "--out", str(tmp_path / name), "--quiet", *[f"--set={s}" for s in overrides(cfg)]], nproc)
        weights[name] = [load_file(str(p / "model.safetensors")) for p in ckpt.list_checkpoints(tmp_path / name)]
    for single, parallel in zip(weights["single"], weights[strategy], strict=True):   # steps 2 and 4
        assert single.keys() == parallel.keys()
        for k, v in single.items():
            torch.testing.assert_close(parallel[k], v, atol=1e-5, rtol=1e-4, msg=k)
    step2, step4 = weights[strategy]
    assert any(not torch.equal(step2[k], v) for k, v in step4.items())       # the weights did move
