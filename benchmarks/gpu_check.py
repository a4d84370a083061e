"""One prepared check for a GPU session: correctness on the device, throughput and MFU, transformers
side by side, a mini pretraining with resume and FSDP, fine-tuning and generation.

    python benchmarks/gpu_check.py --device cuda --out gpu_check            # under 8 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/check     # tiny sizes, on the CPU (tests)

On a lent GPU machine (the package not installed, no ../shared beside the checkout, only $OUT comes
back) run what `python benchmarks/gpu_check_pack.py` prints after it has packed gpu_pack/ here: the
data and wheels travel in `carry`, the results go to $OUT and the work files to --work.

Every figure is printed as a JSON line when it is measured, and OUT/gpu_check.json and
OUT/gpu_check.md are rewritten (atomically) after each one: a run killed at any moment keeps what it
measured. Each part has a time cap, its share of --budget-minutes plus what the earlier parts left
unused: an item that would start past the cap is recorded as skipped, a CLI run still going at the
cap is killed and recorded as timed out, and a part that fails records its error and the check goes
on with the next. Work files (corpus, data, runs) go to OUT/work.

Parts:
  correctness   each objective at tiny size: one fp32 step on the device against the same step on the
                CPU from the same weights and batch (dropout 0; ELECTRA and COCO-LM sample at
                temperature 1e-6, the generator's argmax, so both devices replace the same tokens;
                TF32 off): loss and gradient norm within tolerance; the bf16 autocast step finite; the
                compiled blocks (train.compile) and, on CUDA, the flex_attention kernel against the
                eager SDPA step on the device.
  throughput    base size, seq 128 and 512, bf16, per objective: tokens/s, MFU against the bf16 GEMM
                peak measured in this run (bench.measure_peak_tflops), peak memory; compile off, the
                flex and SDPA kernels at attention dropout 0 for the objectives with a relative bias
                or a layout (CUDA), then compile on (the compile time apart). Steps go through the
                trainer's train_step (bench.Engine).
  transformers  BertForMaskedLM (sdpa) against unimask's MLM at the same size, batch and dtype,
                interleaved in this process (benchmarks/hf_compare.py's engine): the ratio.
  pretrain      a mini MLM on the shared Wikipedia sample (--shared, default ../shared/data:
                corpus/enwiki_sample.txt.gz, the first articles) through `unimask prepare` and `unimask pretrain`: the loss falls,
                checkpoints are written, the last steps rerun from a checkpoint (--resume) equal the
                run's; `torchrun --nproc-per-node 1 -m unimask pretrain --set train.parallel=fsdp`
                for a few steps against the same steps of the plain run (same warm-up, same lrs).
  finetune      that checkpoint on SST-2 for one epoch (`unimask finetune --task sst2`); a short
                seq2seq fine-tuning on question generation, then generation throughput with and
                without key/value reuse (benchmarks/generation_speed.py's `measure`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import torch

import unimask
from unimask import bench
from unimask.objectives import OBJECTIVES
from unimask.runtime import tf32_matmuls
from unimask.train.parallel import DistInfo

REPO = Path(__file__).resolve().parents[1]
_CHEAP_FIRST = ("mlm", "pmlm", "cocolm", "electra", "maelm")
OBJECTIVE_ORDER = tuple(sorted(OBJECTIVES, key=lambda n: _CHEAP_FIRST.index(n) if n in _CHEAP_FIRST else 99))
NO_DROPOUT = ("model.dropout=0", "model.attention_dropout=0")
ARGMAX_SAMPLING = {"electra": ("objective.temperature=1e-6",), "cocolm": ("objective.generator_temperature=1e-6",)}
FLEX_OBJECTIVES = ("cocolm", "pmlm")       # a relative bias (COCO-LM's recipe) / PMLM's layout
TOLERANCE = {"loss": 1e-4, "grad_norm": 1e-3}     # relative, fp32 (TF32 off) device vs CPU / compiled vs eager


@dataclass(frozen=True)
class Plan:
    """The sizes of every part; FULL for a GPU, SMOKE for the CPU (tests)."""

    vocab: int                                  # random-batch vocabulary (correctness, throughput, transformers)
    check_shape: tuple[int, int]                # correctness: (batch, seq) at tiny size
    compile_checks: tuple[str, ...]             # objectives whose compiled step is checked
    size: str                                   # throughput and transformers
    shapes: tuple[tuple[int, int], ...]         # throughput (seq, batch)
    steps: int
    warmup: int
    compile_shapes: tuple[tuple[int, int], ...]
    compile_objectives: tuple[str, ...]
    hf_shape: tuple[int, int]                   # (seq, batch)
    recipe: str
    pretrain_steps: int
    resume_steps: int
    pretrain_shape: tuple[int, int]             # (seq, batch)
    warmup_steps: int                           # >= fsdp_steps: the FSDP run's lrs equal the plain run's
    fsdp_steps: int
    eval_batches: int
    corpus_chars: int
    corpus_vocab: int
    sst2_examples: int                          # 0: all
    sst2_length: int
    qg_train: int
    qg_dev: int
    gen_sources: int
    gen_beams: tuple[int, ...]
    gen_rounds: int
    shares: tuple[float, ...] = (0.18, 0.32, 0.08, 0.22, 0.20)   # of the budget, in part order


# compiling costs 20-40 s per objective and shape with a cold cache, so within 8 minutes the compiled
# checks and timings are MLM's and PMLM's (its blocks also run through Block.step with cached keys)
FULL = Plan(vocab=30522, check_shape=(8, 128), compile_checks=("mlm", "pmlm"), size="base",
            shapes=((128, 64), (512, 16)), steps=10, warmup=3, compile_shapes=((512, 16),),
            compile_objectives=("mlm",), hf_shape=(128, 32), recipe="mlm_mini", pretrain_steps=300,
            resume_steps=50, pretrain_shape=(128, 32), warmup_steps=30, fsdp_steps=20, eval_batches=10,
            corpus_chars=8_000_000, corpus_vocab=30522, sst2_examples=0, sst2_length=64, qg_train=2000,
            qg_dev=32, gen_sources=512, gen_beams=(1, 5), gen_rounds=2)
# the smoke compiles once (the correctness check; inductor's C++ build is most of its time on the CPU)
SMOKE = Plan(vocab=1000, check_shape=(2, 16), compile_checks=("mlm",), size="tiny", shapes=((16, 4),),
             steps=1, warmup=1, compile_shapes=(), compile_objectives=(), hf_shape=(32, 4),
             recipe="mlm_tiny", pretrain_steps=6, resume_steps=2, pretrain_shape=(32, 4), warmup_steps=4,
             fsdp_steps=2, eval_batches=1, corpus_chars=150_000, corpus_vocab=1000, sst2_examples=48,
             sst2_length=32, qg_train=24, qg_dev=4, gen_sources=8, gen_beams=(2,), gen_rounds=1,
             shares=(0.2, 0.2, 0.1, 0.25, 0.25))


class Skip(Exception):
    """An item not run (no time left in its part, nothing to run it on); recorded, not an error."""


# ---- the report -------------------------------------------------------------------------------------

class Report:
    """OUT/gpu_check.json and .md, rewritten after every figure; each figure is also printed."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out, self.data = out, {"meta": meta, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.write()

    def part(self, name: str, cap_s: float) -> dict:
        self.data["parts"][name] = {"status": "running", "cap_s": round(cap_s, 1), "seconds": 0.0, "figures": []}
        self.write()
        return self.data["parts"][name]

    def figure(self, part: str, record: dict) -> None:
        self.data["parts"][part]["figures"].append(record)
        print(json.dumps({"part": part, **record}), flush=True)
        self.write()

    def finish(self, part: str, status: str, seconds: float, note: str = "") -> None:
        entry = self.data["parts"][part]
        entry.update(status=status, seconds=round(seconds, 1), **({"note": note} if note else {}))
        print(json.dumps({"part": part, "status": status, "seconds": entry["seconds"],
                          **({"note": note} if note else {})}), flush=True)
        self.write()

    def write(self) -> None:
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=2, default=str) + "\n"),
                           ("gpu_check.md", markdown(self.data))):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out / name)


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [f"# unimask GPU check: {meta['device_name']}", "",
             ", ".join(f"{k} {v}" for k, v in meta.items() if k != "device_name"), ""]
    for name, part in data["parts"].items():
        lines += [f"## {name}: {part['status']} ({part['seconds']:.0f} s of a {part['cap_s']:.0f} s cap)", ""]
        if part.get("note"):
            lines += [part["note"], ""]
        figures = part["figures"]
        columns = list(dict.fromkeys(k for f in figures for k in f))
        if figures:
            lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
            lines += ["| " + " | ".join(_cell(f.get(c)) for c in columns) + " |" for f in figures]
            lines.append("")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


