"""The pretraining loop: build -> parallelize -> (forward, backward) x accumulation -> normalise ->
clip -> step -> schedule -> log -> evaluate -> save.

Losses arrive summed with their target counts (objectives/base.py). Gradients are accumulated from
the summed losses and scaled once by world_size / (targets summed over micro-batches and ranks),
so the update is the same whatever the split into micro-batches and processes.

The run directory belongs to one run: rank 0 holds its lock (`rundir.claim`) from before anything is
read or written. SIGTERM and SIGINT (Ctrl-C) stop the run at the end of the current optimizer step,
on the same step on every rank: it saves a checkpoint and raises `Stopped` (exit status 128 + the
signal), and `--resume` continues exactly (`StopSignals`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import Stopped, UserError
from ..rundir import claim
from ..runtime import autocast_for
from .malloc import keep_freed_memory_on
from .summary import end_summary, fit_steps_to_budget, start_summary, valid_line


@dataclass
class TrainConfig:
    steps: int = 1000                    # optimizer steps
    batch_size: int = 32                 # sequences per micro-batch per process
    grad_accum: int = 1                  # micro-batches per optimizer step
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0
    clip_norm: float = 1.0               # 0 = no clipping
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = False                # torch.compile each Transformer block (train/parallel.py compile_blocks);
                                         # off: 0-5% on the CPU (benchmarks/results/compile_table_*.md)
    attention: Literal["auto", "sdpa", "flex"] = "auto"   # auto: flex_attention for a bias / layout on CUDA (model/encoder.py)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200                # 0 = only at the end
    eval_batches: int = 20
    save_every: int = 500                # 0 = only at the end
    save_at: tuple[int, ...] = ()        # more checkpoints at these steps, never pruned by keep_last (unimask arena)
    keep_last: int = 2
    max_bad_steps: int = 5               # consecutive non-finite steps before the run stops
    time_budget_minutes: float = 0.0     # stop (evaluate, save) after this much time in the loop; 0 = none
    budget_calibration_steps: int = 0    # with a time budget: every this many steps, keep the step count that fits
                                         # it at the run's pace so far (at most `steps`; warm-up in proportion)
    keep_freed_memory: bool = True       # CPU: glibc keeps freed pages mapped, no page faults each step (train/malloc.py)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, not {self.lr}")
        self.save_at = tuple(sorted({int(s) for s in self.save_at}))     # a JSON list reads back as the same tuple
        if any(s < 1 for s in self.save_at):
            raise ValueError(f"save_at steps must be at least 1, not {self.save_at}")


def finite_record(record: dict) -> dict:
    """`record` with every non-finite float (NaN, inf) replaced by None and a "nonfinite" entry naming
    those fields and what they held ({"loss": "nan"}; nested ones as "outer.inner"), so the line is
    strict JSON: RFC 8259 has no NaN, and the bare NaN Python's json writes breaks jq or JavaScript."""
    bad: dict[str, str] = {}

    def clean(value, name: str):
        if isinstance(value, float) and not math.isfinite(value):
            bad[name] = str(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{name}.{k}" if name else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{name}.{i}") for i, v in enumerate(value)]
        return value

    cleaned = clean(record, "")
    return {**cleaned, "nonfinite": bad} if bad else record


