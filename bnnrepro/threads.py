"""One thread count for both pools a process computes with: torch's (OpenMP) and numba's.

numba's parallel kernels (the fused shift-AdaMax step, the packed kernels) run on their own pool,
sized to the cores by default. With torch limited to fewer threads (``train.num_threads=1``, jobs
run side by side), numba's idle OpenMP workers spin between the many short parallel regions of a
training step and take the cores the other jobs need: measured on a 2-core AMD EPYC with three
1-thread Torch7-MLP jobs side by side, 1071 ms of CPU per step against 17 ms with both pools at 1.
"""
from __future__ import annotations


def set_threads(n: int) -> None:
    """torch's intra-op threads and numba's threads (capped at numba's pool size) to ``n``."""
    import numba
    import torch

    torch.set_num_threads(int(n))
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
