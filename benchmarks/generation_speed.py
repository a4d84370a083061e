"""Generation throughput of a seq2seq fine-tuned model: greedy and beam search, with and without
key/value reuse, on the same sources (sentences/s, one JSON line per setting).

    python benchmarks/generation_speed.py --checkpoint runs/qg --input ../shared/data/qg/src-test.txt --n 256

Settings run interleaved in rounds (`--rounds`), so machine noise hits each alike; the outputs of
the cached and uncached decoders are compared (they must be identical). `measure` is what
benchmarks/gpu_check.py calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unimask.checkpoint import load_finetuned
from unimask.runtime import resolve_device
from unimask.tasks.base import SpecialIds
from unimask.tasks.decoding import GenerationConfig, generate
from unimask.tasks.seq2seq import decoder_ids, featurize_sources


def measure(checkpoint: str, lines: list[str], beams: tuple[int, ...] = (1, 5), batch_size: int = 32,
            rounds: int = 2, max_length: int = 0, device: str = "cpu") -> list[dict]:
    """One record per (beam, kv_cache) setting: sentences/s from the median of `rounds` interleaved
    runs over `lines` (on CUDA after one untimed run of each setting over the first batch), and whether
    the outputs equal the cached decoder's."""
    ft = load_finetuned(checkpoint)
    dev = resolve_device(device)
    encoder, head, tokenizer = ft.encoder.to(dev), ft.head.to(dev), ft.tokenizer
    options = ft.meta.get("task_options") or {}
    saved = options.get("generation", {})
    max_length = max_length or saved.get("max_length") or int(options.get("max_target_length", 48)) - 1
    special = SpecialIds.of(tokenizer)
    sources = featurize_sources(lines, tokenizer, special, int(options.get("max_source_length") or 128))
    ids = decoder_ids(special, encoder.config)
    settings = [(beam, cache) for beam in beams for cache in (True, False)]
    times: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    outputs: dict[tuple[int, bool], list] = {}

    def run(beam: int, cache: bool, chosen: list) -> list:
        cfg = GenerationConfig(**{**saved, "beam_size": beam, "kv_cache": cache})
        with torch.inference_mode():
            return generate(encoder, head, chosen, ids, cfg, max_length, batch_size=batch_size, pad_id=special.pad,
                            device=dev, banned=(special.pad, special.cls, special.mask))

    if dev.type == "cuda":              # untimed: flex_attention's compilation (uncached decoder), cuBLAS set-up
        for beam, cache in settings:
            run(beam, cache, sources[:batch_size])
    for _ in range(rounds):
        for beam, cache in settings:
            started = time.perf_counter()
            outputs[(beam, cache)] = run(beam, cache, sources)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[(beam, cache)].append(time.perf_counter() - started)
    records = []
    for beam, cache in settings:
        seconds = statistics.median(times[(beam, cache)])
        records.append({"beam": beam, "kv_cache": cache, "sentences": len(sources), "device": str(dev),
                        "threads": torch.get_num_threads(), "max_length": max_length,
                        "sentences_per_s": round(len(sources) / seconds, 2), "seconds": round(seconds, 3),
                        "same_as_cached": outputs[(beam, cache)] == outputs[(beam, True)],
                        "speedup_of_cache": round(statistics.median(times[(beam, False)])
                                                  / statistics.median(times[(beam, True)]), 2)})
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--n", type=int, default=256, help="sources (the first N lines)")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=0, help="most generated tokens (0: as fine-tuned)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    lines = open(args.input, encoding="utf-8").read().splitlines()[:args.n]
    records = measure(args.checkpoint, lines, tuple(args.beams), args.batch_size, args.rounds, args.max_length,
                      args.device)
    for rec in records:
        print(json.dumps(rec))
    for rec in records:
        if rec["kv_cache"]:
            print(f"beam {rec['beam']}: key/value reuse is {rec['speedup_of_cache']:.1f}x faster")


if __name__ == "__main__":
    main()
