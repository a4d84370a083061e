"""Train transformers' BertForMaskedLM on exactly the batches `unimask pretrain --recipe mlm_mini`
sees (same data order, same MLM corruption, same AdamW groups and schedule, the trainer's autocast)
and write its loss every 10 steps in the trainer's metrics.jsonl format, to compare training curves:

    python benchmarks/hf_training_curve.py --data <prepared dir> --steps 100 --out runs/hf_curve
    # then compare runs/hf_curve/metrics.jsonl with a unimask run's (same --lr, --warmup, --total)

A sanity check of the whole training path (loader, masking, loss normalisation, optimizer): the two
curves should agree up to dropout noise.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    from transformers import BertForMaskedLM

    from unimask.data.loader import Blocks, TrainLoader
    from unimask.data.store import TokenStore
    from unimask.export.hf import to_bert_config
    from unimask.model.encoder import EncoderConfig
    from unimask.objectives import OBJECTIVES, Vocab
    from unimask.recipes import RECIPES
    from unimask.runtime import autocast_for
    from unimask.train.optim import build_optimizer, build_scheduler

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--total", type=int, default=2000, help="the schedule's length (the unimask run's train.steps)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--out", default="runs/hf_curve")
    args = ap.parse_args()

    run = RECIPES["mlm_mini"]()
    m, t = run.model, run.train
    store = TokenStore(args.data, "train")
    vocab = Vocab(size=store.vocab_size, **{k: store.special_ids[k] for k in ("pad", "unk", "cls", "sep", "mask")},
                  word_start=store.word_start_mask())
    objective = OBJECTIVES["mlm"](run.objective, EncoderConfig(vocab_size=store.vocab_size), vocab)
    torch.manual_seed(t.seed)
    model = BertForMaskedLM(to_bert_config(replace(m, vocab_size=store.vocab_size))).train()
    optimizer = build_optimizer(model, t.lr, (t.beta1, t.beta2), t.adam_eps, t.weight_decay)
    scheduler = build_scheduler(optimizer, args.warmup, args.total, "linear", 0.0)
    loader = TrainLoader(Blocks(store, run.data.seq_len, full_only=True), t.batch_size, t.seed, objective.corrupt)
    autocast = autocast_for(t.precision, torch.device("cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") as log:
        for step in range(1, args.steps + 1):
            batch = next(loader)
            with autocast():
                loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 10 == 0:
                log.write(json.dumps({"split": "train", "step": step, "loss": loss.item()}) + "\n")
                log.flush()
                print(f"step {step} loss {loss.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
