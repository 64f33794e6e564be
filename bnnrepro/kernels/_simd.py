"""LLVM-level building blocks numba cannot express: popcount and the binary GEMM micro-kernel.

Numba has no popcount and no SIMD vector type, and LLVM's auto-vectoriser stalls near half the
XOR+popcount peak on the plain triple loop (accumulators bounce through memory, two loads per
XOR). So the inner tile is written directly in LLVM IR: ``MR`` rows x ``8*V`` columns of int64
accumulators held in ``<8 x i64>`` registers, one broadcast per row and one vector load per 8
columns for every 64-bit word of the reduction. LLVM lowers ``llvm.ctpop.v8i64`` to VPOPCNTQ with
AVX512-VPOPCNTDQ, and to PSHUFB/scalar sequences on CPUs without it (slower, same result).

Every tile reads ``MR`` input rows at arbitrary word offsets (so a tile can be a run of output
pixels, a 2x2 pooling window or the 8 bit-planes of one pixel), walks ``nseg`` segments of
``seglen`` contiguous words ``segstride`` words apart (one segment per kernel row of a
convolution), and finishes with an epilogue chosen at run time:

* ``mode 0``: store ``y = kc - 2*popcount`` as int32 per row group (the exact +-1 dot product);
* ``mode 1``: store the output bits ``(y < T) ^ flip``, one byte per 8 columns (bit 1 = -1).

``kc`` is per (row, column): ``K`` minus the zero-padding correction of that output position.
Rows are combined into groups of ``G`` before the epilogue: ``none`` (G=1), ``max`` (a max-pool
window of pre-activations) or ``planes`` (``sum_i 2**i * y_i``: the 8 bit-planes of uint8 pixels).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_I8 = ir.IntType(8)


@intrinsic
def popcount64(typingctx, x):
    """Population count of a 64-bit integer (LLVM ``ctpop``: POPCNT on x86)."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def bitplanes64(typingctx, src, dst, stride):
    """Transpose 64 bytes into 8 words: bit i of word b (stored ``stride`` words apart from ``dst``)
    is bit b of byte i (``src``). One compare-to-mask per plane (VPTESTMB with AVX512-BW)."""
    if not all(isinstance(t, types.Integer) and t.bitwidth == 64 for t in (src, dst, stride)):
        return None
    sig = types.void(src, dst, stride)

    def codegen(context, builder, signature, args):
        src, dst, stride = args
        v8 = ir.VectorType(_I8, 64)
        v = _load(builder, builder.inttoptr(src, v8.as_pointer()), 1)
        out = builder.inttoptr(dst, _I64.as_pointer())
        zero = ir.Constant(v8, [0] * 64)
        for b in range(8):
            m = builder.icmp_unsigned("!=", builder.and_(v, ir.Constant(v8, [1 << b] * 64)), zero)
            ptr = builder.gep(out, [builder.mul(stride, ir.Constant(_I64, b))])
            _store(builder, builder.bitcast(m, _I64), ptr, 8)
        return context.get_dummy_value()

    return sig, codegen


