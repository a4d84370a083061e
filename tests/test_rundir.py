"""A directory belongs to one process (locks), damaged inputs are named, a full disk is named (issue 19)."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

from conftest import tiny_run_config
from test_train import overrides
from unimask import rundir
from unimask.cli import main
from unimask.data.prepare import data_files
from unimask.errors import UserError
from unimask.train import checkpoint as ckpt
from unimask.train.loop import train

HOLDER = """
import contextlib, sys, time
from unimask.rundir import claim
with contextlib.ExitStack() as held:
    for out in sys.argv[1:]:
        held.enter_context(claim(out, "pretrain"))
    print("held", flush=True)
    time.sleep(600)
"""


def hold(*outs: Path) -> subprocess.Popen:
    """Another process that holds the locks of `outs` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, outs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def error_line(capsys, command: str, argv: list[str]) -> str:
    """Run `unimask ARGV` in this process; it must fail with exit status 2 and one line on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"unimask {command}: error: "), err
    return lines[0]


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` and its siblings: (size, mtime in ns)."""
    return {str(p.relative_to(directory.parent)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.parent.rglob("*")) if p.is_file()}


@pytest.fixture
def outputs(classifier, kjv_data, tmp_path):
    """{command: (its argv, the --out it writes)} for every command that writes a directory, each
    given an existing output (a copied run; a file under --overwrite) that it must not touch."""
    root = classifier[0].parent
    run = tmp_path / "run"
    shutil.copytree(root / "mlm", run)
    outs = {name: tmp_path / name / "out" for name in ("prepare", "finetune", "probe", "export", "analyze")}
    shutil.copytree(kjv_data, outs["prepare"])
    for name in ("finetune", "probe", "export", "analyze"):
        outs[name].mkdir(parents=True)
        (outs[name] / "keep.txt").write_text("an earlier output\n")
    data = ["--train", str(root / "train.tsv"), "--dev", str(root / "dev.tsv"), "--text-column", "text",
            "--label-column", "label", "--max-length", "24"]
    return {
        "pretrain": (["pretrain", "--out", str(run), "--resume", "--quiet", "--set", "train.steps=3"], run),
        "prepare": (["prepare", "--text", str(kjv_data.parent / "kjv150.txt"), "--out", str(outs["prepare"]),
                     "--vocab-size", "1000", "--valid-fraction", "0.05", "--overwrite"], outs["prepare"]),
        "finetune": (["finetune", "--checkpoint", str(run), "--task", "classify", *data, "--out", str(outs["finetune"]),
                      "--overwrite", "--quiet", "--epochs", "0.1"], outs["finetune"]),
        "probe": (["probe", "--checkpoint", str(run), "--task", "classify", *data, "--out", str(outs["probe"]),
                   "--overwrite", "--quiet"], outs["probe"]),
        "export": (["export", str(run), "--out", str(outs["export"]), "--overwrite"], outs["export"]),
        "analyze": (["analyze", "rank", str(run), "--out", str(outs["analyze"]), "--batches", "1"], outs["analyze"]),
    }


def test_a_directory_in_use_stops_every_command_and_a_dead_holders_lock_is_taken_over(outputs, capsys):
    holder = hold(*(out for _, out in outputs.values()))
    before = {name: snapshot(out) for name, (_, out) in outputs.items()}
    try:
        for name, (argv, out) in outputs.items():
            line = error_line(capsys, name, argv)
            assert f"{out.resolve()} is in use by pid {holder.pid} on host {socket.gethostname()}" in line, line
            assert f"holds the lock {rundir.lock_path(out)}" in line and "choose another --out" in line
            assert snapshot(out) == before[name], name            # nothing written, nothing removed
    finally:
        holder.send_signal(signal.SIGKILL)                         # as a crash would: the lock file stays
        holder.wait()
    for name in ("prepare", "pretrain"):
        argv, out = outputs[name]
        assert rundir.lock_path(out).is_file()
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert f"warning: taking over the lock {rundir.lock_path(out)}" in err
        assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "ended without releasing it" in err
        assert not rundir.lock_path(out).exists()                  # a run that ends removes its lock file
    assert [p.name for p in ckpt.list_checkpoints(outputs["pretrain"][1])] == ["step_00000002", "step_00000003"]


