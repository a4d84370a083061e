"""End to end: train, save, kill -9, resume, and get the same loss curve; checkpoint safety."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_config
from unimask import config as config_mod
from unimask.errors import UserError
from unimask.rundir import file_records
from unimask.train import checkpoint as ckpt
from unimask.train.loop import MetricsLog, train


def curve(run: Path, split: str = "train") -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == split]


def strict_records(path: Path) -> list[dict]:
    """The records of a JSONL file, parsed as strict JSON (no NaN / Infinity), split at "\\n" only."""
    def refuse(token: str):
        raise ValueError(f"{path} holds {token}, which is not JSON")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.split("\n")[:-1]]


def overrides(cfg) -> list[str]:
    """The --set list that turns the demo recipe into `cfg` (used to drive the CLI)."""
    out = [f"objective_name={cfg.objective_name}"]
    for part in ("model", "objective", "data", "train"):
        for k, v in vars(getattr(cfg, part)).items():
            if v is not None:
                out.append(f"{part}.{k}={v}")
    return out


def cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unimask", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_loss_falls_and_checkpoint_is_complete(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, steps=60, batch_size=8, lr=3e-3, save_every=20, keep_last=2,
                          eval_every=30, eval_batches=20)         # 160 held-out blocks: a steady comparison
    last = train(cfg, tmp_path / "run", progress=False)
    losses = [l for _, l in curve(tmp_path / "run")]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    valid = curve(tmp_path / "run", "valid")
    assert [s for s, _ in valid] == [30, 60] and valid[1][1] < valid[0][1]
    assert {"loss", "mlm_acc", "mlm_ppl"} <= set(last)
    kept = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step_00000040", "step_00000060"]          # keep_last=2
    files = {p.name for p in kept[-1].iterdir()}
    assert files == {"model.safetensors", "train_state.safetensors", "train_state.json", "config.json",
                     "tokenizer.json", "meta.json"}
    weights = load_file(str(kept[-1] / "model.safetensors"))
    assert any(k.startswith("encoder.layers.1.") for k in weights) and "objective.head.bias" in weights
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_resume_after_kill_9_reproduces_the_loss_curve(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, steps=60, save_every=5, keep_last=3, eval_every=20)
    cfg.model.dropout = 0.1                       # resume must restore the dropout RNG too
    train(cfg, tmp_path / "straight", progress=False)

    killed = tmp_path / "killed"
    args = ["pretrain", "--out", str(killed), "--quiet", *[f"--set={s}" for s in overrides(cfg)]]
    proc = cli(args)
    first = killed / "checkpoints" / "step_00000005"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = max(s for s, _ in curve(killed))
    assert done < 60

    resumed = cli(["pretrain", "--out", str(killed), "--resume", "--quiet"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed" in err
    assert curve(killed) == curve(tmp_path / "straight")
    assert curve(killed, "valid") == curve(tmp_path / "straight", "valid")
    a = load_file(str(ckpt.latest_checkpoint(killed) / "model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def wait_for_steps(proc: subprocess.Popen, run: Path, steps: int) -> None:
    """Until metrics.jsonl has `steps` train records (the loop is running), or the process ended."""
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len(curve(run)) >= steps:
            return
        time.sleep(0.002)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_reproduces_the_loss_curve(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, steps=60, save_every=0, eval_every=20)      # no checkpoint but the final one
    cfg.model.dropout = 0.1
    train(cfg, tmp_path / "straight", progress=False)

    stopped = tmp_path / "stopped"
    proc = cli(["pretrain", "--out", str(stopped), "--quiet", *[f"--set={s}" for s in overrides(cfg)]])
    wait_for_steps(proc, stopped, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    done = max(s for s, _ in curve(stopped))
    assert done < 60, "the run finished before it could be stopped"
    (saved,) = ckpt.list_checkpoints(stopped)
    assert saved == ckpt.step_dir(stopped, done)
    ckpt.verify(saved)
    assert f"SIGTERM received: stopping after step {done}, saving a checkpoint" in err
    assert err.strip().splitlines()[-1] == (f"unimask pretrain: stopped by SIGTERM after step {done}; saved the "
                                            f"checkpoint {saved}; continue with `unimask pretrain --out {stopped} "
                                            "--resume`")
    assert not (stopped.parent / ".stopped.lock").exists()

    resumed = cli(["pretrain", "--out", str(stopped), "--resume", "--quiet"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert curve(stopped) == curve(tmp_path / "straight")
    assert curve(stopped, "valid") == curve(tmp_path / "straight", "valid")
    a = load_file(str(ckpt.latest_checkpoint(stopped) / "model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def signal_at(monkeypatch, step: int, *signums: int, during_save: int | None = None) -> None:
    """Send `signums` to this process right after optimizer step `step`, and `during_save` while the
    next checkpoint is written (as a scheduler that signals twice)."""
    import os
    from unimask.train import loop

    real_step, real_save, calls = loop.train_step, ckpt.save_checkpoint, []

    def train_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return result

    def save_checkpoint(*args, **kwargs):
        if during_save is not None:
            os.kill(os.getpid(), during_save)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", train_step)
    monkeypatch.setattr(ckpt, "save_checkpoint", save_checkpoint)


def test_ctrl_c_saves_and_a_signal_during_the_save_waits(kjv_data, tmp_path, monkeypatch):
    from unimask.errors import Stopped
    signal_at(monkeypatch, 3, signal.SIGINT, during_save=signal.SIGINT)
    with pytest.raises(Stopped, match="stopped by SIGINT after step 3") as info:
        train(tiny_run_config(kjv_data, steps=8), tmp_path / "run", progress=False)
    assert info.value.exit_status == 130
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000003"]   # no .tmp-*
    ckpt.verify(ckpt.latest_checkpoint(tmp_path / "run"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler          # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_second_ctrl_c_aborts_without_saving(kjv_data, tmp_path, monkeypatch):
    signal_at(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run_config(kjv_data, steps=8), tmp_path / "run", progress=False)
    assert ckpt.list_checkpoints(tmp_path / "run") == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_after_the_last_step_finishes_the_run(kjv_data, tmp_path, monkeypatch):
    signal_at(monkeypatch, 4, signal.SIGTERM)
    last = train(tiny_run_config(kjv_data, steps=4), tmp_path / "run", progress=False)
    assert last["step"] == 4 and [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000004"]


def test_gradient_accumulation_matches_one_big_batch(kjv_data):
    """Global target-count normalisation: two accumulated micro-batches give the update of their
    concatenation, even when they hold different numbers of masked tokens (whole-word masking)."""
    from contextlib import nullcontext as no_autocast
    from unimask.data.loader import Blocks, TrainLoader
    from unimask.data.store import TokenStore
    from unimask.model.encoder import Encoder
    from unimask.objectives import OBJECTIVES, PretrainModel, TokenBatch, Vocab
    from unimask.train.optim import build_optimizer
    from unimask.train.parallel import DistInfo
    from unimask.train.loop import train_step

    cfg = tiny_run_config(kjv_data)
    cfg.model.dropout = cfg.model.attention_dropout = 0.0
    cfg.objective.masking = "whole_word"
    store = TokenStore(kjv_data)
    cfg.model.vocab_size = store.vocab_size
    vocab = Vocab(size=store.vocab_size, word_start=store.word_start_mask())
    loader = TrainLoader(Blocks(store, 32, True), 4, 0, OBJECTIVES["mlm"](cfg.objective, cfg.model, vocab).corrupt)
    a = next(loader)
    b = next(b for b in loader if b.labels.ne(-100).sum() != a.labels.ne(-100).sum())
    both = TokenBatch(torch.cat([a.input_ids, b.input_ids]), labels=torch.cat([a.labels, b.labels]))
    weights = []
    for batches in ([a, b], [both]):
        torch.manual_seed(0)
        model = PretrainModel(Encoder(cfg.model), OBJECTIVES["mlm"](cfg.objective, cfg.model, vocab))
        opt = build_optimizer(model, 1e-3, (0.9, 0.98), 1e-6, 0.01)
        params = list(model.parameters())
        result = train_step(model, opt, batches, no_autocast, DistInfo(), params, clip_norm=0.0)
        weights.append((result.loss, [p.detach().clone() for p in params]))
    assert weights[0][0] == pytest.approx(weights[1][0], rel=1e-6)
    for x, y in zip(weights[0][1], weights[1][1]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_run_dir_with_checkpoints_is_protected(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, steps=2)
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_run_config(kjv_data, steps=2), tmp_path / "run", progress=False)
    other = tiny_run_config(kjv_data, steps=4)
    other.model.hidden_size, other.model.intermediate_size = 64, 128
    with pytest.raises(UserError, match="another model.*hidden_size"):
        train(other, tmp_path / "run", resume=True, progress=False)
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(UserError, match="train.steps=1 is below .*step 2"):      # a shorter run would re-save
        train(tiny_run_config(kjv_data, steps=1), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "config.json").read_text() == saved
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert before == ["step_00000002"]


def test_corrupted_checkpoint_is_reported(kjv_data, tmp_path):
    train(tiny_run_config(kjv_data, steps=2), tmp_path / "run", progress=False)
    latest = ckpt.latest_checkpoint(tmp_path / "run")
    data = bytearray((latest / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (latest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupted.*model.safetensors"):
        train(tiny_run_config(kjv_data, steps=4), tmp_path / "run", resume=True, progress=False)
    proc = cli(["pretrain", "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "corrupted" in err


def test_checkpoint_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "loader": {"next_index": 7}}
    path = ckpt.save_checkpoint(tmp_path, 3, model.state_dict(), state, {"a": 1}, None, keep_last=1)
    weights, restored, config = ckpt.load_checkpoint(path)
    assert restored["step"] == 3 and restored["loader"] == {"next_index": 7} and config == {"a": 1}
    assert torch.equal(restored["rng"]["torch"], state["rng"]["torch"])
    assert torch.equal(restored["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(restored["optimizer"])
    assert torch.equal(weights["weight"], model.weight.detach())
    assert "pickle" not in (path / "train_state.json").read_text()


def test_saved_config_round_trips(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, steps=2)
    train(cfg, tmp_path / "run", progress=False)
    saved = config_mod.from_dict(ckpt.load_config(ckpt.latest_checkpoint(tmp_path / "run")))
    assert saved.to_dict() == cfg.to_dict()


def test_time_budget_stops_with_an_evaluation_and_a_checkpoint(kjv_data, tmp_path):
    cfg = tiny_run_config(kjv_data, steps=1000, time_budget_minutes=1e-6)
    last = train(cfg, tmp_path / "run", progress=False)
    assert last["step"] == 1
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000001"]


# ---------------------------------------------------------------- metrics.jsonl and empty evaluations


def test_metrics_log_writes_non_finite_values_as_null_with_the_reason(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    log.write({"split": "train", "step": 1, "loss": math.nan, "grad_norm": math.inf, "lr": 1e-3,
               "extra": {"a": -math.inf, "b": 2.0}})
    log.write({"split": "train", "step": 2, "loss": 3.5, "grad_norm": 0.25, "lr": 1e-3})
    log.close()
    first, second = strict_records(tmp_path / "metrics.jsonl")
    assert first == {"split": "train", "step": 1, "loss": None, "grad_norm": None, "lr": 1e-3,
                     "extra": {"a": None, "b": 2.0},
                     "nonfinite": {"loss": "nan", "grad_norm": "inf", "extra.a": "-inf"}}
    assert second == {"split": "train", "step": 2, "loss": 3.5, "grad_norm": 0.25, "lr": 1e-3}


def test_truncate_after_splits_lines_at_newline_only_and_cleans_old_nan(tmp_path):
    """A record may hold U+2028 (str.splitlines breaks there); a file from an older run may hold NaN;
    a kill during a write may leave a torn last line."""
    path = tmp_path / "metrics.jsonl"
    rows = [{"split": "train", "step": 1, "loss": 2.0, "note": "a\u2028b\x85c"},
            {"split": "valid", "step": 2, "loss": float("nan")},
            {"split": "train", "step": 3, "loss": 1.0}]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + '\n{"split": "train", "st', encoding="utf-8")
    assert "NaN" in lines[1] and "\u2028" in lines[0]
    log = MetricsLog(tmp_path, enabled=True)
    log.truncate_after(2)
    log.close()
    cleaned = {"split": "valid", "step": 2, "loss": None, "nonfinite": {"loss": "nan"}}
    assert strict_records(path) == [rows[0], cleaned]


def with_valid_split(data: Path, out: Path, ids: list[int]) -> Path:
    """A copy of the prepared directory `data` whose valid split is the one document `ids` (none if empty)."""
    shutil.copytree(data, out)
    np.array(ids, np.uint16).tofile(out / "valid.bin")
    np.save(out / "valid.idx.npy", np.array([0, len(ids)] if ids else [0], np.int64))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["valid"] = {"num_tokens": len(ids), "num_docs": int(bool(ids))}
    manifest["files"].update(file_records(out, ["valid.bin", "valid.idx.npy"]))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(("valid_ids", "blocks"), [([3], 1), ([], 0)], ids=["lone-sep", "empty"])
def test_evaluation_with_nothing_to_score_says_so(kjv_data, tmp_path, capsys, valid_ids, blocks):
    """A valid split that is a lone [SEP] (what prepare kept for a document of zero-width spaces) or
    empty has no target: no made-up loss of 0, no NaN in metrics.jsonl (issue 15, fault 5)."""
    data = with_valid_split(kjv_data, tmp_path / "data", valid_ids)
    last = train(tiny_run_config(data, steps=2, eval_every=1), tmp_path / "run", progress=False)
    expected = {"split": "valid", "blocks": blocks, "targets": 0, "loss": None, "reason": "nothing to score"}
    assert last == {"step": 2, **expected}
    records = strict_records(tmp_path / "run" / "metrics.jsonl")
    assert [r for r in records if r["split"] == "valid"] == [{"step": 1, **expected}, {"step": 2, **expected}]
    assert all(isinstance(r["loss"], float) for r in records if r["split"] == "train")
    err = capsys.readouterr().err
    plural = "" if blocks == 1 else "s"
    assert f"step 1: valid: nothing to score ({blocks} block{plural}, 0 target tokens)" in err
    assert re.search(rf"done: 2 steps in [0-9.]+ min; valid: nothing to score \({blocks} block{plural}, 0 target tokens\)",
                     err)
    assert "valid loss" not in err
