"""Output directories that belong to one process, written whole or not at all, checked when read.

Every command that writes a directory (`pretrain`, `prepare`, `finetune`, `probe`, `export`) goes
through this module:

- `claim(out, command)` holds an OS advisory lock (`fcntl.flock`) on `.NAME.lock` beside `out`
  (in its parent, so it also covers the hidden `.NAME.tmp-PID` siblings that commands write into
  before renaming, and `--overwrite`'s removal of the old `out`). The file holds the holder's pid,
  host and command for the error message. A second process asking for the same `out` stops at once
  with a one-line UserError naming them. The kernel drops the lock when its holder dies (kill -9
  included; on NFS the server does when the client's lease ends), so a lock file left behind by a
  dead process is taken over with a warning. A holder that ends normally removes the file.
- `guard_disk(tmp, needed, what, fix)` checks the free space before a write (`shutil.disk_usage`)
  and turns a full disk during it (OSError ENOSPC, or safetensors' error for it) into a one-line
  UserError naming the directory, the bytes needed and the bytes free, after removing the
  temporary directory `tmp`, so earlier outputs stay as they were; `save_tensors` is the one
  safetensors writer.
- `file_records` / `damaged_file`: sizes and SHA-256 of the files a directory lists in its
  manifest, and the first missing, truncated or changed one, for a one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

HASH_BLOCK = 1 << 20
CHECKSUM_MAX_BYTES = 256 << 20   # files up to this size are checksummed when a directory is opened;
                                 # larger ones (token arrays of a big corpus) are checked by size only
SPACE_MARGIN = 1 << 20           # bytes asked for beyond the data itself: headers, JSON, the filesystem


# ---------------------------------------------------------------- one process per directory


def lock_path(out: str | Path) -> Path:
    """The lock file of `out`: the hidden `.NAME.lock` in its parent directory."""
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}.lock"


def _holder(fd: int) -> dict:
    """The pid/host/command a lock file holds ({} when it is empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8")
        holder = json.loads(text) if text.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "another process"
    return (f"pid {holder['pid']} on host {holder.get('host', '?')} (`unimask {holder.get('command', '?')}`, "
            f"started {holder.get('started', '?')})")


def _lock(path: Path, out: Path, wait: bool) -> int:
    """An open, flock-ed file descriptor of `path`; UserError when another process holds it or the
    file cannot be created. On a filesystem without locks, the descriptor unlocked and a warning."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock file {path} of {out} ({e.strerror}); choose an --out "
                            "whose parent directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{out} is in use by {_describe(holder)}, which holds the lock {path}; "
                            "wait for it to finish or choose another --out") from None
        except OSError as e:         # ENOLCK, EOPNOTSUPP: some FUSE and NFS mounts without a lock manager
            print(f"warning: cannot lock {path} ({e.strerror}); nothing stops another process from writing "
                  f"{out} at the same time", file=sys.stderr)
            return fd
        try:                         # a holder that finished unlinked the file we locked: lock the new one
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def claim(out: str | Path, command: str, *, wait: bool = False) -> Iterator[Path]:
    """Hold `out` for this process until the block ends; yields the lock file.

    Take it before anything under `out` (or beside it) is read for a decision, written or removed.
    Raises UserError naming the holder's pid, host and command and the lock file when another process
    holds `out` (with `wait`, blocks until it ends instead: for a shared cache). A lock file whose
    holder died (kill -9, a crashed node) is taken over with a warning on stderr.
    """
    out = Path(out).expanduser().resolve()
    path = lock_path(out)
    fd = _lock(path, out, wait)
    try:
        previous = _holder(fd)
        if previous:
            print(f"warning: taking over the lock {path} of {out}: {_describe(previous)} ended without "
                  "releasing it (killed, or its machine went down)", file=sys.stderr)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)          # while still locked: a waiting process re-checks and locks afresh
        os.close(fd)


# ---------------------------------------------------------------- full disks


def is_disk_full(error: BaseException) -> bool:
    """An OSError ENOSPC / EDQUOT, or safetensors' SafetensorError for one (it wraps the OS error in text)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return type(error).__name__ == "SafetensorError" and ("os error 28" in text or "No space left" in text)


def _size(n: int) -> str:
    unit, scale = ("GiB", 1 << 30) if n >= 1 << 30 else ("MiB", 1 << 20)
    return f"{n:,} bytes ({n / scale:,.1f} {unit})"


def _free(directory: Path) -> int:
    while not directory.exists():
        directory = directory.parent
    return shutil.disk_usage(directory).free


@contextlib.contextmanager
def guard_disk(tmp: Path, needed: int, what: str, fix: str) -> Iterator[None]:
    """Write `what` (through the temporary directory `tmp`) only when `needed` bytes (plus
    SPACE_MARGIN) are free beside `tmp`; a full disk before or during the block is a one-line UserError
    naming `what`, the directory, the bytes needed and free, and `fix`, raised after `tmp` is removed.
    Other errors pass through."""
    needed += SPACE_MARGIN
    where = tmp.parent

    def refuse(free: int) -> UserError:
        return UserError(f"no space left for {what} in {where}: it needs about {_size(needed)}, "
                         f"{_size(free)} are free; {fix}")

    if (free := _free(where)) < needed:
        raise refuse(free)
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise refuse(_free(where)) from None


def tensor_bytes(tensors: dict) -> int:
    """Bytes of the tensors' data as a safetensors file stores it (the header is in SPACE_MARGIN)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (any device or layout) to a safetensors file with the user's file mode
    (files.py) and the "pt" format metadata transformers reads: the one writer of weights."""
    from safetensors.torch import save_file

    from .files import user_mode

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata=metadata or {"format": "pt"})
    user_mode(path)


# ---------------------------------------------------------------- files a directory lists


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_records(directory: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"bytes": size, "sha256": digest}} of files in `directory`, for a manifest."""
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
            for name in names}


def damaged_file(directory: Path, records: dict[str, dict], listed_in: str,
                 checksum_max_bytes: int | None = CHECKSUM_MAX_BYTES) -> str | None:
    """The first file of `records` (as `file_records` writes them; "bytes" or "sha256" may be absent)
    that is missing, has another size, or (when at most `checksum_max_bytes`, None: always) another
    SHA-256 than `listed_in` says, as "NAME is missing" / "NAME has N bytes, not M" / "NAME does not
    match its checksum"; None when all are intact."""
    for name, record in records.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing ({listed_in} lists it)"
        size = path.stat().st_size
        if record.get("bytes") is not None and size != record["bytes"]:
            return f"{name} has {size:,} bytes, not the {record['bytes']:,} {listed_in} lists (truncated?)"
        if record.get("sha256") and (checksum_max_bytes is None or size <= checksum_max_bytes) \
                and sha256_file(path) != record["sha256"]:
            return f"{name} does not match its checksum in {listed_in}"
    return None