def test_a_lock_is_released_on_errors_and_a_waiting_claim_gets_it(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="in use by pid"):
        with rundir.claim(out, "prepare"):
            with rundir.claim(out, "prepare"):                     # another open file: flock refuses it
                pass
    assert not rundir.lock_path(out).exists()
    with rundir.claim(out, "prepare") as path:
        assert json.loads(path.read_text())["command"] == "prepare"
    with rundir.claim(out, "prepare", wait=True):
        pass


# ---------------------------------------------------------------- damaged inputs


def damage(path: Path, how: str) -> None:
    if how == "removed":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:                                                          # same size, one byte changed
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["removed", "truncated", "changed"])
@pytest.mark.parametrize("name", data_files(("train", "valid")))
def test_a_damaged_prepared_directory_is_one_line_naming_the_file(kjv_data, tmp_path, capsys, name, how):
    data = tmp_path / "data"
    shutil.copytree(kjv_data, data)
    damage(data / name, how)
    cfg = tiny_run_config(data, steps=1)
    line = error_line(capsys, "pretrain", ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet",
                                           *[f"--set={s}" for s in overrides(cfg) if not s.startswith("data.path")]])
    assert f"{data} is damaged: {name} " in line and "re-run `unimask prepare`" in line, line
    expected = {"removed": "is missing", "truncated": "bytes, not the", "changed": "does not match its checksum"}
    assert expected[how] in line
    assert not (tmp_path / "run").exists() and not rundir.lock_path(tmp_path / "run").exists()


