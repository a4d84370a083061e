"""`unimask plot RUN...`: the loss and accuracy curves of pretraining runs, in one PNG.

    unimask plot runs/demo                      # -> runs/demo/curves.png
    unimask plot runs/mlm runs/electra --out runs/mlm-vs-electra.png

Reads each run's metrics.jsonl (train and valid records) and config.json. Four panels: the loss
(train as a thin line, valid as dots) and every accuracy the objective logs (the `*_acc` figures:
mlm_acc for MLM and MAE-LM, rtd_acc for ELECTRA, ...), each against optimizer steps (top) and
against training tokens (bottom: steps x tokens per step, which compares runs of different batch
sizes). Needs matplotlib (`pip install 'unimask[plot]'`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

from .errors import UserError


def read_run(run_dir: Path) -> dict:
    """{"name", "tokens_per_step", "train": [records], "valid": [records]} of a run directory."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; pass a `unimask pretrain` run directory")
    records = []
    for number, line in enumerate(metrics.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{metrics}:{number} is not a JSON record") from None
    return {"name": run_dir.resolve().name, "tokens_per_step": _tokens_per_step(run_dir, records),
            "train": [r for r in records if r.get("split", "train") == "train"],
            "valid": [r for r in records if r.get("split") == "valid"]}


def _tokens_per_step(run_dir: Path, records: list[dict]) -> int | None:
    """From a train record's `tokens` (all processes), else config.json's batch x accumulation x length."""
    for r in records:
        if r.get("tokens") and r.get("step"):
            return round(r["tokens"] / r["step"])
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        return cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * cfg["data"]["seq_len"]
    except (OSError, ValueError, KeyError):
        return None


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "step" in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot(runs: list[dict], out: Path) -> Path:
    """Write the curves of `runs` (from `read_run`) to `out` (a PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracies = sorted({k for run in runs for r in run["train"] + run["valid"] for k in r if k.endswith("_acc")})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(runs):
        color, per_step = colors[i % len(colors)], run["tokens_per_step"]
        for row, scale in enumerate([1, per_step]):
            if scale is None:
                continue
            loss_ax, acc_ax = axes[row]
            for split, style in (("train", {"linewidth": 0.8, "alpha": 0.6}), ("valid", {"marker": "o"})):
                steps, values = _series(run[split], "loss")
                loss_ax.plot([s * scale for s in steps], values, color=color, label=f"{run['name']} {split}", **style)
            for j, key in enumerate(accuracies):
                for split, style in (("train", {"linewidth": 0.8, "alpha": 0.6}), ("valid", {"marker": "o"})):
                    steps, values = _series(run[split], key)
                    if steps:
                        acc_ax.plot([s * scale for s in steps], values, color=color, linestyle=styles[j % len(styles)],
                                    label=f"{run['name']} {split} {key}", **style)
    for row, xlabel in enumerate(["optimizer steps", "training tokens"]):
        axes[row][0].set(xlabel=xlabel, ylabel="loss", title=f"loss (train line, valid dots) vs {xlabel}")
        axes[row][1].set(xlabel=xlabel, ylabel="accuracy", title=f"accuracy (train line, valid dots) vs {xlabel}")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("unimask plot needs matplotlib: pip install 'unimask[plot]' (or pip install matplotlib)")
    dirs = [Path(p).expanduser() for p in args.runs]
    runs = [read_run(d) for d in dirs]
    if not any(run["train"] or run["valid"] for run in runs):
        raise UserError("the runs' metrics.jsonl hold no records yet; plot them after a few steps")
    out = Path(args.out).expanduser() if args.out else (dirs[0] / "curves.png" if len(dirs) == 1 else
                                                        Path("runs") / "curves.png")
    plot(runs, out)
    last = [f"{run['name']}: step {run['valid'][-1]['step']}, valid loss {run['valid'][-1]['loss']:.3f}"
            for run in runs if run["valid"] and run["valid"][-1].get("loss") is not None]
    print(f"wrote {out}" + (f" ({'; '.join(last)})" if last else ""))
    return 0
