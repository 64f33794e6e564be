"""keep_freed_memory: a freed large block is reused without faulting in fresh pages."""
from __future__ import annotations

import resource
import sys

import pytest
import torch

from bnnrepro.train.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_comes_back_without_page_faults():
    assert keep_freed_memory() and keep_freed_memory()  # applied once, then remembered
    n = 24 << 18  # 25 MB of float32: without the settings glibc serves each one by a fresh mmap
    torch.empty(n).fill_(1.0)  # first touch: faults, then freed into the heap

    def faults_of_one_more():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(n).fill_(2.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    pages = n * 4 // resource.getpagesize()
    assert min(faults_of_one_more() for _ in range(3)) < pages // 10
