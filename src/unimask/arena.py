"""`unimask arena`: pretraining objectives side by side at equal compute, with one evaluation protocol.

Each contestant is an ordinary, resumable pretraining run (OUT/runs/OBJECTIVE) of the
`OBJECTIVE_SIZE` recipe on the same prepared data, with the same sequence length, batch size and
seed (so the same data order) and the same schedule shape: linear warm-up over `warmup_fraction`
of its own steps, then linear decay to zero at its last step, so no run is cut off inside its
warm-up. The budget is training FLOPs per contestant as `unimask bench` counts them (model/flops.py,
each objective's `train_flops_per_token`: generators, decoders and pseudo-masks included), or
wall-clock minutes, turned into steps by timing a few steps of each contestant first. Steps =
budget / FLOPs per step, rounded down, so the contestants' budgets agree within one step.

Checkpoints at `points` evenly spaced fractions of each run (`train.save_at`) are evaluated, as
soon as the run ends, by the same protocol: the frozen-feature probe (tasks/probe.py: the best layer and pooling on dev) and
fine-tuning with a fixed lr x seed sweep (tasks/finetune.py: the median over seeds at the best lr),
on GLUE tasks; random init of each contestant's architecture is the floor. OUT/arena.json and
OUT/arena.md hold the table, OUT/arena_flops.png and OUT/arena_time.png the curves (score against
training FLOPs and against training wall-clock, one line per objective). Running the same command
again resumes an interrupted arena: finished runs and evaluations are read back, an unfinished run
continues from its last checkpoint. `jobs` > 1 runs contestants side by side (`run_arena`).

Claims it lets users check (Clark et al. 2020, section 3.3; Meng et al. 2021, section 5.1; Meng et
al. 2024, table 1; Bao et al. 2020, table 6): ELECTRA and COCO-LM beat MLM at equal compute, MAE-LM
beats MLM, PMLM's AE + PAR beats AE alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Stopped, UserError

SCHEDULE_KEYS = ("train.steps", "train.warmup_steps", "train.schedule", "train.min_lr_ratio", "train.save_at",
                 "train.save_every", "train.time_budget_minutes", "data.path", "objective_name", "size")
"""Fields the arena sets itself; a `--set` of one of them would break equal compute."""


@dataclass
class ArenaConfig:
    """The contest; each field is an `unimask arena` flag."""

    objectives: tuple[str, ...] = ("mlm", "electra", "cocolm", "maelm", "pmlm")
    size: str = "mini"
    tflops: float = 0.0                 # training budget per contestant, in 1e12 FLOPs (model/flops.py count)
    minutes: float = 0.0                # or wall-clock minutes of training per contestant
    points: int = 4                     # evaluations at 1/points, 2/points, ..., 1 of each run
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 0.0                     # peak learning rate for every contestant; 0: each recipe's own
    warmup_fraction: float = 0.06
    seed: int = 0
    calibration_steps: int = 8          # --minutes: steps timed per contestant to find its step time
    overrides: tuple[str, ...] = ()     # `--set KEY=VALUE` applied to every contestant

    def __post_init__(self) -> None:
        from .objectives import OBJECTIVES
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        checks = [
            (not unknown, f"unknown objective {unknown[0] if unknown else ''!r}; choose from {', '.join(OBJECTIVES)}"),
            (len(set(self.objectives)) == len(self.objectives) > 0, "name each objective once"),
            ((self.tflops > 0) != (self.minutes > 0), "give one budget: --tflops or --minutes"),
            (self.points >= 1, "--points must be at least 1"),
            (self.seq_len >= 8 and self.batch_size >= 1, "--seq-len must be >= 8 and --batch-size >= 1"),
            (self.lr >= 0 and 0 <= self.warmup_fraction < 1, "--lr must be >= 0 and --warmup-fraction in [0, 1)"),
            (self.calibration_steps >= 3, "--calibration-steps must be at least 3"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"arena: {message}")
        for item in self.overrides:
            if item.partition("=")[0] in SCHEDULE_KEYS:
                raise UserError(f"arena: --set {item}: the arena sets {item.partition('=')[0]} itself (equal compute); "
                                "drop it")


@dataclass
class EvalConfig:
    """How every checkpoint (and random init) is scored; GLUE tasks from `glue`/<task folder>."""

    glue: str = ""
    probe: tuple[str, ...] = ()             # GLUE classification tasks for the frozen-feature probe
    finetune: tuple[str, ...] = ()          # GLUE tasks to fine-tune
    lrs: tuple[float, ...] = (1e-4,)
    seeds: tuple[int, ...] = (1,)
    epochs: float = 1.0
    max_train_examples: int = 2000          # fine-tuning and probe: the first N training examples (0: all)
    max_length: int = 128                   # tokens per input (at most the model's positions)
    precision: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        from .tasks.glue import GLUE, GLUE_DIRS
        if not (self.probe or self.finetune):
            raise UserError("arena: nothing to evaluate; give --probe and/or --finetune GLUE tasks (e.g. --probe sst2)")
        if not self.glue:
            raise UserError("arena: --glue DIR is needed: the folder with the GLUE task folders (SST-2/, CoLA/, ...)")
        for name in (*self.probe, *self.finetune):
            if name not in GLUE:
                raise UserError(f"arena: {name!r} is not a GLUE task; choose from {', '.join(GLUE)}")
            if not (Path(self.glue) / GLUE_DIRS[name] / "train.tsv").is_file():
                raise UserError(f"arena: {Path(self.glue) / GLUE_DIRS[name]} has no train.tsv; check --glue")
        if self.probe and any(GLUE[name].labels is None for name in self.probe):
            raise UserError("arena: the probe classifies; stsb is a regression task: fine-tune it instead")


@dataclass
class Contestant:
    objective: str
    run: Path
    config: Any                              # RunConfig
    flops_per_step: float
    steps: int
    points: tuple[int, ...]
    differences: str = ""                    # what its config changes against its defaults
    seconds_per_step: float | None = None    # --minutes: the calibrated step time
    timed_side_by_side: int = 1              # --minutes: copies timed at once (the --jobs it was timed with)


# ---- building the contestants ---------------------------------------------------------------

def base_config(objective: str, cfg: ArenaConfig, data: Path):
    """The recipe `objective_size` with the arena's shared settings and --set overrides (no schedule yet)."""
    from . import config as config_mod
    from .recipes import RECIPES

    name = f"{objective}_{cfg.size}"
    if name not in RECIPES:
        raise UserError(f"arena: there is no recipe {name}; choose a --size with a recipe for every objective "
                        f"({', '.join(sorted(r for r in RECIPES if r.startswith(objective + '_')))})")
    run_cfg = RECIPES[name]()
    run_cfg.data.path = str(data)
    shared = [f"data.seq_len={cfg.seq_len}", f"train.batch_size={cfg.batch_size}", f"train.seed={cfg.seed}",
              "train.schedule=linear", "train.min_lr_ratio=0", "train.save_every=0", "train.keep_last=1"]
    if cfg.lr:
        shared.append(f"train.lr={cfg.lr}")
    return config_mod.apply_overrides(run_cfg, [*shared, *cfg.overrides])


