"""Which popcount instructions the packed kernels run on this machine, and what the others would cost.

The micro-kernels (``_simd``) are LLVM IR on ``<8 x i64>`` vectors that numba compiles at run time
for the CPU it runs on (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``, else the host): LLVM lowers
``llvm.ctpop.v8i64`` to VPOPCNTQ where AVX512-VPOPCNTDQ exists, to a VPSHUFB nibble lookup on
AVX2, to POPCNT per word on older CPUs, and to shift-and-add arithmetic without POPCNT. So the
variant is picked per CPU by the compiler, at run time; :func:`detect` says which one it picked,
read from the machine code of the same IR compiled for the same target (the kernels themselves
are loaded from numba's on-disk cache, whose machine code numba does not let one inspect).

:func:`compare` runs one FC case in a fresh process per forced target (``NUMBA_CPU_NAME``), so a
benchmark shows the variant taken against those it passed over, measured on the same machine.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._simd import _ctpop_vec, _load, _store

# forced targets for :func:`compare` (LLVM CPU names): the host's own pick is always run first
FORCED_TARGETS = (("haswell", "AVX2, no AVX-512"), ("nehalem", "SSE4.2 + POPCNT"), ("x86-64", "SSE2 only"))
NEUTRAL_FEATURE = "+cx8"


@intrinsic
def _popcount_v8(typingctx, src, dst):
    """Popcount of 8 words at ``src`` into ``dst``: the micro-kernel's popcount, alone."""
    if not all(isinstance(t, types.Integer) and t.bitwidth == 64 for t in (src, dst)):
        return None
    sig = types.void(src, dst)

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.IntType(64), 8)
        v = _load(builder, builder.inttoptr(args[0], vec.as_pointer()), 8)
        _store(builder, _ctpop_vec(builder, v), builder.inttoptr(args[1], vec.as_pointer()), 8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=False)  # not cached: its machine code is what detect() reads
def _probe(src, dst):
    _popcount_v8(src, dst)


def classify(asm: str) -> tuple[str, int]:
    """(variant, vector bits) of the popcount in ``asm`` (x86 AT&T or Intel syntax)."""
    low = asm.lower()
    width = 512 if "zmm" in low else 256 if "ymm" in low else 128 if "xmm" in low else 64
    if "vpopcntq" in low:
        return "avx512-vpopcntdq", width
    if "pshufb" in low:
        return ("avx2-pshufb" if width >= 256 else "ssse3-pshufb"), width
    if re.search(r"\bpopcnt[lq]?\b", low):
        return "scalar-popcnt", 64
    return "scalar-bitwise", 64


def target_cpu() -> str:
    from llvmlite import binding as llvm
    from numba.core import config

    return config.CPU_NAME or llvm.get_host_cpu_name()


def detect() -> dict:
    """The popcount variant the packed kernels run here: ``{"variant", "vector_bits", "target_cpu"}``."""
    src, dst = np.arange(1, 9, dtype=np.uint64), np.zeros(8, np.uint64)
    _probe(np.int64(src.ctypes.data), np.int64(dst.ctypes.data))
    want = [int(v).bit_count() for v in src]
    if dst.tolist() != want:  # the probe computes what it claims, or it tells nothing
        raise RuntimeError(f"popcount probe returned {dst.tolist()}, expected {want}")
    asm = next(iter(_probe.inspect_asm().values()))
    variant, bits = classify(asm)
    return {"variant": variant, "vector_bits": bits, "target_cpu": target_cpu()}


_CHILD = """
import json, sys, time
import numpy as np
from bnnrepro.kernels import variant, warmup
from bnnrepro.kernels.gemm import DenseWeights, bgemm, bgemm_reference
from bnnrepro.timing import timed
m, k, n, repeats = (int(v) for v in sys.argv[1:5])
warmup()
rng = np.random.default_rng(0)
a = rng.integers(0, 2**63, (m, -(-k // 64)), dtype=np.uint64)
w = DenseWeights(rng.integers(0, 2**63, (n, -(-k // 64)), dtype=np.uint64), 64 * a.shape[1])
out = np.empty((m, w.npad), np.int32)
ok = bool(np.array_equal(bgemm(a, w, out), bgemm_reference(a, w.bits, w.k)))
t = timed([lambda: bgemm(a, w, out)], repeats)[0]
print("RESULT " + json.dumps(dict(variant.detect(), ms=1e3 * t["median_s"], bit_exact=ok)))
"""


def compare(m: int, k: int, n: int, repeats: int, targets=FORCED_TARGETS, timeout: float = 600) -> list[dict]:
    """The FC ``m x k -> n`` binary GEMM timed in a fresh process for the host's own target and for
    each forced one (``NUMBA_CPU_NAME``, an empty numba cache each), one after another. Rows:
    ``{"target", "what", "variant", "vector_bits", "ms", "bit_exact", "picked"}``; a target this
    CPU cannot run (its process fails) gets ``ms: None`` and ``error``."""
    rows = []
    for cpu, what in (("host", "this CPU's own target (what the kernels run)"),) + tuple(targets):
        env = dict(os.environ)
        env.pop("NUMBA_CPU_FEATURES", None)
        env.pop("NUMBA_CPU_NAME", None)
        if cpu != "host":
            # numba adds the host's features to a named CPU unless features are given: one every x86-64
            # CPU has leaves the name's own feature set
            env.update(NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=NEUTRAL_FEATURE)
        with tempfile.TemporaryDirectory() as cache:
            env["NUMBA_CACHE_DIR"] = cache
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(m), str(k), str(n), str(repeats)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
        row = {"target": cpu, "what": what, "picked": cpu == "host"}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            row.update(json.loads(lines[-1][len("RESULT "):]))
        else:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            row.update(variant=None, vector_bits=None, ms=None, bit_exact=None, error=tail[:200])
        rows.append(row)
    return rows
