"""Files handed to the user keep the modes their umask asks for.

safetensors writes through a private temporary file and renames it, so its files come out 0600
whatever the umask: a model shared on a cluster or served from a web directory would be unreadable
to everyone else. Every weights file goes through `rundir.save_tensors`, which sets the mode a plain
`open()` would have given (`user_mode`).
"""

from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where /proc tells it (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path: str | Path) -> None:
    """Give the file at `path` the mode `open()` would have: 0666 less the umask."""
    os.chmod(path, 0o666 & ~umask())