def flops_per_step(run_cfg, vocab_size: int) -> float:
    """Training FLOPs of one optimizer step (`unimask bench`'s count on corrupted random batches)."""
    import torch

    from .bench import objective_flops_per_token, predicted_fraction, random_batches
    from .objectives import OBJECTIVES, Vocab

    model = dataclasses.replace(run_cfg.model, vocab_size=vocab_size)
    vocab = Vocab(size=vocab_size)
    seq, batch = run_cfg.data.seq_len, run_cfg.train.batch_size
    torch.manual_seed(0)
    objective = OBJECTIVES[run_cfg.objective_name](run_cfg.objective, model, vocab)
    batches = random_batches(objective, vocab, min(batch, 8), seq, 4, 0, torch.device("cpu"))
    per_token, _ = objective_flops_per_token(objective, model, seq, predicted_fraction(batches, min(batch, 8) * seq))
    return per_token * seq * batch * run_cfg.train.grad_accum


def with_schedule(run_cfg, steps: int, points: tuple[int, ...], warmup_fraction: float):
    """`run_cfg` with `steps`, warm-up and decay fitted to them, and checkpoints at `points` (kept)
    and every tenth of the run (only the latest kept: a hard kill loses at most a tenth); no time
    budget (the trainer would refit the steps to it, and the arena's steps are the contest)."""
    run_cfg = dataclasses.replace(run_cfg)
    run_cfg.train = dataclasses.replace(run_cfg.train, steps=steps, warmup_steps=round(warmup_fraction * steps),
                                        save_at=points, save_every=max(1, steps // 10), time_budget_minutes=0.0)
    return run_cfg


def evaluation_points(steps: int, points: int) -> tuple[int, ...]:
    """The checkpoint steps: `points` evenly spaced fractions of `steps` (the last is `steps`)."""
    return tuple(sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)}))