def _ctpop_vec(builder, val):
    fnty = ir.FunctionType(val.type, [val.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.ctpop.v{val.type.count}i64")
    return builder.call(fn, [val])


def _load(builder, ptr, align):
    ld = builder.load(ptr)
    ld.align = align
    return ld


def _store(builder, val, ptr, align):
    st = builder.store(val, ptr)
    st.align = align
    return st


def make_tile(mr: int, v: int, combine: str):
    """Build the intrinsic ``tile(xbase, xoffs, nseg, seglen, segstride, wbase, kcbase, kcoffs,
    obase, ooffs, tbase, fbase, mode)``; every argument is a 64-bit integer (addresses as ints).

    Offsets arrays hold int64: ``xoffs`` and ``kcoffs`` one word offset per row, ``ooffs`` one
    byte offset per row group. The weight panel is ``[nseg*seglen, 8*v]`` uint64 contiguous.
    """
    assert combine in ("none", "max", "planes")
    group = 1 if combine == "none" else mr
    ngroups = mr // group

    @intrinsic
    def tile(typingctx, xbase, xoffs, nseg, seglen, segstride, wbase, kcbase, kcoffs, obase,
             ooffs, tbase, fbase, mode):
        argtys = (xbase, xoffs, nseg, seglen, segstride, wbase, kcbase, kcoffs, obase, ooffs,
                  tbase, fbase, mode)
        if not all(isinstance(t, types.Integer) and t.bitwidth == 64 for t in argtys):
            return None
        sig = types.void(*argtys)

        def codegen(context, builder, signature, args):
            (xbase, xoffs, nseg, seglen, segstride, wbase, kcbase, kcoffs, obase, ooffs, tbase,
             fbase, mode) = args
            vec = ir.VectorType(_I64, 8)
            p64 = _I64.as_pointer()
            c = lambda n: ir.Constant(_I64, n)  # noqa: E731
            xo = builder.inttoptr(xoffs, p64)
            rows = [builder.inttoptr(builder.add(xbase, builder.mul(
                builder.load(builder.gep(xo, [c(i)])), c(8))), p64) for i in range(mr)]
            wp = builder.inttoptr(wbase, vec.as_pointer())
            zero = ir.Constant(vec, [0] * 8)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(v)] for _ in range(mr)]
            undef = ir.Constant(vec, ir.Undefined)
            bmask = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
            with cgutils.for_range(builder, nseg) as seg:
                xseg = builder.mul(seg.index, segstride)
                wseg = builder.mul(builder.mul(seg.index, seglen), c(v))
                with cgutils.for_range(builder, seglen) as it:
                    j = it.index
                    wrow = builder.add(wseg, builder.mul(j, c(v)))
                    ws = [_load(builder, builder.gep(wp, [builder.add(wrow, c(q))]), 8)
                          for q in range(v)]
                    xj = builder.add(xseg, j)
                    for i in range(mr):
                        xs = builder.load(builder.gep(rows[i], [xj]))
                        xb = builder.shuffle_vector(
                            builder.insert_element(undef, xs, ir.Constant(_I32, 0)), undef, bmask)
                        for q in range(v):
                            pc = _ctpop_vec(builder, builder.xor(xb, ws[q]))
                            a = accs[i][q]
                            builder.store(builder.add(builder.load(a), pc), a)

            # epilogue: y per row group and output column vector
            kco = builder.inttoptr(kcoffs, p64)
            kcp = builder.inttoptr(kcbase, p64)

            def kc_vec(i, q):
                off = builder.add(builder.load(builder.gep(kco, [c(i)])), c(8 * q))
                return _load(builder, builder.bitcast(builder.gep(kcp, [off]), vec.as_pointer()), 8)

            two = ir.Constant(vec, [2] * 8)
            ys = []  # ys[g][q]
            for g in range(ngroups):
                yg = []
                for q in range(v):
                    if combine == "none":
                        y = builder.sub(kc_vec(g, q), builder.mul(builder.load(accs[g][q]), two))
                    elif combine == "max":
                        y = None
                        for i in range(mr):
                            yi = builder.sub(kc_vec(i, q), builder.mul(builder.load(accs[i][q]), two))
                            y = yi if y is None else builder.select(builder.icmp_signed(">", yi, y), yi, y)
                    else:  # planes: sum_i 2**i * (kc - 2 acc_i) = (2**mr - 1) kc - 2 sum_i 2**i acc_i
                        s = None
                        for i in range(mr):
                            t = builder.shl(builder.load(accs[i][q]), ir.Constant(vec, [i + 1] * 8))
                            s = t if s is None else builder.add(s, t)
                        y = builder.sub(builder.mul(kc_vec(0, q), ir.Constant(vec, [2 ** mr - 1] * 8)), s)
                    yg.append(y)
                ys.append(yg)

            oo = builder.inttoptr(ooffs, p64)
            i8p = _I8.as_pointer()
            with builder.if_else(builder.icmp_signed("==", mode, c(0))) as (as_int, as_bits):
                with as_int:
                    for g in range(ngroups):
                        base = builder.add(obase, builder.load(builder.gep(oo, [c(g)])))
                        op = builder.inttoptr(base, ir.VectorType(_I32, 8).as_pointer())
                        for q in range(v):
                            _store(builder, builder.trunc(ys[g][q], ir.VectorType(_I32, 8)),
                                   builder.gep(op, [c(q)]), 4)
                with as_bits:
                    tp = builder.inttoptr(tbase, vec.as_pointer())
                    fp = builder.inttoptr(fbase, i8p)
                    for g in range(ngroups):
                        base = builder.add(obase, builder.load(builder.gep(oo, [c(g)])))
                        op = builder.inttoptr(base, i8p)
                        for q in range(v):
                            lt = builder.icmp_signed("<", ys[g][q], _load(builder, builder.gep(tp, [c(q)]), 8))
                            byte = builder.bitcast(lt, _I8)
                            byte = builder.xor(byte, builder.load(builder.gep(fp, [c(q)])))
                            builder.store(byte, builder.gep(op, [c(q)]))
            return context.get_dummy_value()

        return sig, codegen

    return tile


