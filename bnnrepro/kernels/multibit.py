"""Bit-serial multi-bit dense layers: m-bit weights x k-bit activations as binary GEMMs on bit-planes.

Codes (everywhere in this module):

* an activation of k bits is an unsigned code ``c`` in ``[0, 2**k - 1]`` with value ``c / n_a``,
  ``n_a = 2**k - 1`` (DoReFa's ``quantize_k(clip(x, 0, 1))``);
* a weight of m bits is a code ``u`` in ``[0, 2**m - 1]`` with value ``s_w (2 u - n_w)``,
  ``n_w = 2**m - 1``: m = 1 is ``+-E`` (DoReFa's ``sign(w) E``, ``s_w = E``), m > 1 DoReFa's
  ``2 u / n_w - 1`` (``s_w = 1 / n_w``).

The layer's exact integer pre-activation is ``y = sum_t (2 u_t - n_w) c_t`` and its value is
``y * s_w / n_a``. Bit-plane ``j`` of a code, read as +-1 (``2 c_j - 1``), gives
``sum_j 2**j (2 c_j - 1) = 2 c - n_a``; so with ``y_ij`` the +-1 dot product of weight plane i and
activation plane j (XOR + popcount, the binary kernel of ``gemm``/``tiles``),

    Y = sum_ij 2**(i+j) y_ij = sum_t (2 u_t - n_w)(2 c_t - n_a),   y = (Y + n_a * W_n) / 2,

``W_n = sum_t (2 u_t - n_w)`` a per-output constant. ``bitserial_gemm`` runs all ``m * k`` plane
pairs as ONE optimized binary GEMM (activation planes stacked as rows, weight planes as columns)
and combines them; ``bitserial_gemm_reference`` is the plain integer matrix product, and
``bitserial_popcount_reference`` the same plane decomposition with a scalar popcount loop.
Convolutions: ``bitserial_conv2d`` (im2col of the codes, then the GEMM) and its twin
``bitserial_conv2d_reference`` (torch's conv2d on the integers, in float64).

Planes use the binary kernels' encoding (``bitpack``: bit 1 = -1), i.e. a plane stores the
complement of the code bit; padding bits past K are 0 in both operands and never count.

The next layer's code is a staircase of the BatchNorm'd pre-activation: ``fold_levels`` turns it into
``n_a`` integer thresholds per channel, found (as ``fold.fold_sign`` does for sign) by evaluating the
torch modules themselves on candidate integers, so ties, round-half-to-even and negative BN scales
are torch's own decisions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from numba import njit, prange

from . import fold
from ._simd import popcount64
from .bitpack import pack_reference, words
from .gemm import DenseWeights, bgemm


# ---------------------------------------------------------------- codes and planes

def pack_code_planes_reference(codes: np.ndarray, bits: int) -> np.ndarray:
    """``[M, K]`` unsigned codes -> ``[M, bits, Kw]`` uint64 planes (plane j: bit j of the code as +-1)."""
    c = np.asarray(codes).astype(np.int64)
    q = np.stack([((c >> j) & 1).astype(np.float32) * 2 - 1 for j in range(bits)], axis=1)
    return pack_reference(q)


@njit(parallel=True, cache=True, boundscheck=False)
def _pack_code_planes(codes, out, k):
    m, nb, kw = out.shape
    for r in prange(m):
        for j in range(nb):
            for wd in range(kw):
                word = np.uint64(0)
                base = wd * 64
                top = min(64, k - base)
                for b in range(top):
                    if ((codes[r, base + b] >> j) & 1) == 0:  # code bit 0 is -1: stored bit 1
                        word |= np.uint64(1) << np.uint64(b)
                out[r, j, wd] = word


def pack_code_planes(codes: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Fast :func:`pack_code_planes_reference` for uint8 codes ``[M, K]``."""
    codes = np.ascontiguousarray(codes, np.uint8)
    shape = (codes.shape[0], int(bits), words(codes.shape[1]))
    if out is None or out.shape != shape:
        out = np.empty(shape, np.uint64)
    _pack_code_planes(codes, out, codes.shape[1])
    return out