def differences(run_cfg) -> str:
    """The objective's and the model's settings that differ from their defaults, e.g.
    `generator_layers=1, relative_buckets=32` (what a row of the report names)."""
    from .model.encoder import EncoderConfig
    from .model.sizes import ENCODER_SIZES

    out = []
    defaults = type(run_cfg.objective)()
    for f in dataclasses.fields(run_cfg.objective):
        if getattr(run_cfg.objective, f.name) != getattr(defaults, f.name):
            out.append(f"{f.name}={getattr(run_cfg.objective, f.name)}")
    preset = EncoderConfig(**ENCODER_SIZES.get(run_cfg.size, {}))
    for f in dataclasses.fields(EncoderConfig):
        if f.name != "vocab_size" and getattr(run_cfg.model, f.name) != getattr(preset, f.name):
            out.append(f"model.{f.name}={getattr(run_cfg.model, f.name)}")
    return ", ".join(out)


def calibrate(run_cfg, work: Path, steps: int, copy: int = 0) -> float:
    """Seconds per optimizer step of `run_cfg` on this machine: `steps` real steps in a scratch run
    (WORK/calibration/OBJECTIVE-COPY), timed from the second logged step on (the first pays for
    allocation and warm-up)."""
    from .train.loop import train

    cfg = dataclasses.replace(run_cfg)
    cfg.train = dataclasses.replace(run_cfg.train, steps=steps, warmup_steps=0, save_at=(), log_every=1,
                                    eval_every=0, eval_batches=1, time_budget_minutes=0.0)
    scratch = work / "calibration" / f"{run_cfg.objective_name}-{copy}"
    shutil.rmtree(scratch, ignore_errors=True)
    train(cfg, scratch, progress=False)
    records = [r for r in read_records(scratch) if r["split"] == "train"]
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.parent.rmdir()              # left while another job still calibrates
    except OSError:
        pass
    first, last = records[1], records[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / max(1, last["step"] - first["step"])


def contestants(cfg: ArenaConfig, data: Path, out: Path, say=print, jobs: int = 1) -> list[Contestant]:
    """Each objective's run config with its steps; --minutes calibrates (and remembers) step times.
    With `jobs` > 1 each objective is timed as `jobs` copies side by side, the mean of their times:
    every contestant is timed under the same load, the most it trains under (see `run_arena`)."""
    manifest = data / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"arena: {data} has no manifest.json; pass a directory written by `unimask prepare`")
    vocab_size = int(json.loads(manifest.read_text())["vocab_size"])
    previous = read_json(out / "arena.json")
    saved = previous.get("contestants", {})
    run_cfgs = {objective: base_config(objective, cfg, data) for objective in cfg.objectives}
    seconds = {objective: (saved.get(objective) or {}).get("seconds_per_step") for objective in cfg.objectives}
    copies = {objective: (saved.get(objective) or {}).get("timed_side_by_side", previous.get("jobs", 1))
              for objective in cfg.objectives}      # an arena.json without it: timed with the jobs it recorded
    untimed = [o for o in cfg.objectives if cfg.minutes and seconds[o] is None]
    if untimed:
        say(f"arena: timing {cfg.calibration_steps} steps of {', '.join(untimed)}"
            + (f", each as {jobs} copies side by side" if jobs > 1 else ""))
        timed = run_jobs(jobs, calibrate, [(run_cfgs[o], out, cfg.calibration_steps, k)
                                           for o in untimed for k in range(jobs)])
        seconds.update({o: statistics.fmean(timed[i * jobs:(i + 1) * jobs]) for i, o in enumerate(untimed)})
        copies.update({o: jobs for o in untimed})
        shutil.rmtree(out / "calibration", ignore_errors=True)
    found = []
    for objective, run_cfg in run_cfgs.items():
        per_step = flops_per_step(run_cfg, vocab_size)
        if cfg.tflops:
            steps = math.floor(cfg.tflops * 1e12 / per_step)
            if steps < cfg.points:
                raise UserError(f"arena: {cfg.tflops:g} TFLOPs is {steps} steps of {objective} "
                                f"({per_step / 1e12:.3g} TFLOPs a step); give at least {cfg.points} steps' worth")
        else:
            steps = max(cfg.points, math.floor(cfg.minutes * 60 / seconds[objective]))
        points = evaluation_points(steps, cfg.points)
        found.append(Contestant(objective, out / "runs" / objective,
                                with_schedule(run_cfg, steps, points, cfg.warmup_fraction),
                                per_step, steps, points, differences(run_cfg), seconds[objective],
                                copies[objective] if cfg.minutes else 1))
    return found


