"""`unimask report DIR...`: pretrained models side by side, one row each, one column per task.

Every `results.json` that `unimask finetune` wrote under the given directories is read; a cell is the
median over the sweep's runs of the task's selection metric on its first dev split (the best run in
parentheses), and "average" is the mean over the tasks every row has. Rows are models (the --name of
`unimask finetune`, plus the head's pooling when it is not [CLS]), so `unimask report ft/mlm ft/electra
ft/random` compares three pretrainings.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ..errors import UserError


def collect(paths: list[str]) -> list[dict]:
    found = []
    for path in paths:
        root = Path(path).expanduser()
        if not root.exists():
            raise UserError(f"{root} does not exist; pass directories written by `unimask finetune`")
        files = [root] if root.is_file() else sorted(root.rglob("results.json"))
        for f in files:
            try:
                found.append(json.loads(f.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{f} is not valid JSON ({e}); re-run the fine-tuning that wrote it") from None
    if not found:
        raise UserError(f"no results.json under {', '.join(paths)}; run `unimask finetune` first")
    return found


def row_name(result: dict) -> str:
    """The model's name, plus the head's pooling when it is not BERT's [CLS] (so the two never share a cell)."""
    pooling = (result.get("task_options") or {}).get("pooling", "cls")
    return result["model"] + ("" if pooling == "cls" else f" ({pooling} pooling)")


def table(results: list[dict]) -> dict:
    """{"columns": [...], "rows": {model: {column: {"median", "best"}}}} with column = task (split metric)."""
    rows: dict[str, dict[str, dict]] = {}
    columns: list[str] = []
    for r in results:
        split = next(iter(r["summary"]))
        column = f"{r['task']} {r['metric']}" + (f" ({split})" if split != "dev" else "")
        if column not in columns:
            columns.append(column)
        rows.setdefault(row_name(r), {})[column] = r["summary"][split][r["metric"]]
    common = [c for c in columns if all(c in cells for cells in rows.values())]
    for cells in rows.values():
        if common:
            cells["average"] = {"median": statistics.fmean(cells[c]["median"] for c in common),
                                "best": statistics.fmean(cells[c]["best"] for c in common)}
    return {"columns": columns + (["average"] if common else []), "rows": rows, "average_over": common}


def markdown(t: dict) -> str:
    lines = ["| model | " + " | ".join(t["columns"]) + " |", "|---" * (1 + len(t["columns"])) + "|"]
    for model, cells in t["rows"].items():
        lines.append(f"| {model} | " + " | ".join(
            f"{cells[c]['median']:.2f} ({cells[c]['best']:.2f})" if c in cells else "" for c in t["columns"]) + " |")
    note = (f"\nCells: median over the sweep (best run). average: mean over {', '.join(t['average_over'])}.\n"
            if t["average_over"] else "\nCells: median over the sweep (best run).\n")
    return "\n".join(lines) + "\n" + note


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="DIR", help="directories (or results.json files) of `unimask finetune`")
    p.add_argument("--out", metavar="FILE", help="also write the table: FILE.md and FILE.json")


def run(args: argparse.Namespace) -> int:
    t = table(collect(args.paths))
    text = markdown(t)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps(t, indent=2))
    return 0