class MetricsLog:
    """JSONL metrics in the run directory (+ TensorBoard when it is installed), main rank only.

    Every line is one strict-JSON record: non-finite values are written as null (see `finite_record`).
    """

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def truncate_after(self, step: int) -> None:
        """Drop records written after `step` (by a killed run, or a run that never checkpointed).

        Lines are split at "\\n" only (a record may hold U+2028 and other characters that
        str.splitlines also breaks at); NaN written by older versions is read and rewritten as null;
        a last line cut short by a kill during the write is dropped.
        """
        if not (self.enabled and self.path.exists()):
            return
        lines = self.path.read_text(encoding="utf-8").split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):                 # no newline after it: a torn last write
                    continue
                raise UserError(f"{self.path}:{number} is not a JSON record; "
                                "remove that line, then --resume") from None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(_json_line(r) for r in records if r["step"] <= step), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(_json_line(record))
        if self.tb is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "split"):
                    self.tb.add_scalar(f"{split}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _json_line(record: dict) -> str:
    """One strict-JSON line; allow_nan=False: a non-finite value can never reach the file."""
    return json.dumps(finite_record(record), allow_nan=False) + "\n"


def _summed_metrics(outputs_sum: dict[str, torch.Tensor], num: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Pack loss, count and every (2,) metric into one vector for a single all-reduce."""
    parts = [loss.detach().float().reshape(1), num.detach().float().reshape(1)]
    parts += [outputs_sum[k] for k in sorted(outputs_sum)]
    return torch.cat(parts)


def _unpack_metrics(vec: torch.Tensor, keys: list[str]) -> tuple[float, float, dict[str, float]]:
    loss_sum, count = vec[0].item(), vec[1].item()
    means = {}
    for i, k in enumerate(sorted(keys)):
        num, den = vec[2 + 2 * i].item(), vec[3 + 2 * i].item()
        means[k] = num / den if den else float("nan")
    return loss_sum, count, means


@dataclass
class StepResult:
    loss: float                 # summed loss / summed targets, over micro-batches and ranks
    grad_norm: float
    metrics: dict[str, float]
    tokens: int                 # tokens processed by all ranks
    finite: bool                # False: the update was skipped


def train_step(model, optimizer, micro_batches, autocast, info, params, clip_norm: float) -> StepResult:
    """One optimizer step over an iterable of micro-batches (already corrupted, any device).

    Gradients come from the summed losses and are scaled once by world_size / total targets, so
    the update equals one big batch's whatever the accumulation and the number of ranks.
    """
    from . import parallel

    micro_batches = list(micro_batches)
    metric_sums: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), device=info.device)
    count = torch.zeros((), device=info.device)
    tokens = 0
    for i, batch in enumerate(micro_batches):
        batch = batch.to(info.device)
        with parallel.gradient_sync(model, i == len(micro_batches) - 1):
            with autocast():
                out = model(batch)
            out.loss.backward()
        loss_sum += out.loss.detach().float()
        count += out.num_targets.detach().float()
        for k, v in out.metrics.items():
            metric_sums[k] = metric_sums.get(k, 0) + v.to(info.device)
        tokens += batch.num_tokens * info.world_size
    vec = parallel.all_reduce_sum(_summed_metrics(metric_sums, count, loss_sum))
    total_loss, total_count, means = _unpack_metrics(vec.cpu(), list(metric_sums))
    scale = info.world_size / max(total_count, 1.0)      # DDP/FSDP averaged over ranks
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    loss = total_loss / max(total_count, 1.0)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, grad_norm, means, tokens, finite)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop a run with a checkpoint, in the order of precedence when ranks got different ones."""


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) while training become a stop at the end of the optimizer step.

    The first one is remembered (`received`) and read by the loop after each step, where every rank
    agrees on it (`_agree_to_stop`); the run then saves a checkpoint and raises `Stopped`. Inside
    `deferred()` (a checkpoint being written) every further signal only waits, so a second SIGTERM
    cannot cut a save short; elsewhere a second Ctrl-C aborts at once (KeyboardInterrupt; the earlier
    checkpoints stay). Handlers are installed only in the main thread, and restored on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._saving = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT and not self._saving:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """Signals wait until the block ends (they are still remembered)."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False


def _claim_on_main(stack: contextlib.ExitStack, run_dir: Path, info) -> None:
    """Rank 0 holds `run_dir` (`rundir.claim`) until `stack` closes; when it cannot, every rank raises
    its UserError, so no rank waits for the others."""
    from . import parallel
    error = None
    if info.is_main:
        try:
            stack.enter_context(claim(run_dir, "pretrain"))
        except UserError as e:
            error = str(e)
    error = parallel.broadcast_object(error)
    if error is not None:
        raise UserError(error)


def train(cfg, run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or continue) pretraining as `cfg` (a RunConfig) says; returns the last eval record.

    Raises UserError for bad input (another process holding `run_dir` included) and `Stopped` after
    SIGTERM or SIGINT, once the checkpoint of the step it stopped after is saved."""
    from .. import config as config_mod
    from ..checkpoint import carried_tensors, read_carried
    from ..data.default_corpus import resolve_data
    from ..data.loader import Blocks, TrainLoader, eval_batches
    from ..data.store import TokenStore
    from ..model.encoder import Encoder
    from ..objectives import OBJECTIVES, PretrainModel, Vocab
    from . import checkpoint as ckpt_mod
    from . import parallel
    from .optim import build_optimizer, build_scheduler

    info = parallel.init_distributed(cfg.train.device)
    tcfg = cfg.train
    keep_freed_memory_on(info.device, tcfg.keep_freed_memory)
    run_dir = Path(run_dir)
    held = contextlib.ExitStack()            # the run directory's lock, then the signal handlers
    try:
        _claim_on_main(held, run_dir, info)
        # ---- data and run directory ---------------------------------------------------------
        data_dir = resolve_data(cfg.data.path, is_main=info.is_main, barrier=parallel.barrier)
        store, valid_store = TokenStore(data_dir, "train"), TokenStore(data_dir, "valid")
        if not cfg.init:                # --init: the checkpoint's embeddings decide (check_tokenizer below)
            cfg.model.vocab_size = store.vocab_size
        cfg.data.path = str(data_dir)
        existing = ckpt_mod.latest_checkpoint(run_dir) if ckpt_mod.list_checkpoints(run_dir) else None
        if existing is not None and not resume:
            raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue that run "
                            f"or choose another --out")
        if existing is not None:
            _check_same_model(config_mod.from_dict(ckpt_mod.load_config(existing)), cfg, existing)
            saved_step = ckpt_mod.read_meta(existing)["step"]
            if tcfg.steps < saved_step:       # before config.json is rewritten: the run stays as it was
                raise UserError(f"train.steps={tcfg.steps} is below {existing}'s step {saved_step}; "
                                f"set train.steps to at least {saved_step} to continue that run")
        init = generator_init = None
        carried = carried_tensors(read_carried(existing)) if existing is not None else {}   # checkpoint.CARRIED_HEADS
        if cfg.init and existing is None:   # a new run from released weights (train/init.py)
            from .init import (check_model_overrides, check_objective_overrides, check_tokenizer, generator_fields,
                               read_init, read_init_generator)
            init = read_init(cfg.init)
            carried = carried_tensors(init.heads)
            check_model_overrides(init.config, cfg.model, cfg.init)
            check_tokenizer(init, store.tokenizer(), data_dir)
            if cfg.init_generator:
                generator_init = read_init_generator(cfg.init_generator, init.config, init.tokenizer)
                check_objective_overrides(generator_fields(cfg.objective_name, generator_init, init.config),
                                          cfg.objective, cfg.init_generator)
        # ---- objective (before the run directory: its errors must leave nothing behind) -----
        torch.manual_seed(tcfg.seed)
        vocab = Vocab(size=store.vocab_size, **{k: store.special_ids[k] for k in ("pad", "unk", "cls", "sep", "mask")},
                      word_start=store.word_start_mask() if getattr(cfg.objective, "masking", "") == "whole_word" else None)
        try:
            objective = OBJECTIVES[cfg.objective_name](cfg.objective, cfg.model, vocab)
        except ValueError as e:
            raise UserError(f"invalid {cfg.objective_name} settings: {e}") from None
        _check_attention(tcfg.attention, info.device, cfg.model.attention_dropout)
        if tcfg.compile:
            parallel.check_compile(info.device)                 # before the run directory is written
        if generator_init is not None:
            from .init import apply_init_generator
            warnings = apply_init_generator(objective, init.state["embeddings.word.weight"], generator_init)
            if info.is_main:
                for warning in warnings:
                    print(f"warning: {warning}", file=sys.stderr)
                print(f"initialised the generator from {generator_init.source}", file=sys.stderr)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(run_dir, cfg)

        # ---- model, optimizer ---------------------------------------------------------------
        if info.world_size > 1:
            objective.all_gather = parallel.all_gather_with_grad
        plain = PretrainModel(Encoder(cfg.model), objective)
        if init is not None:
            from .init import apply_init
            heads = apply_init(plain.encoder, plain.objective, cfg.objective_name, init)
            if info.is_main:
                print(f"initialised the encoder{' and the ' + ', '.join(heads) + ' head' if heads else ''} "
                      f"from {init.source}" + ("; its pooler is carried unchanged into every checkpoint"
                                               if "pooler" in init.heads else ""), file=sys.stderr)
        model = parallel.parallelize(plain, info, tcfg.parallel, tcfg.compile, tcfg.attention)
        torch.manual_seed(tcfg.seed * 1000 + info.rank)      # per-rank dropout streams
        optimizer = build_optimizer(model, tcfg.lr, (tcfg.beta1, tcfg.beta2), tcfg.adam_eps, tcfg.weight_decay)
        scheduler = build_scheduler(optimizer, tcfg.warmup_steps, tcfg.steps, tcfg.schedule, tcfg.min_lr_ratio)
        loader = TrainLoader(Blocks(store, cfg.data.seq_len, full_only=True), tcfg.batch_size, tcfg.seed,
                             objective.corrupt, info.rank, info.world_size, pin_memory=info.device.type == "cuda")
        valid_blocks = Blocks(valid_store, cfg.data.seq_len, full_only=False)
        autocast = autocast_for(tcfg.precision, info.device)
        log = MetricsLog(run_dir, info.is_main)

        step = 0
        if existing is not None:
            step = _restore(existing, model, optimizer, scheduler, loader, info)
        log.truncate_after(step)      # records a killed run wrote after its last checkpoint
        if existing is not None:
            if info.is_main:
                print(f"resumed {run_dir} from step {step}", file=sys.stderr)
        if info.is_main:
            print(start_summary(cfg, data_dir, run_dir, plain.encoder, info.device, store, valid_store), file=sys.stderr)

        signals = StopSignals()
        saved_at = None

        def save(at_step: int) -> None:
            nonlocal saved_at
            with signals.deferred():
                model_state, train_state = _gather_state(model, optimizer, scheduler, loader)
                if info.is_main:
                    ckpt_mod.save_checkpoint(run_dir, at_step, model_state, train_state, cfg.to_dict(),
                                             data_dir / "tokenizer.json", tcfg.keep_last, keep_steps=tcfg.save_at,
                                             carried=carried)
                parallel.barrier()
            saved_at = at_step

        def evaluate(at_step: int) -> dict:
            """Score the first held-out batches. With no target to score (an empty valid split, or
            blocks holding only special tokens) the record has loss None, not a made-up 0."""
            model.eval()
            sums: dict[str, torch.Tensor] = {}
            total = torch.zeros(2)                                       # (summed loss, targets)
            blocks = 0
            with torch.no_grad(), autocast():
                for batch in eval_batches(valid_blocks, tcfg.batch_size, tcfg.eval_batches, tcfg.seed,
                                          objective.corrupt, info.rank, info.world_size):
                    out = model(batch.to(info.device))
                    total += torch.stack([out.loss.float().cpu(), out.num_targets.float().cpu()])
                    blocks += batch.input_ids.shape[0]
                    for k, v in out.metrics.items():
                        sums[k] = sums.get(k, 0) + v.cpu()
            keys = sorted(sums)
            vec = torch.cat([total, *[sums.get(k, torch.zeros(2)) for k in keys], torch.tensor([float(blocks)])])
            vec = parallel.all_reduce_sum(vec.to(info.device)).cpu()    # (2 + 2 * len(keys) + 1,)
            loss_sum, count, means = _unpack_metrics(vec[:-1], keys)
            model.train()
            record = _eval_record(at_step, loss_sum, count, int(vec[-1].item()), objective.summarize(means))
            log.write(record)
            return record

        # ---- the loop -------------------------------------------------------------------------
        held.enter_context(signals)
        model.train()
        bar = _progress(progress and info.is_main, tcfg.steps, step)
        tokens_seen, t0, bad_steps, last_eval = 0, time.perf_counter(), 0, {}
        params = [p for p in model.parameters() if p.requires_grad]
        # a fresh run with a budget to fit: every `budget_calibration_steps` steps, the pace since step 1 (which
        # warms up) gives the step count that fits (at most `cap`); the whole run's average, not the last few
        # steps', so a machine that others load and unload now and then moves the schedule little
        refit_every = tcfg.budget_calibration_steps if tcfg.time_budget_minutes and step == 0 else 0
        cap, warmup_share, warm, said = tcfg.steps, tcfg.warmup_steps / tcfg.steps, 0.0, 0
        while step < tcfg.steps:
            micro_batches = (next(loader) for _ in range(tcfg.grad_accum))
            result = train_step(model, optimizer, micro_batches, autocast, info, params, tcfg.clip_norm)
            tokens_seen += result.tokens
            loss, grad_norm, means = result.loss, result.grad_norm, result.metrics
            if result.finite:
                bad_steps = 0
            else:
                bad_steps += 1
                if info.is_main:
                    print(f"warning: step {step + 1} has a non-finite loss or gradient; update skipped",
                          file=sys.stderr)
                if bad_steps >= tcfg.max_bad_steps:
                    raise UserError(f"{bad_steps} consecutive non-finite steps at step {step + 1}; "
                                    f"lower train.lr or use train.precision=fp32, then --resume")
            scheduler.step()
            step += 1

            elapsed = time.perf_counter() - t0
            if step == 1:
                warm = elapsed
            elif refit_every and (step - 1) % refit_every == 0:
                step_s = (elapsed - warm) / (step - 1)
                scheduler = _fit_to_budget(cfg, step, elapsed, step_s, cap, warmup_share, optimizer, info)
                if bar is not None:
                    bar.total = tcfg.steps                      # shown at the bar's next update
                if info.is_main:
                    _write_config(run_dir, cfg)
                if abs(tcfg.steps - said) > 0.1 * said:         # the first fit, and then large changes only
                    said = tcfg.steps
                    _say(bar, info, f"step {step}: {said} steps fit the {tcfg.time_budget_minutes:g}-minute budget "
                                    f"at {step_s:.2f} s a step so far (warm-up {tcfg.warmup_steps})")
            if step % tcfg.log_every == 0 or step == tcfg.steps:
                record = {"split": "train", "step": step, "tokens": step * result.tokens, "loss": loss,
                          "lr": scheduler.get_last_lr()[0],
                          "grad_norm": grad_norm, "epoch": round(loader.epoch(), 4),
                          "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "elapsed_s": round(elapsed, 3),
                          **objective.summarize(means)}
                log.write(record)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):,.0f}", refresh=False)
                bar.update(1)
            if tcfg.eval_every and step % tcfg.eval_every == 0 and step != tcfg.steps:
                last_eval = evaluate(step)
                _say(bar, info, f"step {step}: {valid_line(last_eval)}")
            if ((tcfg.save_every and step % tcfg.save_every == 0) or step in tcfg.save_at) and step != tcfg.steps:
                save(step)
            out_of_time, signum = _agree_to_stop(elapsed, tcfg.time_budget_minutes, signals.received, info)
            if signum is not None and step < tcfg.steps:      # after the last step: finish as usual
                name = signal.Signals(signum).name
                _say(bar, info, f"{name} received: stopping after step {step}, saving a checkpoint")
                if saved_at != step:
                    save(step)
                if bar is not None:
                    bar.close()
                log.close()
                raise Stopped(signum, f"stopped by {name} after step {step}; saved the checkpoint "
                                      f"{ckpt_mod.step_dir(run_dir, step)}; continue with "
                                      f"`unimask pretrain --out {run_dir} --resume`", quiet=not info.is_main)
            if out_of_time:
                _say(bar, info, f"time budget of {tcfg.time_budget_minutes:g} min reached at step {step}")
                break
        if bar is not None:
            bar.close()
        last_eval = evaluate(step)
        save(step)
        log.close()
        if info.is_main:
            print(end_summary(last_eval, store, valid_store, step, (time.perf_counter() - t0) / 60, run_dir,
                              ckpt_mod.latest_checkpoint(run_dir)), file=sys.stderr)
        return last_eval
    finally:
        held.close()
        parallel.shutdown()


