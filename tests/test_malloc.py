"""train/malloc.py: with keep_freed_memory, a freed large tensor stays mapped (no page faults when
the next step allocates it again); without, glibc returns it to the kernel. Each case runs in a
fresh interpreter: the setting is process-wide and cannot be undone."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from unimask.train.malloc import keep_freed_memory_on

PROBE = """
import sys, torch
from unimask.train.malloc import keep_freed_memory_on
kept = keep_freed_memory_on(torch.device("cpu"), sys.argv[1] == "on")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])
x = torch.ones(64 << 20, dtype=torch.uint8)   # 64 MiB, touched: above glibc's largest mmap threshold
before = rss()
del x
print(kept, before - rss())                   # pages returned to the kernel by the free
"""


def _probe(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    kept, returned = out.split()
    return kept == "True", int(returned)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc/self/statm")
def test_freed_memory_stays_mapped_only_when_asked():
    kept, returned = _probe("on")
    if not kept:
        pytest.skip("not glibc")
    assert returned < 1024                     # < 4 MiB of the 64 MiB block went back: it stays mapped
    assert _probe("off") == (False, pytest.approx(16384, abs=1024))  # default glibc: ~64 MiB unmapped at once


def test_only_on_the_cpu_and_when_enabled():
    assert keep_freed_memory_on(torch.device("cpu"), enabled=False) is False
    assert keep_freed_memory_on(torch.device("meta")) is False
