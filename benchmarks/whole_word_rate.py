"""The realised whole-word masking rate on the shared Wikipedia sample, old rule vs BERT's.

    python benchmarks/whole_word_rate.py [--data DIR] [--blocks 2000] [--seq-lens 64 128 512]

Protocol: `unimask prepare` of ../shared/data/corpus/enwiki_sample.txt.gz with the default config (a
30,522-piece WordPiece tokenizer; reused when DIR already holds it); blocks packed as pretraining
packs them (`data.loader.Blocks`, full blocks only: [CLS] + seq_len - 1 tokens of the document
stream, documents joined by [SEP]); `--blocks` blocks drawn uniformly without replacement (numpy
seed 0) per seq_len, masked in batches of 100 rows with `masking.whole_word_mask` at prob 0.15 and
the vocabulary's word-start table (torch generator seed = batch index). The rate is masked tokens /
candidate tokens (neither [CLS], [SEP] nor other specials), summed over all blocks; the budget
column is sum(round(0.15 x candidates)) / candidates, what token masking realises exactly.
"old" is the rule before issue 15 (words in random order while the running count stays within the
budget: it stops at the first word that overflows), kept here as a reference only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unimask.data.loader import Blocks
from unimask.data.prepare import PrepareConfig, prepare
from unimask.data.store import TokenStore
from unimask.objectives import masking

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus" / "enwiki_sample.txt.gz"


def old_whole_word_mask(input_ids: Tensor, candidates: Tensor, word_start: Tensor, prob: float,
                        rng: torch.Generator) -> Tensor:
    """The pre-issue-15 rule: take words in random order while the cumulative count is within the
    budget (the first word always), i.e. stop at the first word that overflows it."""
    B, T = input_ids.shape
    previous = torch.cat([torch.zeros_like(candidates[:, :1]), candidates[:, :-1]], dim=1)
    starts = candidates & (word_start[input_ids] | ~previous)
    word = torch.cumsum(starts.long(), dim=1) - 1
    word = torch.where(candidates, word, torch.full_like(word, T))
    length = torch.zeros(B, T + 1, dtype=torch.long)
    length.scatter_add_(1, word, torch.ones_like(word))
    length = length[:, :T]                                                 # (B, T) tokens per word
    exists = length > 0
    order = torch.rand(B, T, generator=rng).masked_fill(~exists, 2.0).argsort(dim=-1)
    running = torch.cumsum(length.gather(1, order), dim=1)                 # (B, T) tokens so far
    take_sorted = (running <= masking.budget_for(candidates, prob)[:, None]) | (torch.arange(T) == 0)
    take_sorted &= exists.gather(1, order)
    taken = torch.zeros(B, T + 1, dtype=torch.bool)
    taken[:, :T].scatter_(1, order, take_sorted)
    return taken.gather(1, word) & candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=str(CORPUS))
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "unimask-wwm-enwiki"),
                        help="the prepared directory (made on first use, reused afterwards)")
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--prob", type=float, default=0.15)
    args = parser.parse_args()

    manifest = prepare([args.text], args.data, PrepareConfig(vocab_size=30522), log=lambda *a, **k: None)
    store = TokenStore(args.data)
    word_start = store.word_start_mask()                                   # (V,) bool
    special = [store.special_ids[k] for k in ("pad", "unk", "cls", "sep", "mask")]
    print(f"{args.data}: {manifest['splits']['train']['num_tokens']:,} train tokens, vocab {store.vocab_size}, "
          f"{int((~word_start).sum()):,} '##' pieces; {args.blocks} blocks per seq_len, prob {args.prob}")
    print(f"{'seq_len':>7} {'candidates':>11} {'budget':>8} {'old':>8} {'new':>8} {'new rows > budget':>18}")
    for seq_len in args.seq_lens:
        blocks = Blocks(store, seq_len, full_only=True)
        picks = np.random.default_rng(0).choice(len(blocks), size=min(args.blocks, len(blocks)), replace=False)
        sums = {"cand": 0, "budget": 0, "old": 0, "new": 0, "over": 0}
        for i, start in enumerate(range(0, len(picks), 100)):
            ids = blocks.gather(picks[start:start + 100]).input_ids             # (B, T)
            cand = masking.candidate_mask(ids, special)                         # (B, T)
            budget = masking.budget_for(cand, args.prob)                        # (B,)
            new = masking.whole_word_mask(ids, cand, word_start, args.prob, torch.Generator().manual_seed(i))
            old = old_whole_word_mask(ids, cand, word_start, args.prob, torch.Generator().manual_seed(i))
            sums["cand"] += int(cand.sum())
            sums["budget"] += int(budget.sum())
            sums["old"] += int(old.sum())
            sums["new"] += int(new.sum())
            sums["over"] += int((new.sum(-1) > budget).sum())
        rate = {k: 100 * sums[k] / sums["cand"] for k in ("budget", "old", "new")}
        print(f"{seq_len:>7} {sums['cand']:>11,} {rate['budget']:>7.2f}% {rate['old']:>7.2f}% {rate['new']:>7.2f}% "
              f"{sums['over']:>18}")


if __name__ == "__main__":
    main()
