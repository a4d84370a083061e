"""benchmarks/budget_levers.py --smoke (issue 18, part 3): the lever study's script runs end to end at
tiny size (prepare, one-contestant arenas, probe, random-init floor) and writes its table, so the
hours-long run on a quiet machine cannot fail on a broken script."""

from __future__ import annotations

import json

import pytest

from conftest import run_benchmark, shared_data


@pytest.mark.slow
def test_smoke_writes_a_row_per_variant_with_its_random_init_floor(tmp_path):
    shared = shared_data("corpus", "enwiki_sample.txt.gz").parents[1]
    shared_data("glue", "SST-2", "train.tsv")
    out = tmp_path / "levers"
    args = ("--smoke", "--shared", str(shared), "--work", str(tmp_path / "work"), "--out", str(out))
    proc = run_benchmark("budget_levers.py", *args)
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["variants"]) == ["base8k", "nodrop"]
    for name, variant in result["variants"].items():
        assert variant["steps"] > 0 and variant["tokens"] == variant["steps"] * 8 * 64
        assert set(variant["scores"]) == set(variant["random_scores"]) == {"probe:sst2", "probe:cola"}
    assert "model.dropout=0.0" in result["variants"]["nodrop"]["differences"]
    table = out.with_suffix(".md").read_text()
    assert "| base8k | vocabulary 512 |" in table and "| nodrop |" in table
    # a rerun reuses the finished arenas: nothing retrains, the table is the same
    again = run_benchmark("budget_levers.py", *args)
    assert "arena: mlm: " in proc.stderr and "arena: evaluating mlm" in proc.stderr
    assert "arena: mlm: " not in again.stderr and "arena: evaluating" not in again.stderr
    assert json.loads(out.with_suffix(".json").read_text())["variants"] == result["variants"]
