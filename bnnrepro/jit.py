"""Numba kernels called from torch code keep torch's thread count.

The first call in a process of a numba kernel loaded from numba's disk cache sets OpenMP's thread
count (shared with torch: one libgomp) back to every core: measured with torch 2.13 and numba 0.68,
``torch.set_num_threads(1)``, then such a call, then ``torch.get_num_threads() == 2`` on 2 cores.
A run asked for one thread (``train.num_threads=1``, jobs side by side) would silently take two from
its first step on, and compute differently from a resumed run whose process had loaded the kernel
before setting its threads.
"""
from __future__ import annotations

import functools

import torch


def keeping_torch_threads(kernel):
    """``kernel`` wrapped so that torch's thread count after a call is the one before it."""

    @functools.wraps(kernel)
    def call(*args):
        threads = torch.get_num_threads()
        out = kernel(*args)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return out

    return call