# ---- side by side ------------------------------------------------------------------------------

_STOP = None
"""In a worker of `run_jobs`: the parent's stop event (set on SIGTERM / SIGINT): no call starts after it."""


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _worker_start(threads: int, stop) -> None:
    """A worker's start: its share of the threads, the parent's stop event, SIGTERM as Ctrl-C outside
    training (a call being scored ends with an error the parent receives, rather than a dead worker
    that breaks the pool; the trainer installs its own handlers), and SIGTERM when its parent dies
    (Linux), so a killed arena leaves no orphan training on (it saves a checkpoint and stops)."""
    import ctypes
    import signal

    import torch
    global _STOP
    _STOP = stop
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))         # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _call(fn, args: tuple) -> Any:
    if _STOP is not None and _STOP.is_set():        # queued before the stop: not started
        return None
    return fn(*args)


def run_jobs(jobs: int, fn, calls: list[tuple], done=None) -> list:
    """`fn(*args)` for each of `calls`, results in order: in this process when `jobs` is 1, else in
    `jobs` spawned processes side by side, each with `jobs`-th of this process's threads (at least
    one). `done(i, error)` runs here as call i ends (`error` None or what it raised); the first error
    in call order is raised here once the running calls end.

    SIGTERM or SIGINT to this process (or its process group: Ctrl-C) cancels the calls not started,
    passes SIGTERM on to the workers (a training run saves a checkpoint and stops), waits for them,
    and raises `Stopped`."""
    if jobs <= 1:
        results = []
        for i, args in enumerate(calls):
            results.append(fn(*args))
            if done:
                done(i, None)
        return results
    import multiprocessing
    import os
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    threads = max(1, torch.get_num_threads() // jobs)
    received: list[int] = []
    context = multiprocessing.get_context("spawn")
    stopping = context.Event()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                             initializer=_worker_start, initargs=(threads, stopping)) as pool:
        futures = {pool.submit(_call, fn, args): i for i, args in enumerate(calls)}

        def stop(signum: int, frame) -> None:
            if received:
                return
            received.append(signum)
            stopping.set()                               # the calls already queued do not start
            for future in futures:
                future.cancel()                          # the others are dropped
            for pid in list(getattr(pool, "_processes", None) or {}):
                try:
                    os.kill(pid, signal.SIGTERM)         # a signal sent to this process alone
                except ProcessLookupError:
                    pass

        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                if done and not received:
                    done(futures[future], future.exception())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if received:
        name = signal.Signals(received[0]).name
        raise Stopped(received[0], f"arena: stopped by {name}; finished runs and scores are kept, a run in training "
                                   "saved a checkpoint; rerun the same command to continue")
    return [future.result() for future in futures]


# ---- training ---------------------------------------------------------------------------------

def read_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def train_contestant(c: Contestant, say=_say) -> None:
    """Run (or finish) a contestant's pretraining; a run that reached its last step is left alone."""
    from .train import checkpoint as ckpt_mod
    from .train.loop import train

    kept = ckpt_mod.list_checkpoints(c.run)
    if kept and ckpt_mod.step_of(kept[-1]) >= c.steps:
        return
    if kept:
        saved = json.loads((c.run / "config.json").read_text())
        if saved.get("train", {}).get("steps") != c.steps:
            raise UserError(f"arena: {c.run} was started with {saved['train']['steps']} steps and this arena gives "
                            f"{c.objective} {c.steps}; use the budget it was started with, or another --out")
        say(f"arena: {c.objective}: continuing from step {ckpt_mod.step_of(kept[-1])} of {c.steps}")
    else:
        say(f"arena: {c.objective}: {c.steps} steps, {c.flops_per_step * c.steps / 1e12:.3g} TFLOPs")
    try:
        train(c.config, c.run, resume=bool(kept), progress=False)
    except Stopped as stop:
        raise Stopped(stop.signum, f"arena: {c.objective} stopped on a signal and saved a checkpoint; rerun the same "
                                   "command to continue", stop.quiet) from None
    kept = ckpt_mod.list_checkpoints(c.run)
    if not kept or ckpt_mod.step_of(kept[-1]) < c.steps:
        raise UserError(f"arena: {c.objective} stopped at step {ckpt_mod.step_of(kept[-1]) if kept else 0} of "
                        f"{c.steps}; rerun the same command to continue it")


