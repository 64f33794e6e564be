"""Binary 2-D convolution on NHWC bit-packed activations (channels packed along the reduction).

The optimized kernel reads an input stored with a zero-bit (+1) border of ``pad`` pixels, so every
tap is a plain load. Torch pads the +-1 activations with 0, not +1; the difference is exact and
depends only on which taps of an output position fall in the border: with ``S[o, dh, dw]`` the
sum of the +-1 weights of tap (dh, dw), ``y_torch = y_padded - sum_{taps in the border} S``.
Output positions fall into a few classes (top/bottom/left/right edges and corners, interior), so
the correction is a small ``[classes, O]`` table folded into ``kc = K - correction``.

For stride ``s`` a tap row of ``kw`` pixels is still ``kw * Cw`` contiguous words, so one output
position reads ``kh`` segments of ``kw * Cw`` words, ``Wp * Cw`` words apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from . import tiles
from ._simd import popcount64
from .bitpack import pack_reference


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


# ---------------------------------------------------------------- reference

@njit(cache=True)
def _bconv_reference(x, w, c, stride, pad, out):
    n, h, wd, cw = x.shape
    o, kh, kw, _ = w.shape
    ho, wo = out.shape[1], out.shape[2]
    for t in range(n * ho):
        i = t // ho
        oh = t % ho
        for ow in range(wo):
            for oc in range(o):
                acc = 0
                for dh in range(kh):
                    ih = oh * stride + dh - pad
                    if ih < 0 or ih >= h:
                        continue
                    for dw in range(kw):
                        iw = ow * stride + dw - pad
                        if iw < 0 or iw >= wd:
                            continue
                        pc = 0
                        for q in range(cw):
                            pc += popcount64(x[i, ih, iw, q] ^ w[oc, dh, dw, q])
                        acc += c - 2 * pc  # taps in the zero padding contribute nothing
                out[i, oh, ow, oc] = acc


def bconv2d_reference(x_bits: np.ndarray, w_bits: np.ndarray, c: int, stride: int = 1,
                      pad: int = 0) -> np.ndarray:
    """``x_bits`` ``[N, H, W, Cw]`` (no border), ``w_bits`` ``[O, kh, kw, Cw]`` -> int32
    ``[N, Ho, Wo, O]``: exactly torch's conv2d of the +-1 tensors with zero padding."""
    n, h, w, _ = x_bits.shape
    _, kh, kw, _ = w_bits.shape
    out = np.empty((n, out_size(h, kh, stride, pad), out_size(w, kw, stride, pad), w_bits.shape[0]),
                   np.int32)
    _bconv_reference(np.ascontiguousarray(x_bits), np.ascontiguousarray(w_bits), int(c), int(stride),
                     int(pad), out)
    return out


# ---------------------------------------------------------------- weights and padding classes

@dataclass
class ConvWeights:
    """Packed +-1 conv weights ``bits [O, kh, kw, Cw]``; ``tap_sums [O, kh, kw]`` = sum over
    input channels of the +-1 weights (for the zero-padding correction)."""

    bits: np.ndarray
    tap_sums: np.ndarray
    c: int
    stride: int = 1
    pad: int = 0
    variant: int = tiles.ROWS
    _panels: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_float(cls, w, stride: int = 1, pad: int = 0, variant: int = tiles.ROWS) -> "ConvWeights":
        """``w`` ``[O, C, kh, kw]`` +-1 (torch layout)."""
        w = np.asarray(w, np.float32)
        bits = pack_reference(np.moveaxis(w, 1, -1))
        return cls(bits, np.where(w >= 0, 1, -1).sum(axis=1).astype(np.int64), w.shape[1], stride, pad,
                   variant)

    @property
    def o(self) -> int:
        return self.bits.shape[0]

    @property
    def kh(self) -> int:
        return self.bits.shape[1]

    @property
    def kw(self) -> int:
        return self.bits.shape[2]

    @property
    def k(self) -> int:
        return self.kh * self.kw * self.c

    @property
    def panels(self) -> np.ndarray:
        if self._panels is None:
            if self.variant == tiles.PLANES:
                # im2col order of the first layer: all taps (dh, dw, c) packed together
                flat = pack_reference(_unpack_taps(self.bits, self.c))
            else:
                flat = self.bits.reshape(self.o, -1)
            self._panels = tiles.panelize(flat, tiles.panel_width(self.variant))
        return self._panels

    @property
    def npad(self) -> int:
        return self.panels.shape[0] * self.panels.shape[2]

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return out_size(h, self.kh, self.stride, self.pad), out_size(w, self.kw, self.stride, self.pad)

    def classes(self, h: int, w: int):
        """Per output row/column the index of its padding class, and ``kc [classes, npad]``."""
        ho, wo = self.out_hw(h, w)

        def axis(n_in, n_out, k):
            masks = [tuple(0 <= o * self.stride + d - self.pad < n_in for d in range(k)) for o in range(n_out)]
            uniq = sorted(set(masks))
            return np.array([uniq.index(m) for m in masks], np.int64), uniq

        rcls, rmasks = axis(h, ho, self.kh)
        ccls, cmasks = axis(w, wo, self.kw)
        kc = np.zeros((len(rmasks) * len(cmasks), self.npad), np.int64)
        for a, rm in enumerate(rmasks):
            for b, cm in enumerate(cmasks):
                invalid = ~(np.array(rm)[:, None] & np.array(cm)[None, :])
                kc[a * len(cmasks) + b, :self.o] = self.k - (self.tap_sums * invalid).sum(axis=(1, 2))
        return rcls, ccls, len(cmasks), kc


