"""benchmarks/budget_levers.py --smoke (issue 18, part 3): the lever study's script runs end to end at
tiny size (prepare, one-contestant arenas, probe, random-init floor) and writes its table, so the
hours-long run on a quiet machine cannot fail on a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_writes_a_row_per_variant_with_its_random_init_floor(tmp_path):
    shared = shared_data("corpus", "enwiki_sample.txt.gz").parents[1]
    shared_data("glue", "SST-2", "train.tsv")
    out = tmp_path / "levers"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, str(ROOT / "benchmarks" / "budget_levers.py"), "--smoke", "--shared", str(shared),
               "--work", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["variants"]) == ["base8k", "nodrop"]
    for name, variant in result["variants"].items():
        assert variant["steps"] > 0 and variant["tokens"] == variant["steps"] * 8 * 64
        assert set(variant["scores"]) == set(variant["random_scores"]) == {"probe:sst2", "probe:cola"}
    assert "model.dropout=0.0" in result["variants"]["nodrop"]["differences"]
    table = out.with_suffix(".md").read_text()
    assert "| base8k | vocabulary 512 |" in table and "| nodrop |" in table
    # a rerun reuses the finished arenas: nothing retrains, the table is the same
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert "arena: mlm: " in proc.stderr and "arena: evaluating mlm" in proc.stderr
    assert again.returncode == 0, again.stderr[-3000:]
    assert "arena: mlm: " not in again.stderr and "arena: evaluating" not in again.stderr
    assert json.loads(out.with_suffix(".json").read_text())["variants"] == result["variants"]
