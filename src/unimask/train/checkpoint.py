"""Complete, atomic, pickle-free checkpoints.

RUN/checkpoints/step_00001000/
    model.safetensors        the unwrapped PretrainModel state dict (encoder.*, objective.*)
    train_state.safetensors  every tensor of the optimizer state and the RNG states
    train_state.json         the rest of the training state, tensors replaced by references
    config.json              the resolved RunConfig
    tokenizer.json           the tokenizer the model was trained with
    carried.safetensors      heads carried unchanged from the run's --init model (BERT's pooler), if any
    meta.json                format, step, the size and SHA-256 of every file above (written last)

A checkpoint is written into a hidden temporary directory and renamed into place, so a run killed
at any moment leaves either the previous checkpoints or a complete new one. Loading verifies the
checksums, so a truncated or edited file is reported instead of silently used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import UserError
from ..rundir import damaged_file, file_records, guard_disk, save_tensors, tensor_bytes

FORMAT = "unimask-checkpoint/1"
CARRIED_FILE = "carried.safetensors"          # heads carried from a --init model (unimask.checkpoint.CARRIED_HEADS)
STEP_PREFIX = "step_"


def _pack(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """Nested dicts/lists/scalars/tensors -> JSON-able skeleton; tensors go into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"$tensor": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _pack(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"$items": [[k, _pack(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$tensor"}:
            return tensors[obj["$tensor"]]
        if set(obj) == {"$items"}:
            return {k: _unpack(v, tensors) for k, v in obj["$items"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives: RUN/checkpoints/step_00001000."""
    return checkpoint_root(run_dir) / f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def step_of(checkpoint: Path) -> int:
    """The step in a checkpoint directory's name (step_00000500 -> 500)."""
    return int(checkpoint.name[len(STEP_PREFIX):])


def latest_checkpoint(path: Path) -> Path | None:
    """`path` itself if it is a checkpoint, else the newest checkpoint of the run at `path`."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    found = list_checkpoints(path)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], train_state: dict,
                    config: dict, tokenizer_file: Path | None, keep_last: int,
                    keep_steps: tuple[int, ...] = (), carried: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `step` of the run (see the module docstring); then keep only the last
    `keep_last` (and those at `keep_steps`, train.save_at). `carried`: the tensors of CARRIED_FILE
    (`unimask.checkpoint.carried_tensors`), none written when empty. UserError (see
    `rundir.guard_disk`) when the disk cannot hold it, before writing or during the write; the
    temporary directory is removed and the earlier checkpoints stay."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(train_state, tensors, "state")
    needed = tensor_bytes(model_state) + tensor_bytes(tensors) + tensor_bytes(carried or {})
    needed += tokenizer_file.stat().st_size if tokenizer_file is not None else 0
    fix = "the earlier checkpoints are intact: free some space (or lower train.keep_last), then --resume"
    with guard_disk(tmp, needed, f"checkpoint {final.name}", fix):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_tensors(model_state, tmp / "model.safetensors")
        save_tensors(tensors, tmp / "train_state.safetensors")
        if carried:
            save_tensors(carried, tmp / CARRIED_FILE)
        (tmp / "train_state.json").write_text(json.dumps(skeleton))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        records = file_records(tmp, sorted(p.name for p in tmp.iterdir()))
        meta = {"format": FORMAT, "step": step, "sha256": {name: r["sha256"] for name, r in records.items()},
                "bytes": {name: r["bytes"] for name, r in records.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    if final.exists():                       # re-saving the same step after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        if step_of(old) not in keep_steps:           # `train.save_at` checkpoints stay
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_meta(ckpt: Path) -> dict:
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{ckpt} is not a readable unimask checkpoint ({e}); delete it to fall back "
                        f"to an earlier one") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{ckpt} has checkpoint format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def verify(ckpt: Path) -> dict:
    """Check every file against meta.json (size, then SHA-256); a mismatch names the file and what to do."""
    meta = read_meta(ckpt)
    sizes = meta.get("bytes", {})                 # checkpoints before sizes were recorded: checksums only
    records = {name: {"sha256": digest, "bytes": sizes.get(name)} for name, digest in meta["sha256"].items()}
    problem = damaged_file(ckpt, records, "meta.json", checksum_max_bytes=None)
    if problem is not None:
        raise UserError(f"checkpoint {ckpt} is corrupted: {problem}; delete that directory to fall back to the "
                        "previous checkpoint, or pass an earlier checkpoints/step_* directory")
    return meta


def load_config(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())


def load_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model state dict, train state, config dict) of a verified checkpoint, without pickle."""
    meta = verify(ckpt)
    model_state = load_file(str(ckpt / "model.safetensors"))
    tensors = load_file(str(ckpt / "train_state.safetensors"))
    train_state = _unpack(json.loads((ckpt / "train_state.json").read_text()), tensors)
    train_state["step"] = meta["step"]
    return model_state, train_state, load_config(ckpt)
