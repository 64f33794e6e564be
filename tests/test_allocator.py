"""keep_freed_memory: a freed large block is reused without faulting in fresh pages."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from bnnrepro.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
n = 10 << 20  # 40 MB of float32: above glibc's largest adaptive mmap threshold (32 MB), so by default
#   every such block is a fresh mmap, faulted in page by page and unmapped on free
torch.empty(n).fill_(1.0)  # first touch: faults, then freed
best = None
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n).fill_(2.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    best = faults if best is None else min(best, faults)
print(int(applied), best, n * 4 // resource.getpagesize())
"""


def _probe(mode: str) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return tuple(int(v) for v in out.stdout.split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_comes_back_without_page_faults():
    applied, _, pages = _probe("on")
    assert applied == 1
    # fresh processes, as a training run is one: most of them must reuse the block (the kernel's
    # own memory reclaim may take a process's freed pages back now and then)
    quiet = sum(_probe("on")[1] < pages // 10 for _ in range(3))
    assert quiet >= 2
    # without the settings every reuse faults the whole block in again
    assert _probe("off")[1] > pages // 2
