"""`unimask predict` throughput: sentences per second of a fine-tuned mini classifier.

Protocol (fixed before running):
- a mini encoder (4 layers, hidden 256) pretrained for 20 steps on the built-in corpus (its weights do
  not change the speed), fine-tuned on the first 256 SST-2 training sentences for 1 epoch, max_length 128;
- `unimask predict` on SST-2 test.tsv (1,821 sentences) with --batch-size 64, each precision in
  --precisions, 2 threads (torch's default here), the model loaded once per call;
- rows/s = rows / the time `predict` reports for featurizing + the model (loading excluded), best of
  --repeats, fp32 and bf16 interleaved in one process.

    python benchmarks/predict_speed.py --work /tmp/predict_speed
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

from unimask.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"


def _run(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        sys.exit(f"unimask {argv[0]} failed:\n{err.getvalue()}")
    return err.getvalue()


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/predict_speed"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = args.work
    if not (work / "mlm").is_dir():
        _run(["pretrain", "--out", str(work / "mlm"), "--set", "train.steps=20", "--set", "train.save_every=20",
              "--set", "train.eval_every=0", "--quiet"])
    if not (work / "ft" / "best").is_dir():
        _run(["finetune", "--checkpoint", str(work / "mlm"), "--task", "sst2", "--data", str(SHARED),
              "--max-train-examples", "256", "--epochs", "1", "--max-length", "128", "--quiet",
              "--out", str(work / "ft")])
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for precision in args.precisions:
            log = _run(["predict", "--model", str(work / "ft"), "--input", str(SHARED / "test.tsv"),
                        "--batch-size", "64", "--precision", precision, "--device", "cpu", "--quiet",
                        "--output", str(work / f"pred-{precision}.tsv")])
            rate = float(re.search(r"\(([\d.]+) rows/s", log).group(1))
            best[precision] = max(best.get(precision, 0.0), rate)
            print(f"{precision}: {rate:.1f} rows/s", flush=True)
    print("best: " + ", ".join(f"{p} {r:.1f} rows/s" for p, r in best.items()))


if __name__ == "__main__":
    main_()