def _unpack_taps(bits: np.ndarray, c: int) -> np.ndarray:
    b = np.unpackbits(bits.view(np.uint8), axis=-1, bitorder="little")[..., :c]
    return (1.0 - 2.0 * b.reshape(bits.shape[0], -1)).astype(np.float32)


# ---------------------------------------------------------------- tables

@dataclass
class Dest:
    """Where a layer writes: per image ``[H + 2 pad, W + 2 pad]`` cells of ``cell_bytes`` bytes."""

    h: int
    w: int
    cell_bytes: int
    pad: int = 0

    def offset(self, oh, ow):
        return ((np.asarray(oh) + self.pad) * (self.w + 2 * self.pad) + np.asarray(ow) + self.pad) * self.cell_bytes

    @property
    def image_bytes(self) -> int:
        return (self.h + 2 * self.pad) * (self.w + 2 * self.pad) * self.cell_bytes


@dataclass
class ConvPlan:
    """Tile tables of one convolution for one input size (batch independent)."""

    weights: ConvWeights
    h: int
    w: int
    pool: bool
    dest: Dest
    xoffs: np.ndarray
    kcoffs: np.ndarray
    ooffs: np.ndarray
    kc: np.ndarray
    x_img: int
    nseg: int
    seglen: int
    segstride: int


