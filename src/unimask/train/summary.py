"""What a pretraining run tells its user: a few lines at the start (the data, the model, the device,
precision and threads, the schedule, the run directory) and at the end (what the figures mean, the
baselines they should beat, where the checkpoint is, and the commands that come next).

The masked-token baselines come from the data alone (`unigram_baseline`): always predicting the most
frequent token gives the accuracy any model must beat, and the cross-entropy of the valid tokens
under the training split's token frequencies is the loss of a model that knows nothing but them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MASKED_TOKEN_ACCURACIES = {
    # metric: what it measures (every one predicts masked tokens out of the whole vocabulary)
    "mlm_acc": "masked tokens predicted exactly",
    "ae_acc": "[MASK] tokens predicted exactly (the autoencoding part)",
    "par_acc": "pseudo-masked tokens predicted exactly (the partially autoregressive part)",
    "clm_acc": "masked tokens predicted exactly by the corrective LM",
    "gen_acc": "masked tokens predicted exactly by the generator",
}
OTHER_ACCURACIES = {
    "rtd_acc": "tokens correctly called original or replaced (a model that says 'original' everywhere "
               "scores 1 - replaced_frac)",
    "copy_acc": "tokens correctly called original or replaced by the copy head",
    "scl_acc": "sequences matched to their own cropped view among the batch",
}


@dataclass(frozen=True)
class UnigramBaseline:
    """Masked-token figures of a model that knows only the training split's token frequencies."""

    accuracy: float          # share of the valid split's ordinary tokens equal to the most frequent one
    cross_entropy: float     # nats per valid token under the (add-one smoothed) training unigram
    top_token: str           # the most frequent training token