def wall_seconds(records: list[dict], step: int) -> float:
    """Training wall-clock up to `step`: the train records' `elapsed_s` summed over the run's
    segments (a resumed run restarts its clock)."""
    total, last, previous_step = 0.0, 0.0, 0
    for r in records:
        if r.get("split") != "train" or "elapsed_s" not in r:
            continue
        if r["step"] <= previous_step or r["elapsed_s"] < last:     # a new segment (resumed run)
            total, last = total + last, 0.0
        if r["step"] > step:
            break
        last, previous_step = r["elapsed_s"], r["step"]
    return total + last


# ---- evaluation -------------------------------------------------------------------------------

def score(pretrained, ev: EvalConfig) -> dict[str, float]:
    """The protocol's scores of one encoder: "probe:<task>" (best layer / pooling, the task's GLUE
    metric on dev) and "finetune:<task>" (median over seeds at the best lr, dev)."""
    from .tasks.finetune import FinetuneConfig, sweep
    from .tasks.glue import GLUE_DIRS, glue_task
    from .tasks.probe import ProbeConfig, probe

    scores = {}
    length = min(ev.max_length, pretrained.config.max_positions)
    for name in ev.probe:
        task = glue_task(name, Path(ev.glue) / GLUE_DIRS[name])
        result = probe(task, pretrained, ProbeConfig(max_train_examples=ev.max_train_examples, max_length=length,
                                                     precision=ev.precision, device=ev.device), progress=False)
        scores[f"probe:{name}"] = float(result["best"][task.metric])
    for name in ev.finetune:
        task = glue_task(name, Path(ev.glue) / GLUE_DIRS[name])
        cfg = FinetuneConfig(lrs=ev.lrs, seeds=ev.seeds, epochs=ev.epochs, max_train_examples=ev.max_train_examples,
                             max_length=length, precision=ev.precision, device=ev.device)
        with tempfile.TemporaryDirectory() as tmp:
            result = sweep(task, pretrained, cfg, Path(tmp) / "out", progress=False)
        split = task.eval_splits[0]
        by_lr: dict[float, list[float]] = {}
        for run in result["runs"]:
            by_lr.setdefault(run["lr"], []).append(run["best"][split][task.metric])
        scores[f"finetune:{name}"] = max(statistics.median(v) for v in by_lr.values())
    return scores


def score_checkpoint(directory: Path, ev: EvalConfig, cache: Path, random_init: bool = False) -> None:
    """Score one checkpoint (or random init of its architecture) by `score` into `cache` (JSON)."""
    from .checkpoint import load_pretrained

    write_json(cache, score(load_pretrained(directory, random_init=random_init), ev))


def point_cache(out: Path, objective: str, step: int) -> Path:
    return out / "evals" / objective / f"step_{step:08d}.json"


def floor_caches(cs: list[Contestant], out: Path) -> dict[str, Path]:
    """Objective -> where random init of its architecture is scored: one file per distinct encoder
    config, named after (and scored by) the first contestant that has it."""
    first: dict[str, str] = {}
    floors = {}
    for c in cs:        # vocab_size aside: training fills it in from the data (the same for all)
        model = {k: v for k, v in dataclasses.asdict(c.config.model).items() if k != "vocab_size"}
        owner = first.setdefault(json.dumps(model, sort_keys=True), c.objective)
        floors[c.objective] = out / "evals" / "random_init" / f"{owner}.json"
    return floors


