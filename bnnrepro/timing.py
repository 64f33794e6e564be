"""Timing shared by the benchmarks (``bnnrepro bench``, ``bench --train``): the machine's
description and interleaved, warmed-up, median-of-repeats timing."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def environment() -> dict:
    import numba
    from llvmlite import binding as llvm

    feats = llvm.get_host_cpu_features()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = {f: bool(feats.get(f, False)) for f in ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vpopcntdq")}
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    return {"cpu": model or platform.processor(), "llvm_cpu": llvm.get_host_cpu_name(), "flags": flags,
            "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": layer, "torch": torch.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "os_cpus": os.cpu_count(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"}


def timed(fns, repeats: int, warmup: int = 2, block: int = 5) -> list[dict]:
    """Time the functions in alternating blocks of ``block`` calls until each has ``repeats``
    timings; seconds per call (median, IQR, min) of each. Every block starts with one untimed
    call: torch and numba run separate OpenMP pools whose idle threads spin for a while after a
    parallel region, and the first call after a switch would pay for the other pool's spinning."""
    for _ in range(warmup):
        for f in fns:
            f()
    times = [[] for _ in fns]
    while len(times[0]) < repeats:
        for f, ts in zip(fns, times):
            f()
            for _ in range(min(block, repeats - len(ts))):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
    return [_stats(ts) for ts in times]


def _stats(ts) -> dict:
    q1, med, q3 = np.percentile(ts, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1), "min_s": float(np.min(ts)), "n": len(ts)}


