"""`unimask bench`: training throughput, analytic FLOPs, MFU and peak memory of one objective, as JSON.

    unimask bench --objective mlm --size small --batch 32 --seq 128 --steps 20 --dtype bf16

The model is built exactly as the trainer builds it (`PretrainModel(Encoder(cfg), OBJECTIVES[name])`,
`parallel.parallelize`, `build_optimizer`'s fused AdamW) and every step goes through the trainer's
own `train.loop.train_step` with dropout on. The batches are random token ids ([CLS] first, [SEP]
last, a fixed seed), corrupted by `objective.corrupt` and moved to the device before any timing, so
the timed region is forward + backward + clip + optimizer step, nothing else.

Timing: W warm-up steps, then N steps timed one by one (the device is synchronised around each);
`tokens_per_s` is tokens per step / the median step time (timing noise on small shared machines is
large and one-sided, the median resists it), `tokens_per_s_mean` uses the mean step time;
`cpu_ms_median` is the process's CPU time per step over all threads (on an oversubscribed machine
wall time inflates far more than CPU time, which still includes the threads' spin-waiting).
`peak_tflops` is this machine's measured matmul peak in the same dtype (the best of a few large
GEMMs, before and after the run), and `mfu` = achieved / peak, where achieved =
`train_flops_per_token` x tokens/s.
An objective may define `train_flops_per_token(seq_len, predicted_fraction) -> float` for the work
its auxiliary networks add (generators, decoders); otherwise the MLM formula
(`train_flops_per_token` here) is used. `benchmarks/hf_compare.py` reuses the pieces here to race transformers' BertForMaskedLM.

`--compile` compiles each Transformer block as train.compile does; `--compare-compile` times the
objective compiled and eager, interleaved, and adds the compile time (the compiled engine's first step,
`first_step_ms`, minus its median step; inductor's on-disk cache makes a repeated graph cheaper);
`--attention` picks the kernel as train.attention does.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .model import flops
from .train.malloc import keep_freed_memory_on

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- analytic FLOPs -----------------------------------------------------------------------------

encoder_matmul_params = flops.stack_matmul_params


def train_flops_per_token(cfg, seq_len: int, predicted_fraction: float, lm_head: bool = True) -> float:
    """Training FLOPs per input token of an MLM-style step, counting the work actually done.

        F = 6 * L * (4 D^2 + 2 D I)              encoder matmuls (2 FLOPs per weight and token forward,
                                                  x3 for forward + backward w.r.t. inputs and weights)
          + 6 * L * 2 T D                        attention: Q K^T and P V are T*D multiply-adds each per
                                                  token per layer (PaLM appendix B's 12 L T D)
          + 6 * f * (D^2 + V D)                  LM head (dense D x D + tied vocabulary projection) on
                                                  the predicted fraction f of the tokens only

    f = predicted positions / all positions (0.15 for MLM, whose head runs on gathered positions;
    1.0 for an implementation that projects every position, such as transformers' BertForMaskedLM).
    Embedding lookups, LayerNorm, softmax, GELU, dropout and the optimizer are not counted (they are
    memory-bound and not matmul FLOPs), nor the embedding gradient's scatter.
    """
    D, V = cfg.hidden_size, cfg.vocab_size
    head = predicted_fraction * flops.lm_head_flops(D, D, V) if lm_head else 0.0
    return float(flops.stack_flops(cfg, seq_len) + head)


def count_params(model: nn.Module, embedding_tables: tuple[nn.Module, ...] = ()) -> tuple[int, int]:
    """(all parameters, parameters outside the embedding tables). Tied weights count once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = sum(m.weight.numel() for m in embedding_tables if m is not None)
    return total, total - emb


# ---- the machine's matmul peak --------------------------------------------------------------------

_PEAK: dict[tuple[str, torch.dtype], float] = {}


def measure_peak_tflops(dtype: torch.dtype, device: torch.device, n: int | None = None, reps: int = 4) -> float:
    """TFLOP/s of an n x n @ n x n GEMM in `dtype` (n = 2048 on CPU, 8192 on CUDA): the best of
    `reps` runs here and of every earlier call in this process (call it before and after a run:
    on a shared machine a single measurement can land in a slow phase)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)                                   # warm up (thread pool, kernels)
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    key = (str(device), dtype)
    _PEAK[key] = max(_PEAK.get(key, 0.0), 2 * n ** 3 / best / 1e12)
    return _PEAK[key]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss        # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# ---- batches and engines --------------------------------------------------------------------------

def random_batches(objective, vocab, batch: int, seq: int, count: int, seed: int, device: torch.device) -> list:
    """`count` corrupted TokenBatches of uniform ordinary tokens, [CLS] first and [SEP] last."""
    from .objectives import TokenBatch

    rng = torch.Generator().manual_seed(seed)
    first = max(vocab.special_ids) + 1
    out = []
    for _ in range(count):
        ids = torch.randint(first, vocab.size, (batch, seq), generator=rng)
        ids[:, 0] = vocab.cls
        ids[:, -1] = vocab.sep
        out.append(objective.corrupt(TokenBatch(ids), rng).to(device))
    return out


def predicted_fraction(batches: list, text_tokens_per_batch: int | None = None) -> float:
    """Positions with a label / text tokens (by default the encoder inputs' size) over `batches`."""
    predicted = sum(int(b.labels.ne(-100).sum()) for b in batches if b.labels is not None)
    return predicted / sum(text_tokens_per_batch or b.num_tokens for b in batches)


@dataclass
class Engine:
    """One model + optimizer + batches, stepping through the trainer's `train_step`."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: list
    autocast: Callable
    info: object
    params: int
    params_non_embedding: int
    flops_per_token: float
    clip_norm: float = 1.0
    text_shape: tuple[int, int] | None = None   # (batch, seq) of the text before corruption (MAE-LM drops tokens)
    flops_source: str = "mlm_formula"           # or "objective": its own train_flops_per_token
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)      # process CPU seconds (all threads) per step
    first_step_s: float | None = None                          # the very first step (compilation happens there)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)     # before clipping
    _next: int = 0

    def __post_init__(self) -> None:
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]

    @property
    def tokens_per_step(self) -> int:
        """Text tokens per step (the uncorrupted batch x seq), whatever the objective feeds the encoder."""
        B, T = self.text_shape or tuple(self.batches[0].input_ids.shape)
        return B * T

    def step(self, timed: bool) -> None:
        from .train.loop import train_step

        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        device = self.info.device
        synchronize(device)
        t, c = time.perf_counter(), time.process_time()
        result = train_step(self.model, self.optimizer, [batch], self.autocast, self.info,
                            self._trainable, self.clip_norm)
        synchronize(device)
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - t
        if timed:
            self.times.append(time.perf_counter() - t)
            self.cpu_times.append(time.process_time() - c)
        self.losses.append(result.loss)
        self.grad_norms.append(result.grad_norm)

    def report(self, dtype_name: str, peak_tflops: float, rss_mb: float) -> dict:
        med, mean = statistics.median(self.times), statistics.fmean(self.times)
        tps = self.tokens_per_step / med
        achieved = self.flops_per_token * tps / 1e12
        B, T = self.text_shape or tuple(self.batches[0].input_ids.shape)
        rec = {
            "engine": self.name,
            "batch": B, "seq": T, "dtype": dtype_name,
            "device": str(self.info.device), "threads": torch.get_num_threads(), "steps": len(self.times),
            "tokens_per_s": round(tps, 1), "tokens_per_s_mean": round(self.tokens_per_step / mean, 1),
            "step_ms_median": round(med * 1e3, 2), "step_ms_mean": round(mean * 1e3, 2),
            "step_ms_min": round(min(self.times) * 1e3, 2),
            "first_step_ms": round(self.first_step_s * 1e3, 1),
            "cpu_ms_median": round(statistics.median(self.cpu_times) * 1e3, 2),
            "peak_rss_mb": round(rss_mb, 1),
            "params": self.params, "params_non_embedding": self.params_non_embedding,
            "train_flops_per_token": self.flops_per_token, "flops_source": self.flops_source,
            "achieved_tflops": round(achieved, 4), "peak_tflops": round(peak_tflops, 4),
            "mfu": round(achieved / peak_tflops, 4),
            "last_loss": round(self.losses[-1], 4) if self.losses else None,
        }
        if self.info.device.type == "cuda":
            rec["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(self.info.device) / 2 ** 20, 1)
        return rec


def device_info(device: str):
    from .train.parallel import init_distributed
    return init_distributed(device)


def encoder_config(size: str, vocab_size: int):
    from .config import sized
    return sized(size, vocab_size=vocab_size)


def _apply_overrides(objective_name: str, size: str, cfg, objective_cfg, overrides):
    """`--set model.X=V objective.Y=W` through the config module's typed, checked parser."""
    from .config import RunConfig, apply_overrides
    from .data.loader import DataConfig
    from .errors import UserError
    from .train.loop import TrainConfig
    bad = [o for o in overrides if not o.startswith(("model.", "objective."))]
    if bad:
        raise UserError(f"--set {bad[0]}: bench takes model.* and objective.* keys only (batch, seq and dtype are flags)")
    run = apply_overrides(RunConfig(objective_name, size, cfg, objective_cfg, DataConfig(path=""), TrainConfig()),
                          list(overrides))
    return run.model, run.objective


def build_engine(objective_name: str, size: str, batch: int, seq: int, count: int, dtype: str,
                 vocab_size: int, info, seed: int = 0, compile_model: bool = False,
                 overrides: tuple[str, ...] = (), attention: str = "auto") -> Engine:
    """unimask's training setup, built the way `train.loop.train` builds it. `overrides` are
    `model.X=V` / `objective.X=V` assignments as `unimask pretrain --set` takes them; `compile_model`
    and `attention` are train.compile and train.attention."""
    from .objectives import OBJECTIVES, PretrainModel, Vocab
    from .model.encoder import Encoder
    from .train import parallel
    from .runtime import autocast_for
    from .train.loop import TrainConfig
    from .train.optim import build_optimizer

    tcfg = TrainConfig()
    cfg = encoder_config(size, vocab_size)
    objective_cfg = OBJECTIVES[objective_name].Config()
    if overrides:
        cfg, objective_cfg = _apply_overrides(objective_name, size, cfg, objective_cfg, overrides)
    if seq > cfg.max_positions:
        from .errors import UserError
        raise UserError(f"--seq {seq} exceeds the encoder's max_positions {cfg.max_positions}")
    torch.manual_seed(seed)
    vocab = Vocab(size=vocab_size)
    objective = OBJECTIVES[objective_name](objective_cfg, cfg, vocab)
    plain = PretrainModel(Encoder(cfg), objective)
    model = parallel.parallelize(plain, info, "ddp", compile_model, attention)
    optimizer = build_optimizer(model, tcfg.lr, (tcfg.beta1, tcfg.beta2), tcfg.adam_eps, tcfg.weight_decay)
    batches = random_batches(objective, vocab, batch, seq, count, seed, info.device)
    emb = plain.encoder.embeddings
    total, non_emb = count_params(plain, (emb.word, emb.position, emb.token_type))
    flops, source = objective_flops_per_token(objective, cfg, seq, predicted_fraction(batches, batch * seq))
    model.train()
    return Engine("unimask", model, optimizer, batches, autocast_for(dtype, info.device), info,
                  total, non_emb, flops, tcfg.clip_norm, text_shape=(batch, seq), flops_source=source)


def objective_flops_per_token(objective, cfg, seq: int, fraction: float) -> tuple[float, str]:
    """Training FLOPs per text token of `objective` on an encoder of `cfg` over sequences of `seq`
    tokens with `fraction` of them predicted, and where the figure comes from: an objective with
    auxiliary networks (generators, decoders) knows its own ("objective"); else MLM's formula."""
    own = getattr(objective, "train_flops_per_token", None)
    if callable(own):
        return float(own(seq, fraction)), "objective"
    return train_flops_per_token(cfg, seq, fraction), "mlm_formula"


def _busy_elsewhere(window: float = 0.25) -> float | None:
    """Fraction of all CPUs that other processes used during `window` seconds (we sleep meanwhile),
    from /proc/stat minus this process's own ticks; None where /proc is not available."""
    def sample():
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(cpu), cpu[3] + cpu[4], int(own[11]) + int(own[12])   # total, idle + iowait, utime + stime
    try:
        t0, i0, o0 = sample()
        time.sleep(window)
        t1, i1, o1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = max(t1 - t0, 1)
    return max(0.0, (total - (i1 - i0) - (o1 - o0)) / total)


def wait_until_quiet(max_wait: float, threshold: float = 0.15) -> bool:
    """Sleep until other processes use less than `threshold` of the machine, at most `max_wait`
    seconds; True if it became quiet (always True when max_wait is 0 or /proc is missing)."""
    deadline = time.monotonic() + max_wait
    while max_wait > 0:
        busy = _busy_elsewhere()
        if busy is None or busy < threshold:
            return True
        if time.monotonic() > deadline:
            return False
    return True


def run_interleaved(engines: list[Engine], warmup: int, steps: int, block: int, quiet_wait: float = 0.0) -> dict:
    """Warm each engine up, then time them in alternating blocks of `block` steps (A B A B ...), so
    slow phases of a noisy machine hit every engine alike. With `quiet_wait` > 0, each round of
    blocks first waits (up to that many seconds) until other processes leave the CPUs alone.
    Returns {"rounds": ..., "quiet_rounds": ...}."""
    for e in engines:
        for _ in range(warmup):
            e.step(timed=False)
    rounds = quiet = 0
    while any(len(e.times) < steps for e in engines):
        quiet += wait_until_quiet(quiet_wait)
        rounds += 1
        for e in engines:
            for _ in range(min(block, steps - len(e.times))):
                e.step(timed=True)
    return {"rounds": rounds, "quiet_rounds": quiet if quiet_wait > 0 else None}


def step_ratios(a: Engine, b: Engine) -> dict:
    """Engine a's step cost over engine b's, timed interleaved: from the median step times, in training
    FLOPs per step (what the arithmetic alone predicts), paired (the median of adjacent steps' ratios)
    and in CPU time."""
    return {"step_ms_median": round(statistics.median(a.times) / statistics.median(b.times), 3),
            "flops": round(a.flops_per_token * a.tokens_per_step / (b.flops_per_token * b.tokens_per_step), 3),
            "paired": round(statistics.median(x / y for x, y in zip(a.times, b.times)), 3),
            "cpu_ms_median": round(statistics.median(a.cpu_times) / statistics.median(b.cpu_times), 3)}


def compile_seconds(e: Engine) -> float:
    """What compilation added to a compiled engine's first step: that step minus its median step."""
    return round(e.first_step_s - statistics.median(e.times), 2)


# ---- CLI ------------------------------------------------------------------------------------------

def check_arguments(args: argparse.Namespace) -> None:
    import difflib

    from .errors import UserError
    from .objectives import OBJECTIVES
    for flag, name in (("--objective", getattr(args, "objective", None)), ("--against", getattr(args, "against", None))):
        if name is not None and name not in OBJECTIVES:
            near = difflib.get_close_matches(name, OBJECTIVES, 1)
            raise UserError(f"{flag} {name}: no such objective{f' (did you mean {near[0]}?)' if near else ''}; "
                            f"choose one of {', '.join(OBJECTIVES)}")
    for name in ("batch", "seq", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup must be at least 0")
    if args.seq < 3:
        raise UserError("--seq must be at least 3 ([CLS] x [SEP])")
    if args.vocab < 16:
        raise UserError("--vocab must be at least 16")


def dtype_that_runs(requested: str, device: torch.device) -> str:
    """`requested`, except bf16 on a CPU without bf16 instructions: torch would convert every bf16 matmul
    to fp32 there, so fp32 is timed instead (with one warning line) and its MFU is against the fp32 peak."""
    from .runtime import cpu_has_bf16
    if requested == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("warning: --dtype bf16: this CPU has no bf16 instructions (AVX512-BF16, AMX or Arm BF16), so bf16 "
              "would only be emulated; timing fp32 instead, MFU against the fp32 peak", file=sys.stderr)
        return "fp32"
    return requested


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    info = device_info(args.device)
    requested, args.dtype = args.dtype, dtype_that_runs(args.dtype, info.device)
    kept = keep_freed_memory_on(info.device, args.keep_freed_memory)
    wait_until_quiet(args.quiet_wait)
    measure_peak_tflops(DTYPES[args.dtype], info.device)

    def engine(name: str, compiled: bool, overrides: tuple[str, ...]) -> Engine:
        e = build_engine(name, args.size, args.batch, args.seq, args.warmup + args.steps, args.dtype, args.vocab,
                         info, args.seed, compiled, overrides, args.attention)
        e.name = f"unimask-{name}{'-compiled' if compiled and args.compare_compile else ''}"
        return e

    engines = [(args.objective, engine(args.objective, args.compile or args.compare_compile, tuple(args.overrides)))]
    if args.against:
        model_only = tuple(o for o in args.overrides if o.startswith("model."))
        engines.append((args.against, engine(args.against, args.compile, model_only)))
    elif args.compare_compile:
        engines.append((args.objective, engine(args.objective, False, tuple(args.overrides))))
    pair = len(engines) == 2
    rounds = run_interleaved([e for _, e in engines], args.warmup, args.steps,
                             block=1 if args.quiet_wait > 0 or pair else args.steps, quiet_wait=args.quiet_wait)
    rss = peak_rss_mb()                      # before the peak GEMMs allocate their operands
    wait_until_quiet(args.quiet_wait)
    peak = measure_peak_tflops(DTYPES[args.dtype], info.device)
    extra = {"overrides": args.overrides} if args.overrides else {}
    for i, (name, e) in enumerate(engines):
        rec = e.report(args.dtype, peak, rss)
        del rec["engine"]
        rec["keep_freed_memory"] = kept
        rec["compile"] = args.compile or (args.compare_compile and i == 0)
        if requested != args.dtype:
            rec["dtype_requested"] = requested
        if args.quiet_wait > 0:
            rec["quiet_steps"] = rounds["quiet_rounds"]
        print(json.dumps({"objective": name, "size": args.size, **(extra if i == 0 else {}), **rec}), flush=True)
    if pair:
        label = (f"{args.objective} compiled step / eager step" if args.compare_compile
                 else f"{args.objective} step / {args.against} step")
        rec = {"ratio": label, "size": args.size, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
               **step_ratios(engines[0][1], engines[1][1])}
        if args.compare_compile:
            rec["compile_s"] = compile_seconds(engines[0][1])
        print(json.dumps(rec), flush=True)
    return 0