def _check_attention(kernel: str, device: torch.device, attention_dropout: float) -> None:
    """train.attention=flex where flex_attention cannot train is a one-line error, before the run starts."""
    if kernel != "flex":
        return
    if device.type != "cuda":
        raise UserError("train.attention=flex trains on CUDA only (flex_attention has no CPU backward); "
                        "use train.attention=auto or sdpa")
    if attention_dropout > 0:
        raise UserError("train.attention=flex: flex_attention has no attention dropout; "
                        "set model.attention_dropout=0 or use train.attention=auto")


def _write_config(run_dir: Path, cfg) -> None:
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))


def _fit_to_budget(cfg, step: int, elapsed: float, step_s: float, cap: int, warmup_share: float, optimizer, info):
    """Set cfg.train.steps to what fits the time budget at `step_s` seconds a step (at most `cap`; the main
    rank's clock decides for all) and warm-up to `warmup_share` of it; returns the scheduler for that
    schedule, continued at `step`."""
    from . import parallel
    from .optim import build_scheduler
    tcfg = cfg.train
    fitted = fit_steps_to_budget(step, elapsed, step_s, 60 * tcfg.time_budget_minutes, cap,
                                 eval_s=tcfg.eval_batches * step_s / 3, eval_every=tcfg.eval_every)
    flag = torch.tensor([float(fitted if info.is_main else 0)], device=info.device)
    tcfg.steps = int(parallel.all_reduce_sum(flag).item())
    tcfg.warmup_steps = max(1, round(warmup_share * tcfg.steps))
    return build_scheduler(optimizer, tcfg.warmup_steps, tcfg.steps, tcfg.schedule, tcfg.min_lr_ratio, last_step=step)