def contest(c: Contestant, ev: EvalConfig, out: Path, floor: Path | None = None, say=_say) -> None:
    """One contestant start to finish: train (or finish) its run, then score each of its points,
    and random init of its architecture into `floor` when given; every score is cached in
    OUT/evals/, so an interrupted arena redoes nothing that finished."""
    from .train import checkpoint as ckpt_mod

    train_contestant(c, say)
    for step in c.points:
        if not point_cache(out, c.objective, step).is_file():
            say(f"arena: evaluating {c.objective} at step {step}")
            score_checkpoint(ckpt_mod.step_dir(c.run, step), ev, point_cache(out, c.objective, step))
    if floor is not None and not floor.is_file():
        say(f"arena: evaluating random init of {c.objective}'s architecture")
        score_checkpoint(ckpt_mod.step_dir(c.run, c.points[-1]), ev, floor, random_init=True)


def report_rows(cs: list[Contestant], out: Path) -> list[dict]:
    """The report's rows from the cached scores: each contestant's points, then random init of its
    architecture after the first reported contestant that has it (once scored); a contestant not
    yet scored at all its points (an arena in progress) is left out."""
    rows, floors, shown = [], floor_caches(cs, out), set()
    for c in cs:
        if not all(point_cache(out, c.objective, step).is_file() for step in c.points):
            continue
        records = read_records(c.run)
        valid = {r["step"]: r for r in records if r.get("split") == "valid"}
        for step in c.points:
            scores = read_json(point_cache(out, c.objective, step))
            rows.append({"objective": c.objective, "differences": c.differences, "step": step,
                         "fraction": round(step / c.steps, 4), "tokens": step * c.config.data.seq_len *
                         c.config.train.batch_size * c.config.train.grad_accum,
                         "tflops": c.flops_per_step * step / 1e12, "minutes": wall_seconds(records, step) / 60,
                         "valid_loss": (valid.get(step) or {}).get("loss"), "scores": scores,
                         "mean": statistics.fmean(scores.values())})
        floor = floors[c.objective]
        if floor not in shown and floor.is_file():
            shown.add(floor)
            scores = read_json(floor)
            rows.append({"objective": "random init", "differences": f"{floor.stem}'s architecture", "step": 0,
                         "fraction": 0.0, "tokens": 0, "tflops": 0.0, "minutes": 0.0, "valid_loss": None,
                         "scores": scores, "mean": statistics.fmean(scores.values())})
    return rows


def _plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists), so a saved arena compares equal."""
    return json.loads(json.dumps(value))


def write_json(path: Path, value: Any) -> None:
    """Atomically (a temporary sibling renamed into place): an interrupt never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


