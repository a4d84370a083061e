"""Issue 21, a new user's first hour: the default job fits its time budget and says what it did, the
files it writes follow the umask, and `unimask plot` draws the curves."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import keyword_rows, tiny_run_config
from unimask.cli import main
from unimask.recipes import DEMO_MINUTES, RECIPES
from unimask.train import loop
from unimask.train.summary import busy_machine_hint, fit_steps_to_budget, unigram_baseline


def test_the_steps_that_fit_a_budget():
    # 20 steps took 30 s; 1 s a step from now on, evaluations cost 3 s every 100 steps and once at the end
    assert fit_steps_to_budget(20, 30.0, 1.0, 300.0, cap=600, eval_s=3.0, eval_every=100) == 20 + int(267 / 1.03)
    assert fit_steps_to_budget(20, 30.0, 0.1, 300.0, cap=600) == 600                  # a fast machine: the cap
    assert fit_steps_to_budget(20, 400.0, 1.0, 300.0, cap=600) == 20                   # over already: stop now


def test_the_unigram_baseline_of_masked_tokens():
    specials = [0, 1]
    train = np.array([0, 5, 5, 5, 7, 1, 0, 5, 7, 9, 1])       # ordinary tokens: 5 x4, 7 x2, 9 x1
    valid = np.array([0, 5, 7, 7, 9, 1])                       # ordinary tokens: 5, 7, 7, 9
    base = unigram_baseline(train, valid, vocab_size=10, special_ids=specials, token_of=lambda i: f"t{i}")
    assert base.top_token == "t5" and base.accuracy == pytest.approx(1 / 4)
    p = (np.array([0, 0, 0, 0, 0, 4, 0, 2, 0, 1]) + 1.0) / (7 + 8)                   # add-one over 8 ordinary ids
    assert base.cross_entropy == pytest.approx(-(np.log(p[5]) + 2 * np.log(p[7]) + np.log(p[9])) / 4)
    assert unigram_baseline(train, np.array([0, 1]), 10, specials) is None


def test_a_busy_machine_is_named_with_what_helps():
    assert "load 7.9 on 2 cores: OMP_NUM_THREADS=1" in busy_machine_hint(7.9, 2, threads=2)
    assert busy_machine_hint(0.3, 2, threads=2) == busy_machine_hint(7.9, 2, threads=1) == ""


def test_the_default_job_is_fitted_to_its_budget():
    demo = RECIPES["demo"]()
    assert demo.train.time_budget_minutes == DEMO_MINUTES and demo.train.budget_calibration_steps > 0
    assert demo.objective_name == "mlm" and demo.data.path == ""          # the built-in corpus


def test_a_run_fitted_to_its_budget_ends_its_schedule_and_says_what_it_did(kjv_data, tmp_path, capsys, monkeypatch):
    """Every few steps the step count becomes what fits at the run's pace so far (forced here: 12 of at
    most 40 at step 4, then 18 from step 7 on, as if the machine sped up): warm-up follows in proportion,
    the lr reaches 0 at the last count, config.json and the checkpoint hold it; the run says what it
    trains on and, at the end, what its figures mean and what to run next."""
    fits = iter([12, 18])
    monkeypatch.setattr(loop, "fit_steps_to_budget", lambda done, *a, **k: next(fits, 18))
    cfg = tiny_run_config(kjv_data, steps=40, warmup_steps=8, time_budget_minutes=60, budget_calibration_steps=3)
    run = tmp_path / "run"
    loop.train(cfg, run, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 19)) and train[-1]["lr"] == 0.0
    assert train[-1]["tokens"] == 18 * 4 * 32                           # steps x batch x length
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["steps"], saved["warmup_steps"]) == (18, 4)           # 8/40 of it
    assert json.loads((run / "checkpoints" / "step_00000018" / "config.json").read_text())["train"]["steps"] == 18
    err = capsys.readouterr().err
    assert re.search(r"step 4: 12 steps fit the 60-minute budget at [0-9.]+ s a step so far \(warm-up 2\)", err)
    assert re.search(r"step 7: 18 steps fit the 60-minute budget at [0-9.]+ s a step so far \(warm-up 4\)", err)
    assert err.count("steps fit the") == 2                              # refits at steps 10, 13, 16: no news
    for said in (f"data      {kjv_data}", "model     mlm on a tiny encoder: 2 layers x 32 wide",
                 "device    cpu, fp32 (train.precision=fp32), ", " thread", f"run dir   {run}",
                 "refitted every 3 steps to a 60-minute budget", "done: 18 steps in ",
                 "masked-token cross-entropy", "knowing only token frequencies gives",
                 "mlm_acc", "always guessing the most frequent token", "checkpoints/step_00000018",
                 f"unimask plot {run}", f"unimask finetune --checkpoint {run}", "unimask predict --model",
                 f"unimask export {run}"):
        assert said in err, said


def test_the_default_precision_on_a_cpu_without_bf16_is_fp32_and_says_why(kjv_data, tmp_path, capsys, monkeypatch):
    """precision auto (the default job's) on a CPU without bf16 instructions trains in fp32 and the
    start summary names the reason; with them, the summary says bf16 (or that it was not faster)."""
    from unimask import runtime

    for has_bf16 in (False, True):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda has=has_bf16: has)
        cfg = tiny_run_config(kjv_data, steps=1, warmup_steps=0)
        cfg.train.precision = "auto"
        loop.train(cfg, tmp_path / f"run-{has_bf16}", progress=False)
        err = capsys.readouterr().err
        if has_bf16:
            assert re.search(r"device    cpu, (bf16 \(auto: bf16 matmuls are faster here\)|fp32 \(auto: bf16 is not "
                             r"faster here\))", err), err
        else:
            assert "device    cpu, fp32 (auto: this CPU has no bf16 instructions (AVX512-BF16, AMX))" in err, err


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_every_output_follows_the_umask(kjv_data, tmp_path, umask_027):
    """safetensors writes 0600; checkpoints, fine-tuned models and exports must be readable as the umask says."""
    pytest.importorskip("transformers")
    run = tmp_path / "run"
    loop.train(tiny_run_config(kjv_data, steps=2, save_every=1), run, progress=False)
    rows = keyword_rows(40, lambda i: 6)
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    assert main(["finetune", "--checkpoint", str(run), "--task", "classify", "--train", str(tmp_path / "d.tsv"),
                 "--dev", str(tmp_path / "d.tsv"), "--text-column", "text", "--label-column", "label",
                 "--max-length", "16", "--epochs", "1", "--precision", "fp32", "--quiet",
                 "--out", str(tmp_path / "ft")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(tmp_path / "ft"), "--out", str(tmp_path / "hf-ft")]) == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "d.tsv"]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) >= 6                     # 2 checkpoints x 2, best/, two exports
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(umask_027)}, modes


@pytest.mark.slow
def test_plot_draws_the_curves_of_runs(kjv_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for name in ("a", "b"):
        loop.train(tiny_run_config(kjv_data, steps=4, eval_every=2), tmp_path / name, progress=False)
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "a")]) == 0
    png = tmp_path / "a" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install 'unimask[plot]'" in capsys.readouterr().err


def test_the_readme_names_every_train_key_and_command():
    """The README's `train.*` list is every TrainConfig field, and every command appears as `unimask CMD`."""
    import dataclasses

    from unimask.cli import COMMANDS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    bullet = readme[readme.index("  * `train.*`"):]
    bullet = bullet[:bullet.index("\n* ")]
    missing = {f.name for f in dataclasses.fields(loop.TrainConfig)} - set(re.findall(r"`(\w+)`", bullet))
    assert not missing, f"README's train.* list lacks {sorted(missing)}"
    assert all(f"unimask {command}" in readme for command in COMMANDS)