def _eval_record(step: int, loss_sum: float, targets: float, blocks: int, means: dict[str, float]) -> dict:
    """The valid record of one evaluation: the loss per target and the objective's means, or, when
    no target was scored, loss None and the reason (a loss of 0 would read as a perfect model)."""
    record = {"split": "valid", "step": step, "blocks": blocks, "targets": int(targets)}
    if not targets:
        return {**record, "loss": None, "reason": "nothing to score"}
    return {**record, "loss": loss_sum / targets, **means}


def _agree_to_stop(elapsed: float, budget_minutes: float, received: int | None, info) -> tuple[bool, int | None]:
    """Whether every rank stops after this step, from one all-reduce: (the main rank's clock says the
    time budget is spent, the stop signal some rank received or None; SIGTERM before SIGINT)."""
    from . import parallel
    flags = [float(info.is_main and budget_minutes > 0 and elapsed > 60 * budget_minutes)]
    flags += [float(received == s) for s in STOP_SIGNALS]
    total = parallel.all_reduce_sum(torch.tensor(flags, device=info.device)).tolist()
    return bool(total[0]), next((s for s, n in zip(STOP_SIGNALS, total[1:]) if n), None)


def _say(bar, info, text: str) -> None:
    if not info.is_main:
        return
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30.0, file=sys.stderr)