class Clock:
    """The global deadline and one part's cap (its share plus what earlier parts left unused)."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.start, self.saved = budget_s, time.monotonic(), 0.0
        self.part_end = self.start

    def open(self, share: float) -> float:
        now = time.monotonic()
        cap = min(share * self.budget_s + self.saved, self.start + self.budget_s - now)
        self.part_start, self.part_end, self.cap = now, now + max(cap, 0.0), max(cap, 0.0)
        return self.cap

    def close(self) -> float:
        used = time.monotonic() - self.part_start
        self.saved = max(0.0, self.cap - used)
        return used

    def left(self) -> float:
        return self.part_end - time.monotonic()

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise Skip(f"{what}: {max(self.left(), 0):.0f} s left in the part's cap, wants about {seconds:.0f} s")


# ---- helpers ----------------------------------------------------------------------------------------

def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def engine(name: str, size: str, shape: tuple[int, int], dtype: str, plan: Plan, info: DistInfo, count: int = 1,
           compiled: bool = False, overrides: tuple[str, ...] = (), attention: str = "auto") -> bench.Engine:
    batch, seq = shape
    return bench.build_engine(name, size, batch, seq, count, dtype, plan.vocab, info, 0, compiled, overrides,
                              attention)


def one_step(e: bench.Engine) -> tuple[float, float]:
    e.step(timed=False)
    return e.losses[-1], e.grad_norms[-1]


def cli(clock: Clock, args: list[str], torchrun: bool = False, min_s: float = 5.0) -> tuple[float, str]:
    """Run `unimask ARGS` (under torchrun with one process) with the part's time left as its timeout;
    returns (seconds, stderr). A failure raises with the end of its stderr."""
    clock.need(min_s, f"unimask {args[0]}")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
                if torchrun else [sys.executable])
    src = str(Path(unimask.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    started = time.perf_counter()
    # at the cap the run must go with its workers, so nothing keeps the GPU busy during the next part:
    # SIGTERM, which torchrun passes on to its workers (they run in sessions of their own), then SIGKILL
    # to the launcher's process group
    proc = subprocess.Popen([*launcher, "-m", "unimask", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=max(clock.left(), 1.0))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise Skip(f"unimask {args[0]} timed out at the part's cap ({time.perf_counter() - started:.0f} s)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"unimask {' '.join(args[:1])} exited with {proc.returncode}: {stderr[-1500:]}")
    return time.perf_counter() - started, stderr


def train_records(run: Path, split: str = "train") -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == split and r.get("loss") is not None}


# ---- parts ------------------------------------------------------------------------------------------

def attempt(report: Report, part: str, label: dict, device: torch.device, body) -> None:
    """Run one item; an error becomes a failed figure (with `label`) and the part goes on. Skip passes."""
    try:
        body()
    except Skip:
        raise
    except Exception as e:                       # one item's failure must not cost the part's others
        report.figure(part, {**label, "ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"})
    finally:
        free(device)


def correctness(report: Report, clock: Clock, plan: Plan, device: torch.device) -> None:
    for name in OBJECTIVE_ORDER:
        clock.need(3, name)
        check = f"fp32 {device.type} vs cpu"
        attempt(report, "correctness", {"objective": name, "check": check}, device,
                lambda: device_against_cpu(report, plan, device, name, check))
    variants = []
    if device.type == "cuda" and bench_flex_available():
        variants += [(name, "flex", dict(attention="flex")) for name in FLEX_OBJECTIVES]
    variants += [(name, "compiled", dict(compiled=True, attention="sdpa")) for name in plan.compile_checks]
    for name, label, kw in variants:
        clock.need(30 if label == "compiled" else 10, f"{name} {label}")
        check = f"{label} vs eager sdpa ({device.type}, fp32)"
        attempt(report, "correctness", {"objective": name, "check": check}, device,
                lambda: variant_against_eager(report, plan, device, name, check, label, kw))


def device_against_cpu(report: Report, plan: Plan, device: torch.device, name: str, check: str) -> None:
    """One fp32 step on `device` and on the CPU from the same weights and batch; then bf16 on `device`."""
    overrides = NO_DROPOUT + ARGMAX_SAMPLING.get(name, ())
    ref = engine(name, "tiny", plan.check_shape, "fp32", plan, DistInfo(), overrides=overrides)
    ours = engine(name, "tiny", plan.check_shape, "fp32", plan, DistInfo(device=device), overrides=overrides)
    tf32_matmuls(device, False)
    try:
        (loss_cpu, norm_cpu), (loss, norm) = one_step(ref), one_step(ours)
    finally:
        tf32_matmuls(device, True)
    bf16 = engine(name, "tiny", plan.check_shape, "bf16", plan, DistInfo(device=device), overrides=overrides)
    loss_bf16, norm_bf16 = one_step(bf16)
    finite = math.isfinite(loss_bf16) and math.isfinite(norm_bf16)
    ok = rel(loss, loss_cpu) <= TOLERANCE["loss"] and rel(norm, norm_cpu) <= TOLERANCE["grad_norm"]
    report.figure("correctness", {
        "objective": name, "check": check, "ok": ok and finite, "loss": round(loss, 6), "loss_cpu": round(loss_cpu, 6),
        "loss_rel_diff": f"{rel(loss, loss_cpu):.1e}", "grad_norm_rel_diff": f"{rel(norm, norm_cpu):.1e}",
        "bf16_loss": round(loss_bf16, 6), "bf16_finite": finite})


def variant_against_eager(report: Report, plan: Plan, device: torch.device, name: str, check: str, label: str,
                          kw: dict) -> None:
    """One fp32 step with compiled blocks or the flex kernel against the eager SDPA step, same weights
    and batch, on `device`; the variant's first step time (compilation) with it."""
    overrides = NO_DROPOUT + ARGMAX_SAMPLING.get(name, ()) + (("model.relative_buckets=32",) if label == "flex" else ())
    torch._dynamo.reset()
    info = DistInfo(device=device)
    plain = engine(name, "tiny", plan.check_shape, "fp32", plan, info, overrides=overrides, attention="sdpa")
    other = engine(name, "tiny", plan.check_shape, "fp32", plan, info, overrides=overrides, **kw)
    tf32_matmuls(device, False)
    try:
        loss_a, norm_a = one_step(plain)
        started = time.perf_counter()
        loss_b, norm_b = one_step(other)
        seconds = time.perf_counter() - started
    finally:
        tf32_matmuls(device, True)
    report.figure("correctness", {
        "objective": name, "check": check,
        "ok": rel(loss_b, loss_a) <= TOLERANCE["loss"] and rel(norm_b, norm_a) <= TOLERANCE["grad_norm"],
        "loss": round(loss_b, 6), "loss_rel_diff": f"{rel(loss_b, loss_a):.1e}",
        "grad_norm_rel_diff": f"{rel(norm_b, norm_a):.1e}", "first_step_s": round(seconds, 1)})


