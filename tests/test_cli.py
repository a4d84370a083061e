"""The command line: one-line errors with exit code 2, help, and a tiny successful pretraining run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_run_config
from test_train import overrides
from unimask import __version__
from unimask.cli import COMMANDS, main
from unimask.recipes import RECIPES
from unimask.train import checkpoint as ckpt


def one_error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("unimask pretrain: error: "), err
    return lines[0]


def test_bad_override_key(capsys, tmp_path):
    line = one_error_line(capsys, ["pretrain", "--out", str(tmp_path / "r"), "--set", "train.stepz=3"])
    assert "train.stepz" in line and "train.steps" in line
    assert not (tmp_path / "r").exists()                  # nothing is created for a bad command


def test_bad_override_value(capsys, tmp_path):
    line = one_error_line(capsys, ["pretrain", "--out", str(tmp_path / "r"), "--set", "train.steps=abc"])
    assert "train.steps=abc" in line and "int" in line
    line = one_error_line(capsys, ["pretrain", "--out", str(tmp_path / "r"), "--set", "train.steps"])
    assert "KEY=VALUE" in line


def test_missing_data(capsys, tmp_path):
    line = one_error_line(capsys, ["pretrain", "--out", str(tmp_path / "r"), "--quiet", "--data", "/nonexistent"])
    assert "/nonexistent" in line and "unimask prepare" in line


def test_resume_without_checkpoint(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_error_line(capsys, ["pretrain", "--out", str(tmp_path / "empty"), "--resume"])
    assert "--resume" in line and "no checkpoint" in line
    line = one_error_line(capsys, ["pretrain", "--out", str(tmp_path / "missing"), "--resume"])
    assert "no checkpoint" in line


def test_unknown_recipe_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--recipe", "no_such_recipe"])
    assert info.value.code != 0
    assert "no_such_recipe" in capsys.readouterr().err


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrian"])
    assert info.value.code != 0


@pytest.mark.parametrize("argv,expect", [(["--help"], "pretrain"), (["pretrain", "--help"], "--recipe")])
def test_help(capsys, argv, expect):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unimask") and expect in out


def test_help_version_and_recipes_answer_without_importing_torch():
    """Issue 21: arguments are parsed before torch is imported, so every `--help` answers at once."""
    src = Path(__file__).resolve().parents[1] / "src"
    script = f"""
import sys
sys.path.insert(0, {str(src)!r})
from unimask.cli import COMMANDS, main
for argv in [["--version"], ["pretrain", "--list-recipes"], ["analyze", "rank", "--help"]] + [[c, "--help"] for c in COMMANDS]:
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
    print("=== torch imported after", argv, "=", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("=== torch imported after") == len(COMMANDS) + 3
    assert "= True" not in done.stdout, done.stdout


def test_version_list_recipes_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"unimask {__version__}"
    with pytest.raises(SystemExit):
        main(["pretrain", "--list-recipes"])
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == list(RECIPES)
    assert all(len(line.split(maxsplit=1)) == 2 for line in listing)               # a description on each
    assert "demo" in listing[0] and "5 minutes" in listing[0]
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for shown in ("--epochs EPOCHS passes over the training data (fractions allowed) (default: 3.0)",
                  "(default: 0.0001)", "--batch-size BATCH_SIZE training examples per step (default: 32)",
                  "--beam BEAM beam size (1 = greedy) (default: 5)", "--precision {auto,fp32,bf16}"):
        assert shown in out


def test_an_unknown_flag_names_the_subcommand(capsys):
    """`finetune --resume` is argparse's error, but from `unimask finetune`, not a bare `unimask`."""
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--checkpoint", "x", "--task", "sst2", "--resume"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "unimask finetune: error: unrecognized arguments: --resume; see unimask finetune --help"
    with pytest.raises(SystemExit):
        main(["finetune", "--checkpoint", "x", "--task", "sst2", "--max-lenght", "64"])
    assert "(did you mean --max-length?)" in capsys.readouterr().err


def test_old_flag_names_still_work_with_a_warning(capsys):
    """Generated tokens are --max-new-tokens everywhere; the old names store into it and say so."""
    from unimask.cli import build_parser
    cases = {"finetune": (["--task", "seq2seq"], "--max-gen-length"), "generate": (["--input", "-"], "--max-length"),
             "predict": (["--input", "-"], "--max-length")}
    for command, (needed, old) in cases.items():
        args = build_parser(command).parse_args([command, "--checkpoint", "x", *needed, old, "7"])
        assert args.max_new_tokens == 7
        assert f"warning: {old} is deprecated and will go; use --max-new-tokens" in capsys.readouterr().err


def test_pretrain_runs_and_writes_a_checkpoint(kjv_data, tmp_path, capsys):
    cfg = tiny_run_config(kjv_data, steps=3)
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "--quiet"]
    for s in overrides(cfg):
        args += ["--set", s]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "done: 3 steps" in err
    latest = ckpt.latest_checkpoint(out)
    assert latest.name == "step_00000003"
    assert (latest / "model.safetensors").is_file()
    saved = json.loads((latest / "config.json").read_text())
    assert saved["train"]["steps"] == 3 and saved["model"]["hidden_size"] == 32
    assert saved["data"]["path"] == str(kjv_data)
    # a second start in the same directory is refused with one line, pointing at --resume
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unimask pretrain: error:") and "--resume" in lines[0]


def test_ctrl_c_says_what_each_command_kept(kjv_data, tmp_path, capsys, monkeypatch):
    """Issue 21: `--resume` is offered only where a checkpoint exists; other commands say nothing was written."""
    import unimask.train.loop as loop

    cfg = tiny_run_config(kjv_data, steps=2, save_every=2)
    args = ["pretrain", "--out", str(tmp_path / "run"), "--quiet"] + [a for s in overrides(cfg) for a in ("--set", s)]

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(loop, "train", interrupt)
        assert main(args) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written yet" in err and "--resume" not in err
    assert main(args) == 0                                        # now there is a checkpoint at step 2
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(loop, "train", interrupt)
        assert main(args + ["--resume"]) == 130
    err = capsys.readouterr().err
    assert "step_00000002, is intact; continue with" in err and "--resume" in err
    with monkeypatch.context() as m:
        import unimask.tasks.finetune as ft
        m.setattr(ft, "sweep", interrupt)
        (tmp_path / "d.tsv").write_text("text\tlabel\na\tx\nb\ty\n")
        assert main(["finetune", "--checkpoint", str(tmp_path / "run"), "--task", "classify", "--train",
                     str(tmp_path / "d.tsv"), "--dev", str(tmp_path / "d.tsv"), "--text-column", "text",
                     "--label-column", "label", "--max-length", "32"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; no output was written" in err and "--resume" not in err
