"""One way for the benchmark scripts to write what they measured: OUT.md (the table a person reads,
what the README links) and OUT.json (every figure, for the next comparison), rewritten whole each time
so a script that saves after every row keeps what it measured if it is stopped."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, results: dict, text: str) -> None:
    """`text` to OUT.md and `results` to OUT.json (indented), creating OUT's folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