# The fields that must match for a checkpoint to be continued by a config: the model, the
# objective and everything that decides which data each step sees.
_SAME_MODEL = ("objective_name", "model", "objective", "data.seq_len", "train.batch_size", "train.seed")


def _check_same_model(saved, cfg, ckpt: Path) -> None:
    a, b = saved.to_dict(), cfg.to_dict()
    for key in _SAME_MODEL:
        part, _, sub = key.partition(".")
        x, y = (a[part], b[part]) if not sub else (a[part][sub], b[part][sub])
        if x != y:
            detail = next((f"{key}.{k}: {x[k]!r} vs {y[k]!r}" for k in x if x[k] != y.get(k)), f"{key}: {x!r} vs {y!r}") \
                if isinstance(x, dict) else f"{key}: {x!r} vs {y!r}"
            raise UserError(f"{ckpt} holds a checkpoint of another model or data order ({detail}); "
                            f"resume with the run's own config (omit --recipe) or choose another --out")


def _gather_state(model, optimizer, scheduler, loader) -> tuple[dict, dict]:
    """Full (unsharded, unwrapped) model and optimizer state, on the CPU, on every rank."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=opts)
    train_state = {
        "optimizer": get_optimizer_state_dict(model, optimizer, options=opts),
        "scheduler": scheduler.state_dict(),
        "loader": loader.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})},
    }
    return model_state, train_state


def _restore(ckpt: Path, model, optimizer, scheduler, loader, info) -> int:
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    from .checkpoint import load_checkpoint
    model_state, state, _ = load_checkpoint(ckpt)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    try:
        set_model_state_dict(model, model_state, options=opts)
    except RuntimeError as e:
        raise UserError(f"{ckpt} does not fit this model ({str(e).splitlines()[0]}); "
                        f"choose another --out") from None
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return int(state["step"])
