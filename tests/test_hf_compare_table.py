"""benchmarks/hf_compare_table.py --smoke (issue 20, part 3): the script behind the README's
transformers table runs hf_compare.py under both allocator settings and writes one row per setting,
so the table can be remeasured on a quiet machine without a broken script."""

from __future__ import annotations

import json

import pytest

from conftest import run_benchmark


@pytest.mark.slow
def test_smoke_writes_both_allocator_settings(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "table.md"
    run_benchmark("hf_compare_table.py", "--smoke", "--rows", "mini-fp32", "--out", str(out))
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and "trainer default" in rows[0] and "glibc default" in rows[1]
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["ratio"]["keep_freed_memory"] for r in results.values()] == [True, False]
    for r in results.values():
        assert r["unimask"]["tokens_per_s"] > 0 and r["transformers"]["tokens_per_s"] > 0
        assert r["ratio"]["tokens_per_s"] == pytest.approx(
            r["unimask"]["tokens_per_s"] / r["transformers"]["tokens_per_s"], rel=0.01)
