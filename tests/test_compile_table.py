"""benchmarks/compile_table.py --smoke (issue 20, part 2): the script behind the README's compile
table runs `unimask bench --compare-compile` per objective with an empty inductor cache and writes one
row each, with the decision the table's rule gives, so it can be rerun on a quiet machine."""

from __future__ import annotations

import json

import pytest

from conftest import run_benchmark


@pytest.mark.slow
def test_smoke_writes_one_row_per_objective_with_the_decision(tmp_path):
    out = tmp_path / "table.md"
    run_benchmark("compile_table.py", "--smoke", "--objectives", "mlm", "--out", str(out))
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert len(rows) == 1 and rows[0].startswith("| tiny | mlm |")
    result = json.loads(out.with_suffix(".json").read_text())["tiny/mlm"]
    assert result["compiled"]["compile"] is True and result["eager"]["compile"] is False
    ratio = result["ratio"]
    assert ratio["compile_s"] > 0 and ratio["paired"] > 0
    assert rows[0].endswith("| yes |" if ratio["paired"] <= 0.90 else "| no |")
