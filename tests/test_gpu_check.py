"""benchmarks/gpu_check.py --device cpu --smoke: every part of the GPU session's check runs at tiny
sizes on the CPU and writes its JSON and markdown, so the script is known to work before a GPU is lent.
It reads the shared data as the GPU machine will: from the folder benchmarks/gpu_check_pack.py packs
(../shared does not travel there), with its work files outside the results folder."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT, SHARED_DATA, run_benchmark, shared_data


@pytest.mark.slow
def test_smoke_runs_every_part_and_writes_the_report(tmp_path):
    shared_data("corpus", "enwiki_sample.txt.gz")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check_pack import pack_data

    pack_data(SHARED_DATA, tmp_path / "pack", corpus_chars=150_000)
    out, work = tmp_path / "check", tmp_path / "work"
    proc = run_benchmark("gpu_check.py", "--device", "cpu", "--smoke", "--out", str(out), "--work", str(work),
                         "--shared", str(tmp_path / "pack"))
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]       # what comes back
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["correctness", "throughput", "transformers", "pretrain", "finetune"]
    assert all(p["status"] == "ok" for p in parts.values()), {n: (p["status"], p.get("note")) for n, p in parts.items()}
    figures = {name: p["figures"] for name, p in parts.items()}
    checks = {(f["objective"], f["check"].split()[0]) for f in figures["correctness"]}
    assert {(o, "fp32") for o in ("mlm", "electra", "cocolm", "maelm", "pmlm")} | {("mlm", "compiled")} <= checks
    assert all(f["ok"] for f in figures["correctness"]) and all(f["bf16_finite"] for f in figures["correctness"]
                                                                 if "bf16_finite" in f)
    rates = [f for f in figures["throughput"] if "tokens_per_s" in f]
    assert {f["objective"] for f in rates} == {"mlm", "electra", "cocolm", "maelm", "pmlm"}
    assert all(f["tokens_per_s"] > 0 and 0 < f["mfu"] <= 1 for f in rates)
    assert figures["transformers"][-1]["engine"] == "unimask / transformers"
    runs = {f["run"].split(",")[0].split(" ")[0]: f for f in figures["pretrain"]}
    assert runs["resume"]["exact"] is True and runs["torchrun"]["ok"] is True       # the CPU resumes exactly
    assert "step_" in runs["mlm_tiny"]["checkpoints"]
    generated = [f for f in figures["finetune"] if f["run"].startswith("generate")]
    assert len(generated) == 2 and all(f["sentences_per_s"] > 0 for f in generated)
    assert all(isinstance(f["same_outputs"], bool) for f in generated)               # reported, never failed
    markdown = (out / "gpu_check.md").read_text()
    assert "## pretrain: ok" in markdown and "| objective |" in markdown
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sum("status" in r for r in printed) == 5 and len(printed) > 20          # each figure as it goes