def bench_flex_available() -> bool:
    from unimask.model import encoder
    return encoder.flex_attention is not None


def throughput(report: Report, clock: Clock, plan: Plan, device: torch.device) -> None:
    info = DistInfo(device=device)
    report.figure("throughput", {"measure": "bf16 GEMM peak", "peak_tflops": round(
        bench.measure_peak_tflops(torch.bfloat16, device), 2)})
    items = [(name, shape, False, (), "auto") for shape in plan.shapes for name in OBJECTIVE_ORDER]
    if device.type == "cuda" and bench_flex_available():
        items += [(name, plan.shapes[-1], False, ("model.attention_dropout=0", "model.relative_buckets=32"), kernel)
                  for name in FLEX_OBJECTIVES for kernel in ("sdpa", "flex")]
    items += [(name, shape, True, (), "auto") for shape in plan.compile_shapes for name in plan.compile_objectives]
    eager_tps: dict[tuple[str, tuple[int, int]], float] = {}
    for name, (seq, batch), compiled, overrides, kernel in items:
        clock.need(60 if compiled and device.type == "cuda" else 5, f"{name} seq {seq}{' compiled' if compiled else ''}")
        label = {"objective": name, "seq": seq, "batch": batch, "compile": compiled,
                 "attention": kernel if overrides else "auto"}
        attempt(report, "throughput", label, device,
                lambda: rate(report, plan, info, label, overrides, eager_tps))