def test_prepare_rebuilds_a_damaged_directory_of_the_same_inputs(kjv_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(kjv_data, data)
    (data / "tokenizer.json").unlink()
    argv = ["prepare", "--text", str(kjv_data.parent / "kjv150.txt"), "--out", str(data), "--vocab-size", "1000",
            "--valid-fraction", "0.05"]
    assert main(argv) == 0
    assert "tokenizer.json is missing (manifest.json lists it); preparing it again" in capsys.readouterr().out
    from unimask.data.store import TokenStore
    assert TokenStore(data).tokenizer().get_vocab_size() <= 1000
    manifest = json.loads((data / "manifest.json").read_text())
    assert set(manifest["files"]) == set(data_files(("train", "valid")))


def test_an_old_manifest_without_file_records_is_still_read_and_checked(kjv_data, tmp_path):
    from unimask.data.store import TokenStore
    data = tmp_path / "data"
    shutil.copytree(kjv_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["files"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert len(TokenStore(data, "valid")) == manifest["splits"]["valid"]["num_tokens"]
    (data / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        TokenStore(data)


CHECKPOINT_READERS = {   # command -> argv before the checkpoint (and after it)
    "finetune": (["finetune", "--task", "classify", "--checkpoint"], ["--train", "{root}/train.tsv", "--dev",
                 "{root}/dev.tsv", "--text-column", "text", "--label-column", "label", "--max-length", "24",
                 "--out", "{tmp}/ft"]),
    "probe": (["probe", "--task", "classify", "--checkpoint"], ["--train", "{root}/train.tsv", "--dev",
              "{root}/dev.tsv", "--text-column", "text", "--label-column", "label", "--max-length", "24",
              "--out", "{tmp}/probe"]),
    "export": (["export"], ["--out", "{tmp}/hf"]),
    "analyze": (["analyze", "rank"], ["--out", "{tmp}/rank"]),
}


@pytest.mark.parametrize("how", ["removed", "truncated"])
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_damaged_checkpoint_is_one_line_for_every_reader(classifier, tmp_path, capsys, name, how):
    root = classifier[0].parent
    run = tmp_path / "run"
    shutil.copytree(root / "mlm", run)
    damage(ckpt.latest_checkpoint(run) / name, how)
    for command, (before, after) in CHECKPOINT_READERS.items():
        argv = [*before, str(run), *(a.format(root=root, tmp=tmp_path) for a in after)]
        line = error_line(capsys, command, argv)
        assert f"is corrupted: {name} " in line and "delete that directory" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]          # no output was started


@pytest.mark.parametrize("how", ["removed", "truncated"])
@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "finetune.json"])
def test_a_damaged_finetuning_output_is_one_line_for_every_reader(classifier, tmp_path, capsys, name, how):
    ft, dev = classifier
    copy = tmp_path / "ft"
    shutil.copytree(ft, copy)
    damage(copy / "best" / name, how)
    readers = {"predict": ["predict", "--model", str(copy), "--input", str(dev), "--quiet"],
               "generate": ["generate", "--checkpoint", str(copy), "--input", str(dev)],
               "export": ["export", str(copy), "--out", str(tmp_path / "hf")]}
    for command, argv in readers.items():
        line = error_line(capsys, command, argv)
        assert name in line and ("fine-tune again" in line or "finetune" in line), line
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------- full disks


def disk_full(kind: str):
    """A safetensors writer that writes part of the file, then fails as a full disk does."""
    real = safetensors.torch.save_file

    def save_file(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        if kind == "safetensors":
            raise safetensors.SafetensorError("Error while serializing: I/O error: "
                                              "No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")
    return save_file


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one(kjv_data, tmp_path, capsys, monkeypatch, kind):
    run = tmp_path / "run"
    train(tiny_run_config(kjv_data, steps=2), run, progress=False)
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full(kind))
    capsys.readouterr()
    assert main(["pretrain", "--out", str(run), "--resume", "--quiet", "--set", "train.steps=4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()      # "resumed ... from step 2", the run summary, the error
    assert any(text.startswith("resumed ") for text in lines[:-1]), lines
    line = lines[-1]
    assert line.startswith("unimask pretrain: error: ")
    assert f"no space left for checkpoint step_00000004 in {run / 'checkpoints'}: it needs about " in line, line
    assert ") are free; the earlier checkpoints are intact" in line and "then --resume" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]     # no temporary directory
    ckpt.load_checkpoint(ckpt.latest_checkpoint(run))                                   # verified and loadable
    monkeypatch.undo()
    assert main(["pretrain", "--out", str(run), "--resume", "--quiet", "--set", "train.steps=4"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000004"]


def test_too_little_free_space_is_refused_before_writing(kjv_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(rundir, "_free", lambda directory: 4096)
    with pytest.raises(UserError, match=r"needs about [\d,]+ bytes \([\d.]+ MiB\), 4,096 bytes \(0.0 MiB\) are free"):
        train(tiny_run_config(kjv_data, steps=2), run, progress=False)
    assert not list((run / "checkpoints").iterdir())


def test_a_full_disk_during_an_export_leaves_nothing_behind(classifier, tmp_path, capsys, monkeypatch):
    run = classifier[0].parent / "mlm"
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full("safetensors"))
    line = error_line(capsys, "export", ["export", str(run), "--out", str(tmp_path / "hf")])
    assert f"no space left for the export {tmp_path / 'hf'} in {tmp_path}" in line, line
    assert "free some space or choose another --out" in line
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_finetuning_leaves_the_old_output(classifier, tmp_path, monkeypatch):
    from unimask.tasks.finetune import FinetuneConfig, load_pretrained, sweep
    from unimask.tasks.glue import user_task
    root = classifier[0].parent
    out = tmp_path / "ft"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier output\n")
    task = user_task("classify", str(root / "train.tsv"), str(root / "dev.tsv"), "text", "label")
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(1,), epochs=0.2, batch_size=16, precision="fp32", max_length=24)
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full("oserror"))
    with pytest.raises(UserError, match=f"no space left for the fine-tuning output {out} in {tmp_path}: "):
        sweep(task, load_pretrained(root / "mlm"), cfg, out, progress=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"] and (out / "keep.txt").is_file()