def plan_conv(weights: ConvWeights, h: int, w: int, dest: Dest, pool: bool = False) -> ConvPlan:
    """``pool``: fuse a 2x2/2 max-pool of the pre-activations (one tile per pooling window)."""
    ho, wo = weights.out_hw(h, w)
    rcls, ccls, ncc, kc = weights.classes(h, w)
    npad = weights.npad
    if pool and weights.variant == tiles.PLANES:
        raise ValueError("the fused 2x2 max-pool needs binary (not bit-plane) inputs")
    if weights.variant == tiles.PLANES:
        kw1 = weights.panels.shape[1]
        pos = np.arange(ho * wo)
        xoffs = np.arange(8)[None, :] * kw1 * ho * wo + pos[:, None]
        oh, ow = pos // wo, pos % wo
        kcoffs = np.repeat(((rcls[oh] * ncc + ccls[ow]) * npad)[:, None], 8, axis=1)
        ooffs = dest.offset(oh, ow)[:, None]
        x_img, nseg, seglen, segstride = 8 * kw1 * ho * wo, kw1, 1, ho * wo
    else:
        cw = weights.bits.shape[3]
        hp, wp = h + 2 * weights.pad, w + 2 * weights.pad
        s = weights.stride
        if pool:
            ph, pw = np.meshgrid(np.arange(ho // 2), np.arange(wo // 2), indexing="ij")
            ph, pw = ph.reshape(-1), pw.reshape(-1)
            oh = (2 * ph[:, None] + np.array([0, 0, 1, 1])[None, :])
            ow = (2 * pw[:, None] + np.array([0, 1, 0, 1])[None, :])
            ooffs = dest.offset(ph, pw)[:, None]
        else:
            pos = np.arange(ho * wo)
            mr = tiles.VARIANTS[tiles.ROWS][0]
            nt = -(-len(pos) // mr)
            pos = np.minimum(np.arange(nt * mr), len(pos) - 1).reshape(nt, mr)
            oh, ow = pos // wo, pos % wo
            ooffs = dest.offset(oh, ow)
        xoffs = (oh * s * wp + ow * s) * cw
        kcoffs = (rcls[oh] * ncc + ccls[ow]) * npad
        x_img, nseg, seglen, segstride = hp * wp * cw, weights.kh, weights.kw * cw, wp * cw
    as64 = lambda a: np.ascontiguousarray(a, np.int64)  # noqa: E731
    return ConvPlan(weights, h, w, pool, dest, as64(xoffs), as64(kcoffs), as64(ooffs), kc, x_img,
                    nseg, seglen, segstride)


def run_conv(plan: ConvPlan, x: np.ndarray, out: np.ndarray, mode: int, thr=None, flip=None) -> np.ndarray:
    """Run a planned convolution; the kernel trusts the tables, so the buffers are checked here."""
    n = x.shape[0]
    if x.dtype != np.uint64 or not x.flags.c_contiguous or x[0].size != plan.x_img:
        raise ValueError(f"input buffer {x.dtype} {x.shape} does not match the plan ({plan.x_img} words/image)")
    if not out.flags.c_contiguous or out.shape[0] != n or out.nbytes != n * plan.dest.image_bytes:
        raise ValueError(f"output buffer {out.dtype} {out.shape} does not match the plan "
                         f"({plan.dest.image_bytes} bytes/image)")
    wts = plan.weights
    if thr is None:
        thr = np.zeros(wts.npad, np.int64)
        flip = np.zeros(wts.npad // 8, np.uint8)
    variant = tiles.POOL4 if plan.pool else wts.variant
    tiles.run_tiles(variant, x, plan.x_img, plan.xoffs, plan.nseg, plan.seglen, plan.segstride,
                    wts.panels, plan.kc, plan.kcoffs, out, plan.dest.image_bytes, plan.ooffs, thr, flip,
                    mode, n, False)
    return out


_PLANS: dict = {}


def _plan(weights: ConvWeights, h: int, w: int) -> ConvPlan:
    """Cached tables for the standalone kernels (int32 NHWC output)."""
    key = (id(weights), h, w)
    plan = _PLANS.get(key)
    if plan is None or plan.weights is not weights:
        if len(_PLANS) > 64:
            _PLANS.clear()
        ho, wo = weights.out_hw(h, w)
        plan = _PLANS[key] = plan_conv(weights, h, w, Dest(ho, wo, weights.npad * 4))
    return plan


def bconv2d(x_padded: np.ndarray, weights: ConvWeights, out: np.ndarray | None = None) -> np.ndarray:
    """Optimized :func:`bconv2d_reference`: ``x_padded`` ``[N, H+2p, W+2p, Cw]`` with a zero-bit
    border (``bitpack.pack_nchw(x, pad)``) -> int32 ``[N, Ho, Wo, O]``."""
    x_padded = np.ascontiguousarray(x_padded, np.uint64)
    n, hp, wp, cw = x_padded.shape
    if weights.variant != tiles.ROWS:
        raise ValueError("bconv2d needs ROWS weights (PLANES weights go to bconv2d_planes)")
    if cw != weights.bits.shape[3]:
        raise ValueError(f"input has {cw} words per pixel, weights {weights.bits.shape[3]}")
    h, w = hp - 2 * weights.pad, wp - 2 * weights.pad
    ho, wo = weights.out_hw(h, w)
    plan = _plan(weights, h, w)
    if out is None or out.shape != (n, ho, wo, weights.npad):
        out = np.empty((n, ho, wo, weights.npad), np.int32)
    run_conv(plan, x_padded, out, tiles.INT32)
    return out[..., :weights.o]


def bconv2d_planes(x_uint8: np.ndarray, weights: ConvWeights, out: np.ndarray | None = None) -> np.ndarray:
    """First layer on uint8 pixels: int32 ``[N, Ho, Wo, O]`` equal to ``255 * conv2d(x, w)`` for
    ``x = 2 p / 255 - 1`` (zero padding in x), exactly. ``weights.variant`` must be PLANES."""
    from .bitpack import planes_im2col

    n, c, h, w = x_uint8.shape
    ho, wo = weights.out_hw(h, w)
    planes = planes_im2col(x_uint8, weights.kh, weights.kw, weights.stride, weights.pad)
    plan = _plan(weights, h, w)
    if out is None or out.shape != (n, ho, wo, weights.npad):
        out = np.empty((n, ho, wo, weights.npad), np.int32)
    run_conv(plan, planes, out, tiles.INT32)
    return out[..., :weights.o]
