"""torchrun data parallelism: 2 gloo processes on the CPU == 1 process with twice the accumulation."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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


def workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the unimask processes below the torchrun process `launcher` (Linux /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found = {}
    for pid in parent:
        ancestor = parent.get(pid)
        while ancestor not in (None, 0, 1, launcher):
            ancestor = parent.get(ancestor)
        if ancestor != launcher:
            continue
        try:
            variables = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            env = dict(v.split("=", 1) for v in variables if "=" in v)
        except OSError:
            continue
        if "RANK" in env and "unimask" in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
            found[int(env["RANK"])] = pid
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(kjv_data, tmp_path):
    """Only rank 1 gets the signal; the stop flag's all-reduce makes rank 0 stop after the same step, so
    the checkpoint is saved (rank 0 writes it, both take part) and no rank waits for the other."""
    from test_train import curve, wait_for_steps
    cfg = tiny_run_config(kjv_data, steps=400, batch_size=4, save_every=0)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "unimask", "pretrain", "--out", str(run_dir), "--quiet",
                             *[f"--set={s}" for s in overrides(cfg)]],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, run_dir, 3)
    ranks = workers(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    done = max(s for s, _ in curve(run_dir))
    assert done < 400, "the run finished before it could be stopped"
    assert proc.returncode != 0 and "exitcode  : 143" in err, err[-3000:]
    assert ckpt.list_checkpoints(run_dir) == [ckpt.step_dir(run_dir, done)]
    ckpt.verify(ckpt.step_dir(run_dir, done))