def rate(report: Report, plan: Plan, info: DistInfo, label: dict, overrides: tuple[str, ...],
         eager_tps: dict) -> None:
    """Tokens/s, MFU, peak memory (and the compile time) of one objective at one shape, bf16."""
    name, seq, batch, compiled = label["objective"], label["seq"], label["batch"], label["compile"]
    torch._dynamo.reset()
    e = engine(name, plan.size, (batch, seq), "bf16", plan, info, plan.warmup + plan.steps, compiled, overrides,
               label["attention"] if overrides else "auto")
    bench.run_interleaved([e], plan.warmup, plan.steps, plan.steps)
    rec = e.report("bf16", bench.measure_peak_tflops(torch.bfloat16, info.device), bench.peak_rss_mb())
    key = (name, (seq, batch))
    if not compiled and not overrides:
        eager_tps[key] = rec["tokens_per_s"]
    figure = {**label, "tokens_per_s": rec["tokens_per_s"], "step_ms": rec["step_ms_median"], "mfu": rec["mfu"],
              "achieved_tflops": rec["achieved_tflops"], "peak_mem_mb": rec.get("peak_cuda_mb", rec["peak_rss_mb"]),
              "compile_s": bench.compile_seconds(e) if compiled else None,
              "speedup_vs_eager": round(rec["tokens_per_s"] / eager_tps[key], 3) if compiled and key in eager_tps else None,
              "last_loss": rec["last_loss"]}
    if overrides:
        figure["note"] = "attention dropout 0, relative bias 32"
    report.figure("throughput", figure)


