"""`unimask arena` (issue 18): equal-FLOP budgets within one step, a tiny two-objective arena end to
end (runs, evaluations at each point, random-init floor, markdown, JSON, PNGs), resume after an
interrupt without retraining or rescoring, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import keyword_rows
from unimask import arena
from unimask.cli import main
from unimask.errors import UserError

TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
        "model.max_positions=64", "train.precision=fp32", "train.device=cpu", "train.log_every=1",
        "train.eval_batches=1"]


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    """An SST-2-shaped folder (sentence<TAB>label, labels 0/1): does the sentence say 'moses'?"""
    root = tmp_path_factory.mktemp("glue")
    rows = keyword_rows(240, lambda i: 4 + i % 7)
    (root / "SST-2").mkdir()
    for name, part in (("train.tsv", rows[:160]), ("dev.tsv", rows[160:])):
        (root / "SST-2" / name).write_text("sentence\tlabel\n" + "".join(f"{t}\t{int(y == 'yes')}\n" for t, y in part))
    return root


def config(**kw) -> arena.ArenaConfig:
    values = dict(objectives=("mlm", "electra"), tflops=0.002, points=2, seq_len=32, batch_size=4, overrides=tuple(TINY))
    return arena.ArenaConfig(**{**values, **kw})


def test_equal_flops_within_one_step(kjv_data, tmp_path) -> None:
    """Every objective's steps x FLOPs per step lands within one of its steps below the budget; the
    per-step count is bench's; warm-up and checkpoints follow each run's own length."""
    import torch

    from unimask.bench import objective_flops_per_token, predicted_fraction, random_batches
    from unimask.objectives import OBJECTIVES, Vocab

    cfg = config(objectives=("mlm", "electra", "cocolm", "maelm", "pmlm"), tflops=0.01, points=4)
    found = arena.contestants(cfg, kjv_data, tmp_path)
    budget = cfg.tflops * 1e12
    per_step = {c.objective: c.flops_per_step for c in found}
    assert len(set(per_step.values())) == 5                         # the objectives cost differently
    for c in found:
        assert c.steps * c.flops_per_step <= budget < (c.steps + 1) * c.flops_per_step, c.objective
        t = c.config.train
        assert (t.steps, t.warmup_steps, t.schedule, t.min_lr_ratio) == (c.steps, round(0.06 * c.steps), "linear", 0.0)
        assert t.save_at == c.points and c.points[-1] == c.steps and len(c.points) == 4
        assert t.save_every == max(1, c.steps // 10) and t.time_budget_minutes == 0    # a hard kill loses <= 1/10
        assert c.points == tuple(round(c.steps * k / 4) for k in range(1, 5))
        assert (c.config.data.seq_len, t.batch_size, t.seed, c.config.model.hidden_size) == (32, 4, 0, 32)
        model = c.config.model.__class__(**{**c.config.model.__dict__, "vocab_size": 1000})
        vocab = Vocab(size=1000)
        torch.manual_seed(0)
        objective = OBJECTIVES[c.objective](c.config.objective, model, vocab)
        batches = random_batches(objective, vocab, 4, 32, 4, 0, torch.device("cpu"))
        expected = objective_flops_per_token(objective, model, 32, predicted_fraction(batches, 4 * 32))[0] * 4 * 32
        assert c.flops_per_step == pytest.approx(expected, rel=1e-9)
    assert "generator" in next(c for c in found if c.objective == "electra").differences


def test_tiny_arena_end_to_end_and_resume(kjv_data, glue, tmp_path, monkeypatch) -> None:
    """Two objectives, two evaluation points each, probe + fine-tuning; each contestant is scored as
    soon as its run ends and the report then shows it (in progress); interrupted while the second
    is scored, the rerun retrains nothing, rescoring only what was missing, and writes the report."""
    out = tmp_path / "arena"
    ev = arena.EvalConfig(glue=str(glue), probe=("sst2",), finetune=("sst2",), lrs=(1e-3,), seeds=(1, 2), epochs=1,
                          max_train_examples=0, precision="fp32", device="cpu")
    real_score, calls = arena.score, []

    def interrupted(pretrained, ev_):
        calls.append(pretrained.name)
        if len(calls) == 4:                 # mlm's two points, its floor, then electra's first point
            raise KeyboardInterrupt
        return real_score(pretrained, ev_)

    monkeypatch.setattr(arena, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        arena.run_arena(config(), ev, kjv_data, out, say=lambda *a: None)
    trained = {name: (out / "runs" / name / "metrics.jsonl").read_text() for name in ("mlm", "electra")}
    cached = sorted(p.relative_to(out).as_posix() for p in (out / "evals").rglob("*.json"))
    assert len(cached) == 3 and all(p.startswith("evals/mlm/step_") for p in cached[:2])
    assert cached[2] == "evals/random_init/mlm.json"
    partial = json.loads((out / "arena.json").read_text())
    assert not partial["finished"] and {r["objective"] for r in partial["rows"]} == {"mlm", "random init"}
    assert "In progress: 1 of 2 contestants scored" in (out / "arena.md").read_text()

    calls.clear()
    monkeypatch.setattr(arena, "score", lambda p, e: (calls.append(p.name), real_score(p, e))[1])
    result = arena.run_arena(config(), ev, kjv_data, out, say=lambda *a: None)
    assert {name: (out / "runs" / name / "metrics.jsonl").read_text() for name in trained} == trained  # not retrained
    assert result["finished"] and "In progress" not in (out / "arena.md").read_text()
    rows = result["rows"]
    assert [(r["objective"], round(r["fraction"], 1)) for r in rows if r["objective"] != "random init"] == \
        [("mlm", 0.5), ("mlm", 1.0), ("electra", 0.5), ("electra", 1.0)]
    floors = [r for r in rows if r["objective"] == "random init"]      # one per distinct architecture
    assert all(r["tflops"] == 0 and r["step"] == 0 for r in floors)
    assert len(floors) == 1 and len(calls) == 2      # electra's two points; mlm's and the floor were cached
    for r in rows:
        assert set(r["scores"]) == {"probe:sst2", "finetune:sst2"}
        assert all(0 <= v <= 100 for v in r["scores"].values())
    budget = 0.002e12
    for name, c in result["contestants"].items():
        last = next(r for r in rows if r["objective"] == name and r["step"] == c["steps"])
        assert last["tflops"] * 1e12 <= budget < last["tflops"] * 1e12 + c["flops_per_step"]
        assert last["minutes"] > 0 and last["valid_loss"] is not None
    md = (out / "arena.md").read_text()
    assert "| objective | config |" in md and "| random init |" in md and "probe:sst2" in md
    assert (out / "arena_flops.png").stat().st_size > 1000 and (out / "arena_time.png").stat().st_size > 1000
    assert json.loads((out / "arena.json").read_text())["rows"] == json.loads(json.dumps(rows))


def test_arena_refusals(kjv_data, glue, tmp_path, capsys) -> None:
    base = ["arena", "--data", str(kjv_data), "--out", str(tmp_path / "a"), "--glue", str(glue), "--probe", "sst2",
            "--objectives", "mlm", "electra", "--seq-len", "32", "--batch-size", "4", *[f"--set={s}" for s in TINY]]
    cases = [
        (["--tflops", "1", "--minutes", "1"], "give one budget: --tflops or --minutes"),
        (["--tflops", "1", "--set", "train.steps=5"], "the arena sets train.steps itself"),
        (["--tflops", "1e-9"], "give at least 4 steps' worth"),
        (["--tflops", "1", "--objectives", "mlm", "nope"], "unknown objective 'nope'"),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(UserError, match="nothing to evaluate"):
        arena.EvalConfig(glue=str(glue))
    with pytest.raises(UserError, match="stsb is a regression task"):
        (glue / "STS-B").mkdir(exist_ok=True)
        (glue / "STS-B" / "train.tsv").write_text("x\n")
        arena.EvalConfig(glue=str(glue), probe=("stsb",))


@pytest.mark.slow
def test_side_by_side_jobs_calibrate_train_score_and_resume_alone(kjv_data, glue, tmp_path) -> None:
    """--jobs 2: both contestants are timed side by side, then trained and scored in two worker
    processes; a rerun with one job finds the runs and the scores and redoes none of them."""
    timed = arena.contestants(config(tflops=0.0, minutes=1.0, calibration_steps=3), kjv_data, tmp_path / "t", jobs=2)
    assert [c.objective for c in timed] == ["mlm", "electra"] and not (tmp_path / "t" / "calibration").exists()
    for c in timed:
        assert c.seconds_per_step > 0 and c.steps == int(60 / c.seconds_per_step)

    out = tmp_path / "arena"
    ev = arena.EvalConfig(glue=str(glue), probe=("sst2",), max_train_examples=0, precision="fp32", device="cpu")
    result = arena.run_arena(config(), ev, kjv_data, out, say=lambda *a: None, jobs=3)     # 2 objectives: 2 jobs
    assert result["jobs"] == 2 and result["threads_per_job"] >= 1
    for name, c in result["contestants"].items():
        assert [r["step"] for r in result["rows"] if r["objective"] == name] == c["points"]
        assert (out / "runs" / name / "checkpoints" / f"step_{c['steps']:08d}").is_dir()
        assert all((out / "evals" / name / f"step_{step:08d}.json").is_file() for step in c["points"])
    assert sum(r["objective"] == "random init" for r in result["rows"]) == 1     # one architecture, one floor
    assert "ran 2 contestants side by side" in (out / "arena.md").read_text()
    trained = {name: (out / "runs" / name / "metrics.jsonl").read_text() for name in ("mlm", "electra")}

    scored = []
    real_score = arena.score
    arena.score = lambda p, e: (scored.append(p.name), real_score(p, e))[1]
    try:
        again = arena.run_arena(config(), ev, kjv_data, out, say=lambda *a: None, jobs=1)
    finally:
        arena.score = real_score
    assert scored == [] and again["rows"] == result["rows"] and again["contestants"] == result["contestants"]
    assert {name: (out / "runs" / name / "metrics.jsonl").read_text() for name in trained} == trained
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        arena.run_arena(config(), ev, kjv_data, out, say=lambda *a: None, jobs=0)
    other = arena.EvalConfig(glue=str(glue), probe=("sst2",), finetune=("sst2",), max_train_examples=0, device="cpu")
    with pytest.raises(UserError, match="holds an arena with other settings"):     # old scores would be reused
        arena.run_arena(config(), other, kjv_data, out, say=lambda *a: None)


@pytest.mark.slow
def test_sigterm_to_a_side_by_side_arena_saves_the_running_and_starts_no_more(kjv_data, glue, tmp_path) -> None:
    """SIGTERM to the arena's process (a scheduler's preemption) while two contestants train side by
    side: both save a checkpoint, the third never starts, `Stopped` says to rerun; the rerun
    continues both and runs the third."""
    import os
    import signal
    import threading
    import time

    from unimask.errors import Stopped

    out = tmp_path / "arena"
    cfg = config(objectives=("mlm", "electra", "maelm"), tflops=0.04)
    ev = arena.EvalConfig(glue=str(glue), probe=("sst2",), max_train_examples=0, precision="fp32", device="cpu")

    def preempt() -> None:             # once both runs have logged a training step
        deadline = time.time() + 300
        while time.time() < deadline:
            logs = [out / "runs" / name / "metrics.jsonl" for name in ("mlm", "electra")]
            if all(p.is_file() and '"train"' in p.read_text() for p in logs):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    threading.Thread(target=preempt, daemon=True).start()
    with pytest.raises(Stopped, match="stopped by SIGTERM.*rerun the same command") as caught:
        arena.run_arena(cfg, ev, kjv_data, out, say=lambda *a: None, jobs=2)
    assert caught.value.exit_status == 143
    saved = {name: sorted((out / "runs" / name / "checkpoints").glob("step_*")) for name in ("mlm", "electra")}
    assert all(saved.values()) and not (out / "runs" / "maelm").exists()
    result = arena.run_arena(cfg, ev, kjv_data, out, say=lambda *a: None, jobs=2)
    assert result["finished"] and {r["objective"] for r in result["rows"]} == {"mlm", "electra", "maelm", "random init"}


def test_a_run_that_stops_short_is_named_not_scored(kjv_data, tmp_path, monkeypatch) -> None:
    """A contestant whose training returns before its last step (a signal, a crash caught upstream)
    is a one-line error that says to rerun, not a failure to find a checkpoint later."""
    from unimask.train import loop

    c = arena.contestants(config(objectives=("mlm",)), kjv_data, tmp_path)[0]
    monkeypatch.setattr(loop, "train", lambda *a, **k: None)
    with pytest.raises(UserError, match=rf"mlm stopped at step 0 of {c.steps}; rerun the same command"):
        arena.train_contestant(c, say=lambda *a: None)
    assert c.config.train.time_budget_minutes == 0         # the arena's steps are fixed: nothing refits them


def test_a_signal_stop_says_to_rerun_the_arena_and_crosses_processes(kjv_data, tmp_path, monkeypatch) -> None:
    """A contestant stopped by SIGTERM/SIGINT (it saved a checkpoint) says to rerun the arena, not
    `pretrain --resume`; the exception survives pickling, as a --jobs worker sends it to the parent."""
    import pickle

    from unimask.errors import Stopped
    from unimask.train import loop

    c = arena.contestants(config(objectives=("mlm",)), kjv_data, tmp_path)[0]

    def stopped(*a, **k):
        raise Stopped(15, "stopped by SIGTERM after step 3; continue with `unimask pretrain --resume`")

    monkeypatch.setattr(loop, "train", stopped)
    with pytest.raises(Stopped) as caught:
        arena.train_contestant(c, say=lambda *a: None)
    assert "mlm stopped on a signal" in str(caught.value) and "rerun the same command" in str(caught.value)
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), again.signum, str(again), again.exit_status) == (Stopped, 15, str(caught.value), 143)


def test_ctrl_c_while_scoring_says_what_is_kept(kjv_data, glue, tmp_path, capsys, monkeypatch) -> None:
    """Ctrl-C outside a training loop (here: while scoring) exits 130 and says the finished runs and
    scores are kept and to run the command again, not that nothing was written."""
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(arena, "score", interrupt)
    out = tmp_path / "a"
    args = ["arena", "--data", str(kjv_data), "--out", str(out), "--glue", str(glue), "--probe", "sst2",
            "--objectives", "mlm", "--tflops", "0.001", "--seq-len", "32", "--batch-size", "4",
            *[f"--set={s}" for s in TINY]]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"the finished runs and scores in {out} are kept; run it again" in err
    assert (out / "runs" / "mlm" / "checkpoints").is_dir()
