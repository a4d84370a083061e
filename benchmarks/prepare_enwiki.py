"""Time `unimask prepare` end to end on the shared Wikipedia sample (target: < 90 s on 2 cores).

    python benchmarks/prepare_enwiki.py [--out DIR] [--vocab-size 30522]

Prints the wall time, peak resident memory and token counts. The output directory is rebuilt
(overwrite) on every run so that the timing always includes tokenizer training and encoding.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from unimask.data.prepare import PrepareConfig, prepare

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus" / "enwiki_sample.txt.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=str(CORPUS))
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "unimask-bench-enwiki"))
    parser.add_argument("--vocab-size", type=int, default=30522)
    args = parser.parse_args()

    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - start:7.1f}s  {message}", flush=True)

    cfg = PrepareConfig(vocab_size=args.vocab_size)
    manifest = prepare([args.text], args.out, cfg, overwrite=True, log=log)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train, valid = manifest["splits"]["train"], manifest["splits"]["valid"]
    print(
        f"prepare enwiki: {wall:.1f} s wall on {os.cpu_count()} cores, peak RSS {peak_mb:.0f} MB, "
        f"vocab {manifest['vocab_size']}, train {train['num_tokens']:,} tokens / {train['num_docs']:,} docs, "
        f"valid {valid['num_tokens']:,} tokens / {valid['num_docs']:,} docs -> {args.out}"
    )


if __name__ == "__main__":
    main()