@dataclass
class MultiBitWeights:
    """``[N, K]`` weight codes of one dense layer, value ``scale * (2 u - levels)``, and their planes."""

    codes: np.ndarray  # uint8 [N, K]
    bits: int
    scale: float  # s_w
    planes: DenseWeights = field(init=False, repr=False)  # [bits * N, Kw]: plane i of output n is row i*N + n
    wsum: np.ndarray = field(init=False, repr=False)  # int64 [N]: sum_t (2 u_t - n_w)
    _scratch: dict = field(default_factory=dict, init=False, repr=False)  # rows -> bgemm output buffer

    def __post_init__(self):
        self.codes = np.ascontiguousarray(self.codes, np.uint8)
        if self.codes.size and int(self.codes.max()) > self.levels:
            raise ValueError(f"weight codes exceed {self.bits} bits")
        n, k = self.codes.shape
        planes = pack_code_planes_reference(self.codes, self.bits)  # [N, bits, Kw]
        self.planes = DenseWeights(np.ascontiguousarray(planes.transpose(1, 0, 2).reshape(self.bits * n, -1)), k)
        self.wsum = (2 * self.codes.astype(np.int64) - self.levels).sum(axis=1)

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1]

    def values(self) -> np.ndarray:
        """The float64 weights these codes stand for."""
        return self.scale * (2.0 * self.codes - self.levels)

    @classmethod
    def from_dorefa(cls, w: np.ndarray, bits: int) -> "MultiBitWeights":
        """Codes of DoReFa-quantized float32 weights (``DoReFaWeight(bits)`` output); ValueError when
        ``w`` is not on that grid."""
        w = np.asarray(w, np.float32)
        if bits == 1:
            e = np.abs(w).reshape(-1)[0] if w.size else np.float32(0)
            if not bool((np.abs(w) == e).all()):
                raise ValueError("1-bit weights are not +-E with one E per layer")
            return cls((w >= 0).astype(np.uint8), 1, float(e))
        if not 1 < bits <= 8:
            raise ValueError(f"{bits}-bit weights: the bit-serial kernels take 1 to 8 bits")
        n = 2 ** bits - 1
        r = np.rint((w.astype(np.float64) + 1.0) * n / 2.0)
        # the grid value as DoReFaWeight computes it in float32: r / (n/2) - 1
        back = (r.astype(np.float32) / np.float32(n / 2) - np.float32(1)).astype(np.float32)
        if not (bool(((r >= 0) & (r <= n)).all()) and bool((back == w).all())):
            raise ValueError(f"weights are not on the {bits}-bit DoReFa grid 2u/{n} - 1")
        return cls(r.astype(np.uint8), bits, 1.0 / n)


# ---------------------------------------------------------------- the integer dot products

def bitserial_gemm_reference(a_codes: np.ndarray, w: MultiBitWeights) -> np.ndarray:
    """``[M, K]`` activation codes x weight codes -> ``[M, N]`` int64 ``y = sum_t (2 u_t - n_w) c_t``."""
    a = np.asarray(a_codes, np.int64)
    return a @ (2 * w.codes.astype(np.int64) - w.levels).T


@njit(cache=True)
def _popcount_reference(a, wp, k, a_bits, w_bits, n, a_levels, wsum, out):
    m = a.shape[0]
    kw = a.shape[2]
    for r in range(m):
        for c in range(n):
            acc = 0
            for j in range(a_bits):
                for i in range(w_bits):
                    pc = 0
                    for q in range(kw):
                        pc += popcount64(a[r, j, q] ^ wp[i * n + c, q])
                    acc += (k - 2 * pc) << (i + j)
            out[r, c] = (acc + a_levels * wsum[c]) >> 1


def bitserial_popcount_reference(a_planes: np.ndarray, w: MultiBitWeights) -> np.ndarray:
    """The plane decomposition with a scalar XOR/popcount loop: ``[M, bits_a, Kw]`` planes -> int64 ``y``."""
    a_planes = np.ascontiguousarray(a_planes, np.uint64)
    out = np.empty((a_planes.shape[0], w.n), np.int64)
    a_bits = a_planes.shape[1]
    _popcount_reference(a_planes, w.planes.bits, w.k, a_bits, w.bits, w.n, 2 ** a_bits - 1, w.wsum, out)
    return out


@njit(parallel=True, cache=True, boundscheck=False)
def _combine(yp, a_bits, w_bits, n, a_levels, wsum, out):
    m = out.shape[0]
    for r in prange(m):  # column loops innermost: contiguous, vectorised
        for c in range(n):
            out[r, c] = a_levels * wsum[c]
        for j in range(a_bits):
            row = r * a_bits + j
            for i in range(w_bits):
                sh = np.int64(i + j)
                base = i * n
                for c in range(n):
                    out[r, c] += np.int64(yp[row, base + c]) << sh
        for c in range(n):
            out[r, c] >>= 1


def bitserial_gemm(a_planes: np.ndarray, w: MultiBitWeights, out: np.ndarray | None = None) -> np.ndarray:
    """Optimized :func:`bitserial_gemm_reference` on packed activation planes ``[M, bits_a, Kw]``:
    one tiled binary GEMM of the ``M * bits_a`` plane rows against the ``bits_w * N`` weight plane
    columns, then ``y = (sum_ij 2**(i+j) y_ij + n_a W_n) / 2`` -> int64 ``[M, N]``."""
    a_planes = np.ascontiguousarray(a_planes, np.uint64)
    m, a_bits, kw = a_planes.shape
    scratch = w._scratch.get(m * a_bits)
    if scratch is None:  # reused: a fresh [M * bits_a, N * bits_w] int32 buffer per call costs page faults
        scratch = w._scratch[m * a_bits] = np.empty((m * a_bits, w.planes.npad), np.int32)
        if len(w._scratch) > 4:
            w._scratch.pop(next(iter(w._scratch)))
    yp = bgemm(a_planes.reshape(m * a_bits, kw), w.planes, scratch)
    if out is None or out.shape != (m, w.n):
        out = np.empty((m, w.n), np.int64)
    _combine(yp, a_bits, w.bits, w.n, 2 ** a_bits - 1, w.wsum, out)
    return out


