"""benchmarks/hf_compare_table.py --smoke (issue 20, part 3): the script behind the README's
transformers table runs hf_compare.py under both allocator settings and writes one row per setting,
so the table can be remeasured on a quiet machine without a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_writes_both_allocator_settings(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "table.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, str(ROOT / "benchmarks" / "hf_compare_table.py"), "--smoke", "--rows", "mini-fp32",
               "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tiny")]
    assert len(rows) == 2 and "trainer default" in rows[0] and "glibc default" in rows[1]
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["ratio"]["keep_freed_memory"] for r in results.values()] == [True, False]
    for r in results.values():
        assert r["unimask"]["tokens_per_s"] > 0 and r["transformers"]["tokens_per_s"] > 0
        assert r["ratio"]["tokens_per_s"] == pytest.approx(
            r["unimask"]["tokens_per_s"] / r["transformers"]["tokens_per_s"], rel=0.01)