def unigram_baseline(train_tokens: np.ndarray, valid_tokens: np.ndarray, vocab_size: int,
                     special_ids: list[int], token_of=str) -> UnigramBaseline | None:
    """The baseline over ordinary tokens (special tokens are never masked); None without valid tokens."""
    ordinary = np.ones(vocab_size, dtype=bool)
    ordinary[special_ids] = False
    train = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size] * ordinary
    valid = np.bincount(np.asarray(valid_tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size] * ordinary
    if not valid.sum():
        return None
    probs = (train + 1.0) * ordinary
    probs /= probs.sum()
    top = int(train.argmax())
    nonzero = valid > 0
    cross_entropy = float(-(valid[nonzero] * np.log(probs[nonzero])).sum() / valid.sum())
    return UnigramBaseline(float(valid[top] / valid.sum()), cross_entropy, token_of(top))


def start_summary(cfg, data_dir: Path, run_dir: Path, encoder, device, store, valid_store) -> str:
    """The lines printed before the first step: the data and where it is, the model, the device,
    precision and threads, the schedule, the run directory."""
    import torch

    from ..data.default_corpus import describe_data
    from ..runtime import cpu_has_bf16, resolve_precision
    tcfg, m = cfg.train, cfg.model
    precision = resolve_precision(tcfg.precision, device)
    if tcfg.precision != "auto":
        why = f"train.precision={tcfg.precision}"
    elif precision == "bf16":
        why = "auto: bf16 matmuls are faster here"
    elif device.type == "cpu" and not cpu_has_bf16():
        why = "auto: this CPU has no bf16 instructions (AVX512-BF16, AMX)"
    else:
        why = "auto: bf16 is not faster here"
    threads = ""
    if device.type == "cpu":
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        count = torch.get_num_threads()
        threads = f", {count} thread{'s' if count > 1 else ''}" + busy_machine_hint(load, os.cpu_count() or 1, count)
    params = sum(p.numel() for p in encoder.parameters())
    schedule = (f"{tcfg.steps:,} steps of {tcfg.batch_size} x {cfg.data.seq_len} tokens"
                + (f" x {tcfg.grad_accum} accumulated" if tcfg.grad_accum > 1 else "")
                + f", lr {tcfg.lr:g} ({tcfg.warmup_steps} warm-up steps, {tcfg.schedule} decay)")
    if tcfg.time_budget_minutes:
        schedule += (f"; refitted every {tcfg.budget_calibration_steps} steps to a {tcfg.time_budget_minutes:g}-minute "
                     "budget" if tcfg.budget_calibration_steps else f"; stops after {tcfg.time_budget_minutes:g} minutes")
    return "\n".join([
        f"unimask pretrain: {cfg.objective_name} into {run_dir}",
        f"  data      {describe_data(data_dir, len(store), len(valid_store))}",
        f"  model     {cfg.objective_name} on a {cfg.size} encoder: {m.num_layers} layers x {m.hidden_size} wide, "
        f"{m.num_heads} heads, {params / 1e6:.1f}M parameters, vocabulary {m.vocab_size:,}",
        f"  device    {device}, {precision} ({why}){threads}",
        f"  schedule  {schedule}",
        f"  run dir   {run_dir}: config.json, metrics.jsonl (every figure; `unimask plot {run_dir}` draws them), "
        "checkpoints/",
    ])


def end_summary(record: dict, store, valid_store, steps: int, minutes: float, run_dir: Path,
                checkpoint: Path | None) -> str:
    """The lines printed after the last evaluation: the figures and what they mean beside the unigram
    baseline of `store` / `valid_store`, the checkpoint, and the commands that come next."""
    baseline = unigram_baseline(store.tokens, valid_store.tokens, store.vocab_size,
                                list(store.special_ids.values()), store.tokenizer().id_to_token)
    lines = [f"done: {steps} steps in {minutes:.1f} min; {valid_line(record)}"]
    loss = record.get("loss")
    if loss is not None:
        lines.append(f"  valid loss {loss:.3f}: the objective's loss per predicted token on held-out text "
                     "(lower is better)")
        if "mlm_loss" in record or "ae_loss" in record:
            ce = record.get("mlm_loss", record.get("ae_loss"))
            unigram = f"; knowing only token frequencies gives {baseline.cross_entropy:.2f}" if baseline else ""
            lines.append(f"    masked-token cross-entropy {ce:.3f} nats = perplexity {math.exp(min(ce, 50)):.1f}"
                         f"{unigram}")
            if baseline and ce >= baseline.cross_entropy:
                lines.append("    not past token frequencies yet: a longer run uses the context, e.g. the same command "
                             "with --out runs/longer --set train.time_budget_minutes=20 (or more train.steps)")
    for key, value in record.items():
        meaning = MASKED_TOKEN_ACCURACIES.get(key) or OTHER_ACCURACIES.get(key)
        if meaning and isinstance(value, float):
            against = (f"; always guessing the most frequent token ({baseline.top_token!r}) scores "
                       f"{100 * baseline.accuracy:.1f}%" if baseline and key in MASKED_TOKEN_ACCURACIES else "")
            lines.append(f"  {key} {100 * value:.1f}%: {meaning}{against}")
    out = f"runs/finetune/classify-{run_dir.name}"
    lines += [
        f"  checkpoint {checkpoint} (weights, optimizer and data position; `--resume` continues the run)",
        "next:",
        f"  unimask plot {run_dir}    # the curves -> {run_dir / 'curves.png'} (pip install 'unimask[plot]')",
        f"  unimask finetune --checkpoint {run_dir} --task classify --train train.csv --dev dev.csv "
        f"--text-column text --label-column label --epochs 1    # -> {out}",
        f"  unimask predict --model {out} --input new.csv --output predicted.csv",
        f"  unimask export {run_dir} --out hf/{run_dir.name}    # a transformers model (pip install 'unimask[hf]')",
    ]
    return "\n".join(lines)


def busy_machine_hint(load: float, cores: int, threads: int) -> str:
    """Where other programs already keep every core busy, several threads wait for each other at every
    operation (measured on 2 busy cores: 2 threads ran 2.5 to 40 times slower than 1), so say so."""
    if threads > 1 and load >= cores:
        return (f" (the machine is busy, load {load:.1f} on {cores} cores: OMP_NUM_THREADS=1 before the command "
                "may run faster)")
    return ""


def valid_line(record: dict) -> str:
    """An evaluation in one line: `valid loss 2.3456`, or for one that scored nothing, that and the
    blocks it saw (never a formatted None)."""
    if record.get("loss") is None:
        blocks = record["blocks"]
        return f"valid: nothing to score ({blocks} block{'' if blocks == 1 else 's'}, 0 target tokens)"
    return f"valid loss {record['loss']:.4f}"


def fit_steps_to_budget(done: int, elapsed_s: float, step_s: float, budget_s: float, cap: int,
                        eval_s: float = 0.0, eval_every: int = 0) -> int:
    """The step count that fits `budget_s`: `done` steps took `elapsed_s`, each further one takes
    `step_s`, an evaluation `eval_s` (one every `eval_every` steps, and one at the end); at most `cap`,
    at least `done`."""
    per_step = step_s + (eval_s / eval_every if eval_every else 0.0)
    left = budget_s - elapsed_s - eval_s
    return max(done, min(cap, done + int(left / per_step)))