# ---------------------------------------------------------------- convolutions: im2col of codes

def im2col_codes(codes: np.ndarray, kh: int, kw: int, stride: int, pad: int) -> np.ndarray:
    """``[N, C, H, W]`` codes -> ``[N * Ho * Wo, C * kh * kw]`` (torch's weight order), zero padding as
    code 0: a DoReFa code 0 is the value 0 that torch pads with, so the padded taps are exact."""
    n, c, h, w = codes.shape
    x = np.zeros((n, c, h + 2 * pad, w + 2 * pad), np.uint8)
    x[:, :, pad:pad + h, pad:pad + w] = codes
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = win.shape[2], win.shape[3]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo, c * kh * kw)


def bitserial_conv2d_reference(codes: np.ndarray, w: MultiBitWeights, kh: int, kw: int, stride: int,
                               pad: int) -> np.ndarray:
    """``[N, C, H, W]`` codes -> ``[N, O, Ho, Wo]`` int64 ``y``, by torch's conv2d in float64 (exact)."""
    wi = torch.from_numpy((2 * w.codes.astype(np.float64) - w.levels).reshape(w.n, -1, kh, kw))
    y = torch.nn.functional.conv2d(torch.from_numpy(codes.astype(np.float64)), wi, stride=stride, padding=pad)
    return y.numpy().astype(np.int64)


def bitserial_conv2d(codes: np.ndarray, w: MultiBitWeights, kh: int, kw: int, stride: int, pad: int,
                     bits: int) -> np.ndarray:
    """Optimized :func:`bitserial_conv2d_reference`: im2col of the codes, their planes, the bit-serial
    GEMM -> int64 ``[N, Ho, Wo, O]`` (channels last)."""
    n, _, h, wd = codes.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = im2col_codes(codes, kh, kw, stride, pad)
    return bitserial_gemm(pack_code_planes(cols, bits), w).reshape(n, ho, wo, w.n)


# ---------------------------------------------------------------- folded staircase thresholds

@dataclass
class LevelThresholds:
    """Per channel ``c`` and level ``l = 1..L``: the code reaches ``l`` iff ``not ((y < t[c, l-1]) ^ flip[c, l-1])``;
    the output code is the number of levels reached (the staircase is monotone, so they nest)."""

    t: np.ndarray  # int64 [C, L]
    flip: np.ndarray  # bool [C, L]
    inconsistent: int = 0

    @property
    def levels(self) -> int:
        return self.t.shape[1]

    def apply_reference(self, y: np.ndarray) -> np.ndarray:
        """``[M, C]`` integers -> uint8 codes."""
        y = np.asarray(y)[..., None]
        return (~((y < self.t) ^ self.flip)).sum(axis=-1).astype(np.uint8)

    def apply(self, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = np.ascontiguousarray(y, np.int64)
        if out is None or out.shape != y.shape:
            out = np.empty(y.shape, np.uint8)
        _levels(y, self.t, self.flip, out)
        return out


@njit(parallel=True, cache=True, boundscheck=False)
def _levels(y, t, flip, out):
    m, n = y.shape
    nl = t.shape[1]
    for r in prange(m):
        for c in range(n):
            v = y[r, c]
            code = 0
            for li in range(nl):
                if not ((v < t[c, li]) ^ flip[c, li]):
                    code += 1
            out[r, c] = code


def fold_levels(code_fn: Callable[[torch.Tensor], torch.Tensor], channels: int, levels: int, lo: int, hi: int,
                scale: float, spatial: tuple = ()) -> LevelThresholds:
    """Thresholds of ``code_fn(float32(y * scale))`` (integer codes ``0..levels``, monotone in ``y``
    per channel) over integers ``y`` in ``[lo, hi]``: one :func:`fold.fold_sign` per level ``l`` on
    the predicate ``code >= l``; ``spatial``: the trailing shape ``code_fn`` needs (``(1, 1)`` for
    BatchNorm2d)."""
    ts, flips, bad = [], [], 0
    for level in range(1, levels + 1):
        th = fold.fold_sign(lambda v, level=level: (code_fn(v) >= level).to(torch.float32) - 0.5,
                            channels, spatial, lo, hi, scale)
        ts.append(th.t)
        flips.append(th.flip)
        bad += th.inconsistent
    return LevelThresholds(np.stack(ts, axis=1).astype(np.int64), np.stack(flips, axis=1).astype(bool), bad)