def transformers_compare(report: Report, clock: Clock, plan: Plan, device: torch.device) -> None:
    try:
        import transformers
    except ImportError:
        raise Skip("transformers is not installed") from None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hf_compare import build_hf_engine, paired_ratio

    clock.need(10, "transformers")
    seq, batch = plan.hf_shape
    info = DistInfo(device=device)
    free(device)
    ours = engine("mlm", plan.size, (batch, seq), "bf16", plan, info, plan.warmup + plan.steps)
    args = argparse.Namespace(size=plan.size, vocab=plan.vocab, seed=0, seq=seq, dtype="bf16")
    theirs = build_hf_engine(args, info, ours.batches)                # the very same corrupted batches
    bench.run_interleaved([theirs, ours], plan.warmup, plan.steps, block=1)
    peak = bench.measure_peak_tflops(torch.bfloat16, device)
    recs = {e.name: e.report("bf16", peak, bench.peak_rss_mb()) for e in (ours, theirs)}
    for e_name, rec in recs.items():
        report.figure("transformers", {"engine": e_name, "size": plan.size, "seq": seq, "batch": batch,
                                       "tokens_per_s": rec["tokens_per_s"], "step_ms": rec["step_ms_median"],
                                       "mfu": rec["mfu"], "transformers": transformers.__version__})
    report.figure("transformers", {
        "engine": "unimask / transformers", "tokens_per_s": round(recs["unimask"]["tokens_per_s"]
                                                                  / recs["transformers"]["tokens_per_s"], 3),
        "paired": round(paired_ratio(ours.times, theirs.times, 1), 3),
        "peak_mem_mb": recs["unimask"].get("peak_cuda_mb"), "note": "peak memory: both engines, one process"})


