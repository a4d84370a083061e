"""Generation throughput of a seq2seq fine-tuned model: greedy and beam search, with and without
key/value reuse, on the same sources (sentences/s, one JSON line per setting).

    python benchmarks/generation_speed.py --checkpoint runs/qg --input ../shared/data/qg/src-test.txt --n 256

Settings run interleaved in rounds (`--rounds`), so machine noise hits each alike; the outputs of
the cached and uncached decoders are compared (they must be identical).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unimask.tasks.base import SpecialIds
from unimask.tasks.decoding import GenerationConfig, generate
from unimask.tasks.generate import load_finetuned
from unimask.tasks.seq2seq import decoder_ids, featurize_sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--n", type=int, default=256, help="sources (the first N lines)")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=0, help="most generated tokens (0: as fine-tuned)")
    args = ap.parse_args()

    encoder, head, tokenizer, meta = load_finetuned(args.checkpoint)
    options = meta.get("task_options") or {}
    saved = options.get("generation", {})
    max_length = args.max_length or saved.get("max_length") or int(options.get("max_target_length", 48)) - 1
    special = SpecialIds.of(tokenizer)
    lines = open(args.input, encoding="utf-8").read().splitlines()[:args.n]
    sources = featurize_sources(lines, tokenizer, special, int(options.get("max_source_length", 128)))
    ids = decoder_ids(special, encoder.config)
    settings = [(beam, cache) for beam in args.beams for cache in (True, False)]
    times: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    outputs: dict[tuple[int, bool], list] = {}
    for _ in range(args.rounds):
        for beam, cache in settings:
            cfg = GenerationConfig(**{**saved, "beam_size": beam, "kv_cache": cache})
            started = time.perf_counter()
            with torch.inference_mode():
                outputs[(beam, cache)] = generate(encoder, head, sources, ids, cfg, max_length,
                                                  batch_size=args.batch_size, pad_id=special.pad,
                                                  device=torch.device("cpu"),
                                                  banned=(special.pad, special.cls, special.mask))
            times[(beam, cache)].append(time.perf_counter() - started)
    for beam, cache in settings:
        seconds = statistics.median(times[(beam, cache)])
        print(json.dumps({"beam": beam, "kv_cache": cache, "sentences": len(sources), "threads": torch.get_num_threads(),
                          "sentences_per_s": round(len(sources) / seconds, 2), "seconds": round(seconds, 2),
                          "same_as_cached": outputs[(beam, cache)] == outputs[(beam, True)]}))
    for beam in args.beams:
        ratio = statistics.median(times[(beam, False)]) / statistics.median(times[(beam, True)])
        print(f"beam {beam}: key/value reuse is {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