# ---- the report -------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    cfg, rows = result["config"], result["rows"]
    metrics = sorted({m for r in rows for m in r["scores"]})
    budget = f"{cfg['tflops']:g} TFLOPs" if cfg["tflops"] else f"{cfg['minutes']:g} minutes"
    scored = len({r["objective"] for r in rows} - {"random init"})
    lines = [f"# Objective arena: {cfg['size']}, {budget} per contestant", "",
             *([] if result.get("finished", True) else
               [(f"In progress: {scored} of {len(result['contestants'])} contestants scored; rerun the same "
                 "command to continue."), ""]),
             f"Data {result['data']}; sequence length {cfg['seq_len']}, batch {cfg['batch_size']}, seed {cfg['seed']}, "
             f"linear warm-up over {cfg['warmup_fraction']:.0%} of each run's steps then linear decay to 0. "
             f"Scores: {result['protocol']}."
             + side_by_side(result), "",
             "| objective | config | step | of run | tokens | TFLOPs | minutes | valid loss | "
             + " | ".join(metrics) + " | mean |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(metrics) + 1)]
    for r in rows:
        loss = f"{r['valid_loss']:.3f}" if isinstance(r.get("valid_loss"), (int, float)) else ""
        lines.append(f"| {r['objective']} | {r['differences']} | {r['step']} | {r['fraction']:.0%} | {r['tokens']:,} | "
                     f"{r['tflops']:.3g} | {r['minutes']:.1f} | {loss} | "
                     + " | ".join(f"{r['scores'].get(m, float('nan')):.2f}" for m in metrics) + f" | {r['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def side_by_side(result: dict) -> str:
    """The report's sentence on how the contestants were timed and trained (`--jobs`)."""
    timed = sorted({c.get("timed_side_by_side", 1) for c in result["contestants"].values()})
    text = ""
    if timed != [1] and result["config"]["minutes"]:
        text += f" Step times measured with {' or '.join(map(str, timed))} copies side by side."
    if result.get("jobs", 1) > 1:
        text += f" The last call ran {result['jobs']} contestants side by side, {result['threads_per_job']} thread(s) each."
    return text


def plot(result: dict, out: Path) -> list[Path]:
    """arena_flops.png and arena_time.png: the mean score (and each metric) against training FLOPs /
    wall-clock minutes, one line per objective, random init as a dashed floor."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: the arena's plots need matplotlib: pip install 'unimask[analyze]'; wrote the tables only",
              file=sys.stderr)
        return []
    rows = result["rows"]
    metrics = ["mean", *sorted({m for r in rows for m in r["scores"]})]
    written = []
    for axis, label, name in (("tflops", "training TFLOPs", "arena_flops.png"),
                              ("minutes", "training wall-clock (minutes)", "arena_time.png")):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            value = (lambda r: r["mean"]) if metric == "mean" else (lambda r, m=metric: r["scores"].get(m))
            for objective in dict.fromkeys(r["objective"] for r in rows if r["objective"] != "random init"):
                points = [(r[axis], value(r)) for r in rows if r["objective"] == objective]
                ax.plot(*zip(*points), marker="o", label=objective)
            for floor in [value(r) for r in rows if r["objective"] == "random init"]:
                ax.axhline(floor, linestyle="--", color="grey", linewidth=1)
            ax.set_xlabel(label)
            ax.set_title(metric + (" (dashed: random init)" if metric == "mean" else ""))
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


def run_arena(cfg: ArenaConfig, ev: EvalConfig, data: Path, out: Path, say=print, jobs: int = 1) -> dict:
    """Train, evaluate and report (see the module docstring); returns the arena.json dict.

    `jobs` > 1 runs that many contestants (and calibrations, and evaluations) side by side in
    spawned processes, each with `jobs`-th of this process's threads: on a many-core CPU this uses
    the cores that one run cannot. Contestants then share memory bandwidth, so --minutes times
    each objective as `jobs` copies side by side; the number of jobs may change when resuming."""
    import torch

    from .rundir import claim

    if jobs < 1:
        raise UserError(f"arena: --jobs must be at least 1, not {jobs}")
    jobs = min(jobs, len(cfg.objectives))
    data, out = Path(data).expanduser(), Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with claim(out, "arena"):
        out.mkdir(exist_ok=True)
        started = time.time()
        previous = read_json(out / "arena.json")
        settings = {"config": _plain(dataclasses.asdict(cfg)), "data": str(data), "eval": _plain(dataclasses.asdict(ev))}
        if previous and tuple(previous.get(k) for k in settings) != tuple(settings.values()):
            raise UserError(f"arena: {out} holds an arena with other settings; rerun it with the same flags to "
                            "resume, or choose another --out")
        cs = contestants(cfg, data, out, say, jobs)
        state = {**settings, "jobs": jobs, "threads_per_job": max(1, torch.get_num_threads() // jobs),
                 "contestants": {c.objective: {"steps": c.steps, "points": list(c.points),
                                               "flops_per_step": c.flops_per_step, "seconds_per_step": c.seconds_per_step,
                                               "timed_side_by_side": c.timed_side_by_side,
                                               "differences": c.differences} for c in cs}}
        write_json(out / "arena.json", {**previous, **state})
        floors = floor_caches(cs, out)

        def report(final: bool) -> dict:
            rows = report_rows(cs, out)
            scored = len({r["objective"] for r in rows} - {"random init"})
            result = {**state, "rows": rows, "protocol": protocol(ev), "finished": scored == len(cs),
                      "minutes_this_call": round((time.time() - started) / 60, 1)}
            write_json(out / "arena.json", result)
            (out / "arena.md").write_text(markdown(result))
            plots = plot(result, out) if rows else []
            if final or scored < len(cs):
                say(f"arena: {scored} of {len(cs)} contestants scored; wrote {out / 'arena.md'}, {out / 'arena.json'}"
                    + "".join(f", {p}" for p in plots))
            return result

        def finished(i: int, error: BaseException | None) -> None:
            if error is None:
                report(final=False)
            else:               # said now, raised once the others end
                say(f"arena: {cs[i].objective} failed: {error}; the other contestants go on")

        calls = [(c, ev, out, floors[c.objective] if floors[c.objective].stem == c.objective else None) for c in cs]
        if jobs > 1:
            say(f"arena: {', '.join(c.objective for c in cs)}, {jobs} side by side")
            run_jobs(jobs, contest, calls, done=finished)
        else:
            run_jobs(1, lambda *args: contest(*args, say=say), calls, done=finished)
        return report(final=True)


def protocol(ev: EvalConfig) -> str:
    """The scores' protocol, one sentence per kind (the report's header)."""
    parts = []
    if ev.probe:
        parts.append(f"probe:TASK = frozen-feature logistic-regression probe, best layer and pooling on dev, "
                     f"first {ev.max_train_examples or 'all'} training texts")
    if ev.finetune:
        parts.append(f"finetune:TASK = fine-tuning, lrs {list(ev.lrs)} x seeds {list(ev.seeds)}, {ev.epochs:g} "
                     f"epoch(s), first {ev.max_train_examples or 'all'} training examples, median over seeds "
                     "at the best lr, dev")
    return "; ".join(parts)


# ---- command line -----------------------------------------------------------------------------

class _Defaults:
    """A config class's field defaults, without building (and validating) an instance."""

    def __init__(self, cls) -> None:
        self.fields = {f.name: f.default for f in dataclasses.fields(cls)}

    def __getattr__(self, name: str) -> Any:
        return self.fields[name]


def add_arguments(p: argparse.ArgumentParser) -> None:
    a, e = _Defaults(ArenaConfig), _Defaults(EvalConfig)
    p.add_argument("--data", required=True, metavar="DIR", help="a directory written by `unimask prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="the arena's directory (rerun to resume)")
    p.add_argument("--objectives", nargs="+", default=list(a.objectives))
    p.add_argument("--size", default=a.size, help="encoder size: every objective's OBJECTIVE_SIZE recipe")
    p.add_argument("--tflops", type=float, default=0.0, help="training budget per contestant in TFLOPs")
    p.add_argument("--minutes", type=float, default=0.0, help="or in wall-clock minutes of training")
    p.add_argument("--points", type=int, default=a.points, help="evaluations per run, evenly spaced")
    p.add_argument("--seq-len", type=int, default=a.seq_len)
    p.add_argument("--batch-size", type=int, default=a.batch_size)
    p.add_argument("--lr", type=float, default=a.lr, help="peak lr for all (default: each recipe's)")
    p.add_argument("--warmup-fraction", type=float, default=a.warmup_fraction)
    p.add_argument("--seed", type=int, default=a.seed)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every contestant, e.g. --set model.dropout=0")
    p.add_argument("--glue", metavar="DIR", help="the folder holding the GLUE task folders (SST-2/, CoLA/, ...)")
    p.add_argument("--probe", nargs="*", default=[], metavar="TASK", help="GLUE tasks for the frozen probe")
    p.add_argument("--finetune", nargs="*", default=[], metavar="TASK", help="GLUE tasks to fine-tune")
    p.add_argument("--lrs", nargs="+", type=float, default=list(e.lrs), help="fine-tuning learning rates")
    p.add_argument("--seeds", nargs="+", type=int, default=list(e.seeds), help="fine-tuning seeds")
    p.add_argument("--epochs", type=float, default=e.epochs, help="fine-tuning epochs")
    p.add_argument("--max-train-examples", type=int, default=e.max_train_examples,
                   help="probe and fine-tune on the first N training examples (0: all)")
    p.add_argument("--max-length", type=int, default=e.max_length, help="evaluation: tokens per input")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=e.precision, help="evaluation precision")
    p.add_argument("--device", default=e.device)
    p.add_argument("--jobs", type=int, default=1,
                   help="contestants trained (and scored) side by side, each with its share of the threads")


def run(args: argparse.Namespace) -> int:
    cfg = ArenaConfig(objectives=tuple(args.objectives), size=args.size, tflops=args.tflops, minutes=args.minutes,
                      points=args.points, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                      warmup_fraction=args.warmup_fraction, seed=args.seed, overrides=tuple(args.overrides))
    ev = EvalConfig(glue=args.glue or "", probe=tuple(args.probe), finetune=tuple(args.finetune), lrs=tuple(args.lrs),
                    seeds=tuple(args.seeds), epochs=args.epochs, max_train_examples=args.max_train_examples,
                    max_length=args.max_length, precision=args.precision, device=args.device)
    run_arena(cfg, ev, Path(args.data), Path(args.out), say=_say, jobs=args.jobs)
    return 0