def corpus(work: Path, plan: Plan, shared: Path) -> tuple[Path, str]:
    """The first articles of the Wikipedia sample (whole articles, about plan.corpus_chars), or the
    built-in corpus when the sample is not there."""
    source = shared / "corpus" / "enwiki_sample.txt.gz"
    out = work / "corpus.txt"
    if not source.exists():
        from unimask.data.default_corpus import kjv_jsonl, write_chapters
        write_chapters(kjv_jsonl(), out)
        text = out.read_text(encoding="utf-8")
        out.write_text(text[:plan.corpus_chars].rsplit("\n\n", 1)[0] + "\n", encoding="utf-8")
        return out, f"King James Bible ({source} is not there)"
    taken, parts = 0, []
    with gzip.open(source, "rt", encoding="utf-8") as f:
        for line in f:
            parts.append(line)
            taken += len(line)
            if taken >= plan.corpus_chars and line.strip() == "":
                break
    out.write_text("".join(parts), encoding="utf-8")
    return out, f"{source.name}: the first {taken:,} characters"


def pretrain(report: Report, clock: Clock, plan: Plan, device: torch.device, work: Path, shared: Path) -> Path:
    from unimask import cli as unimask_cli

    text, what = corpus(work, plan, shared)
    data = work / "data"
    started = time.perf_counter()
    if unimask_cli.main(["prepare", "--text", str(text), "--out", str(data), "--vocab-size", str(plan.corpus_vocab),
                         "--overwrite"]):
        raise RuntimeError("unimask prepare failed (its error is above)")
    report.figure("pretrain", {"run": "prepare", "ok": (data / "manifest.json").exists(), "corpus": what,
                               "seconds": round(time.perf_counter() - started, 1)})
    seq, batch = plan.pretrain_shape
    total, resume_from = plan.pretrain_steps, plan.pretrain_steps - plan.resume_steps
    common = ["--recipe", plan.recipe, "--data", str(data), "--quiet", "--set", f"train.device={device.type}",
              "--set", f"data.seq_len={seq}", "--set", f"train.batch_size={batch}", "--set", "train.log_every=1",
              "--set", "train.eval_every=0", "--set", f"train.eval_batches={plan.eval_batches}",
              "--set", f"train.warmup_steps={plan.warmup_steps}"]
    run = work / "pretrain"
    shutil.rmtree(run, ignore_errors=True)
    seconds, _ = cli(clock, ["pretrain", "--out", str(run), *common, "--set", f"train.steps={total}",
                             "--set", f"train.save_at={resume_from}"])
    losses = train_records(run)
    k = max(1, min(10, total // 4))
    first, last = statistics.fmean(losses[s] for s in range(1, k + 1)), statistics.fmean(
        losses[s] for s in range(total - k + 1, total + 1))
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report.figure("pretrain", {"run": f"{plan.recipe} {total} steps", "ok": last < first and len(checkpoints) >= 2,
                               "loss_first": round(first, 4), "loss_last": round(last, 4),
                               "valid_loss": train_records(run, "valid").get(total),
                               "tokens_per_s": round(rows[-2]["tokens_per_s"]) if len(rows) > 1 else None,
                               "checkpoints": " ".join(checkpoints), "seconds": round(seconds, 1)})

    resumed = work / "pretrain_resumed"
    shutil.rmtree(resumed, ignore_errors=True)
    shutil.copytree(run, resumed)
    for step_dir in (resumed / "checkpoints").iterdir():
        if step_dir.name.startswith("step_") and int(step_dir.name.split("_")[1]) > resume_from:
            shutil.rmtree(step_dir)
    seconds, _ = cli(clock, ["pretrain", "--out", str(resumed), "--resume", "--quiet"])
    again = train_records(resumed)
    steps = list(range(resume_from + 1, total + 1))
    diffs = [abs(again[s] - losses[s]) for s in steps]
    valid_a, valid_b = train_records(run, "valid").get(total), train_records(resumed, "valid").get(total)
    exact = all(again[s] == losses[s] for s in steps) and valid_a == valid_b
    report.figure("pretrain", {"run": f"resume at {resume_from}, {len(steps)} steps", "ok": exact or (
        device.type == "cuda" and max(diffs) <= 1e-3 * abs(losses[total])), "exact": exact,
                               "max_abs_diff": f"{max(diffs):.1e}", "valid_loss": valid_b,
                               "seconds": round(seconds, 1)})

    fsdp = work / "pretrain_fsdp"
    shutil.rmtree(fsdp, ignore_errors=True)
    seconds, _ = cli(clock, ["pretrain", "--out", str(fsdp), *common, "--set", f"train.steps={plan.fsdp_steps}",
                             "--set", "train.parallel=fsdp"], torchrun=True)
    sharded = train_records(fsdp)
    diff = max(rel(sharded[s], losses[s]) for s in range(1, plan.fsdp_steps + 1))
    report.figure("pretrain", {"run": f"torchrun 1 process, fsdp, {plan.fsdp_steps} steps",
                               "ok": diff <= 1e-3 and any((fsdp / "checkpoints").glob("step_*")),
                               "max_rel_diff_vs_plain": f"{diff:.1e}", "loss_last": round(sharded[plan.fsdp_steps], 4),
                               "seconds": round(seconds, 1)})
    return run


def finetune(report: Report, clock: Clock, plan: Plan, device: torch.device, work: Path, shared: Path,
             run: Path) -> None:
    sst2 = shared / "glue" / "SST-2"
    if sst2.exists():
        sst2_finetuning(report, clock, plan, device, work, sst2, run)
    else:
        report.figure("finetune", {"run": "sst2", "skipped": f"{sst2} is not there"})
    qg = shared / "qg"
    if not qg.exists():
        raise Skip(f"{qg} is not there")
    seq2seq_and_generation(report, clock, plan, device, work, qg, run)


def sst2_finetuning(report: Report, clock: Clock, plan: Plan, device: torch.device, work: Path, sst2: Path,
                    run: Path) -> None:
    out = work / "sst2"
    args = ["finetune", "--checkpoint", str(run), "--task", "sst2", "--data", str(sst2), "--epochs", "1",
            "--out", str(out), "--overwrite", "--quiet", "--device", device.type, "--max-length", str(plan.sst2_length)]
    if plan.sst2_examples:
        args += ["--max-train-examples", str(plan.sst2_examples)]
    seconds, _ = cli(clock, args)
    results = json.loads((out / "results.json").read_text())
    dev = results["summary"]["dev"]
    report.figure("finetune", {"run": "sst2, 1 epoch", "ok": dev["accuracy"]["best"] > 0,
                               "dev_accuracy": round(dev["accuracy"]["best"], 2),
                               "train_examples": results["train_examples"],
                               "train_examples_per_s": round(results["train_examples"] / results["runs"][0]["seconds"], 1)
                               if results["runs"][0]["seconds"] else None, "seconds": round(seconds, 1)})


def seq2seq_and_generation(report: Report, clock: Clock, plan: Plan, device: torch.device, work: Path, qg: Path,
                           run: Path) -> None:
    src, tgt = ((qg / f"{kind}-dev.txt").read_text(encoding="utf-8").splitlines() for kind in ("src", "tgt"))
    files = {}
    for split, lines in (("train", slice(0, plan.qg_train)), ("dev", slice(plan.qg_train, plan.qg_train + plan.qg_dev))):
        for kind, rows in (("src", src), ("tgt", tgt)):
            files[f"{split}-{kind}"] = work / f"qg-{split}.{kind}"
            files[f"{split}-{kind}"].write_text("\n".join(rows[lines]) + "\n", encoding="utf-8")
    out = work / "qg"
    seconds, _ = cli(clock, ["finetune", "--checkpoint", str(run), "--task", "seq2seq", "--epochs", "1",
                             *[a for k, p in files.items() for a in (f"--{k}", str(p))], "--out", str(out),
                             "--overwrite", "--quiet", "--device", device.type, "--beam", "1"])
    results = json.loads((out / "results.json").read_text())
    report.figure("finetune", {"run": f"seq2seq (question generation), {plan.qg_train} pairs, 1 epoch", "ok": True,
                               "dev": json.dumps({m: round(v["best"], 2) for m, v in results["summary"]["dev"].items()}),
                               "seconds": round(seconds, 1)})
    clock.need(5, "generation")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generation_speed import measure

    lines = (qg / "src-test.txt").read_text(encoding="utf-8").splitlines()[:plan.gen_sources]
    for rec in measure(str(out), lines, plan.gen_beams, 32, plan.gen_rounds, device=str(device)):
        report.figure("finetune", {"run": f"generate, beam {rec['beam']}, {'kv cache' if rec['kv_cache'] else 'no cache'}",
                                   # a 1-epoch model has near-tied beams that cached and uncached attention
                                   # (SDPA / flex, TF32 on CUDA) may order differently: reported, not failed
                                   "same_outputs": rec["same_as_cached"],
                                   "sentences_per_s": rec["sentences_per_s"],
                                   "speedup_of_cache": rec["speedup_of_cache"] if rec["kv_cache"] else None,
                                   "sentences": rec["sentences"], "seconds": rec["seconds"]})


# ---- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", required=True, help="the folder for gpu_check.json and gpu_check.md")
    p.add_argument("--work", default=None, help="the folder for the corpus, data and runs (default OUT/work); on "
                                                "a lent GPU machine one outside $OUT (see gpu_check_pack.py)")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="the whole check's time budget")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and few steps (the CPU test)")
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), metavar="DIR",
                   help="the shared data: corpus/enwiki_sample.txt.gz, glue/SST-2, qg (default ../shared/data)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no CUDA device (use --device cpu --smoke)")
    plan = SMOKE if args.smoke else FULL
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)
    meta = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device": str(device), "smoke": args.smoke, "torch": torch.__version__, "budget_minutes": args.budget_minutes,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": torch.get_num_threads(),
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()), "plan": json.dumps(dataclasses.asdict(plan))}
    report = Report(out, meta)
    clock = Clock(args.budget_minutes * 60)
    from unimask.train.malloc import keep_freed_memory_on
    keep_freed_memory_on(device)                               # as the trainer and bench do
    tf32_matmuls(device)
    run = None
    parts = [("correctness", lambda: correctness(report, clock, plan, device)),
             ("throughput", lambda: throughput(report, clock, plan, device)),
             ("transformers", lambda: transformers_compare(report, clock, plan, device)),
             ("pretrain", lambda: pretrain(report, clock, plan, device, work, Path(args.shared))),
             ("finetune", lambda: finetune(report, clock, plan, device, work, Path(args.shared), run))]
    for (name, body), share in zip(parts, plan.shares):
        cap = clock.open(share)
        report.part(name, cap)
        status, note = "ok", ""
        try:
            if name == "finetune" and run is None:
                raise Skip("no pretraining checkpoint")
            result = body()
            run = result if name == "pretrain" else run
        except Skip as e:
            status, note = "skipped", str(e)
        except Exception as e:                       # one failing part must not cost the others
            status, note = "error", f"{type(e).__name__}: {e} | {traceback.format_exc(limit=3)[-800:]}"
        figures = report.data["parts"][name]["figures"]
        if status == "ok" and not all(f.get("ok", True) for f in figures):
            status = "failed"
        elif status == "skipped" and figures:
            status = "partial"
        report.finish(name, status, clock.close(), note)
    statuses = [part["status"] for part in report.data["parts"].values()]
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}: " + ", ".join(
        f"{n} {s}" for n, s in zip(report.data["parts"], statuses)), flush=True)
    return 0 if all(s in ("ok", "partial", "skipped") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
