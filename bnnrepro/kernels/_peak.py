"""In-register XOR + popcount + add loop: the machine's binary throughput ceiling for ``bench``.

One 64-byte vector is loaded from an L1-resident buffer per step and XORed with 12 register
vectors, each result popcounted and added into its own accumulator: the same instruction mix as
the GEMM micro-kernel, without its weight traffic. 12 * 8 words per step.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._simd import _ctpop_vec, _load, _store

UNROLL = 12
BUF_VECS = 64  # 4 KiB


@intrinsic
def _peak_block(typingctx, buf, reps, out):
    if not all(isinstance(t, types.Integer) and t.bitwidth == 64 for t in (buf, reps, out)):
        return None
    sig = types.void(buf, reps, out)

    def codegen(context, builder, signature, args):
        buf, reps, out = args
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, 8)
        bp = builder.inttoptr(buf, vec.as_pointer())
        ws = [_load(builder, builder.gep(bp, [ir.Constant(i64, i)]), 8) for i in range(UNROLL)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * 8)) for _ in range(UNROLL)]
        with cgutils.for_range(builder, reps):
            with cgutils.for_range(builder, ir.Constant(i64, BUF_VECS)) as it:
                v = _load(builder, builder.gep(bp, [it.index]), 8)
                for i in range(UNROLL):
                    a = accs[i]
                    builder.store(builder.add(builder.load(a), _ctpop_vec(builder, builder.xor(v, ws[i]))), a)
        total = builder.load(accs[0])
        for i in range(1, UNROLL):
            total = builder.add(total, builder.load(accs[i]))
        _store(builder, total, builder.inttoptr(out, vec.as_pointer()), 8)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def peak_loop(nthreads, reps, out):
    """Each of ``nthreads`` tasks runs ``reps * BUF_VECS * UNROLL * 8`` XOR+popcount+add on words."""
    for t in prange(nthreads):
        buf = np.empty(BUF_VECS * 8, np.uint64)
        for i in range(buf.size):
            buf[i] = np.uint64(0x9E3779B97F4A7C15) * np.uint64(i + 1 + 977 * t)
        res = np.zeros(8, np.int64)
        _peak_block(np.int64(buf.ctypes.data), np.int64(reps), np.int64(res.ctypes.data))
        out[t * 8:(t + 1) * 8] = res