#: hidden binary layers: 4 rows x 32 columns, one row per output position
TILE_ROWS, TILE_V = 4, 4
tile_rows = make_tile(TILE_ROWS, TILE_V, "none")
#: 2x2 max-pool before BN: the 4 rows are one pooling window
tile_pool4 = make_tile(4, TILE_V, "max")
#: first layer on uint8 pixels: the 8 rows are the bit-planes of one position, 16 columns
PLANE_ROWS, PLANE_V = 8, 2
tile_planes = make_tile(PLANE_ROWS, PLANE_V, "planes")


# The driver lives in this file on purpose: numba's cache checks only the source file of the cached
# function, so an edit of the IR above must invalidate it too.
@njit(parallel=True, cache=True, boundscheck=False)
def run_tiles(variant, x, x_img, xoffs, nseg, seglen, segstride, wpan, kc, kcoffs,
              out, o_img, ooffs, thr, flip, mode, nimg, panel_outer):
    """Strides ``x_img`` in words and ``o_img`` in bytes between images."""
    ntile = xoffs.shape[0]
    npan = wpan.shape[0]
    nr = wpan.shape[2]
    wstride = np.int64(wpan.shape[1] * nr * 8)
    colbytes = np.int64(nr // 8) if mode == 1 else np.int64(nr * 4)
    xb = np.int64(x.ctypes.data)
    wb = np.int64(wpan.ctypes.data)
    kb = np.int64(kc.ctypes.data)
    ob = np.int64(out.ctypes.data)
    tb = np.int64(thr.ctypes.data)
    fb = np.int64(flip.ctypes.data)
    xo = np.int64(xoffs.ctypes.data)
    ko = np.int64(kcoffs.ctypes.data)
    oo = np.int64(ooffs.ctypes.data)
    xrow = np.int64(xoffs.shape[1] * 8)
    orow = np.int64(ooffs.shape[1] * 8)
    rows = ntile * nimg
    for t in prange(rows * npan):
        if panel_outer:
            p = t // rows
            r = t - p * rows
        else:
            r = t // npan
            p = t - r * npan
        n = r // ntile
        i = r - n * ntile
        p64 = np.int64(p)
        args = (xb + n * x_img * 8, xo + i * xrow, np.int64(nseg), np.int64(seglen),
                np.int64(segstride), wb + p64 * wstride, kb + p64 * nr * 8, ko + i * xrow,
                ob + n * o_img + p64 * colbytes, oo + i * orow, tb + p64 * nr * 8,
                fb + p64 * (nr // 8), np.int64(mode))
        if variant == 0:
            tile_rows(*args)
        elif variant == 1:
            tile_pool4(*args)
        else:
            tile_planes(*args)
