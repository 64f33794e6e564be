"""Binary GEMM: ``y[m, n] = sum_k a[m, k] * w[n, k]`` for +-1 operands packed along k.

``bgemm_reference`` is the plain triple loop over words with a scalar popcount; ``bgemm`` is the
tiled, parallel, SIMD kernel (``tiles.run_tiles``) on weights pre-packed in column panels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from . import tiles
from ._simd import popcount64
from .bitpack import pack_reference


@njit(cache=True)
def _bgemm_reference(a, w, k, out):
    m, kw = a.shape
    n = w.shape[0]
    for i in range(m):
        for j in range(n):
            pc = 0
            for q in range(kw):
                pc += popcount64(a[i, q] ^ w[j, q])
            out[i, j] = k - 2 * pc


def bgemm_reference(a_bits: np.ndarray, w_bits: np.ndarray, k: int) -> np.ndarray:
    """``[M, Kw] x [N, Kw] -> [M, N]`` int32 exact +-1 dot products."""
    if a_bits.shape[1] != w_bits.shape[1]:
        raise ValueError(f"word counts differ: {a_bits.shape} vs {w_bits.shape}")
    out = np.empty((a_bits.shape[0], w_bits.shape[0]), np.int32)
    _bgemm_reference(np.ascontiguousarray(a_bits), np.ascontiguousarray(w_bits), int(k), out)
    return out


@dataclass
class DenseWeights:
    """Packed +-1 weights of a fully connected layer: ``bits`` is ``[N, Kw]`` (natural layout)."""

    bits: np.ndarray
    k: int
    variant: int = tiles.ROWS
    _panels: np.ndarray | None = field(default=None, repr=False)
    _kc: np.ndarray | None = field(default=None, repr=False)
    _thr: np.ndarray | None = field(default=None, repr=False)
    _flip: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_float(cls, w, variant: int = tiles.ROWS) -> "DenseWeights":
        w = np.asarray(w, np.float32)
        return cls(pack_reference(w), w.shape[1], variant)

    @property
    def n(self) -> int:
        return self.bits.shape[0]

    @property
    def panels(self) -> np.ndarray:
        if self._panels is None:
            self._panels = tiles.panelize(self.bits, tiles.panel_width(self.variant))
        return self._panels

    @property
    def npad(self) -> int:
        return self.panels.shape[0] * self.panels.shape[2]


_TABLES: dict = {}


def row_tables(m: int, kw: int, variant: int = tiles.ROWS):
    """Tiles of ``rows`` consecutive rows of a ``[M, Kw]`` operand (the last tile repeats its
    final row); for PLANES a tile is the 8 bit-planes of one row of ``[M, 8, Kw]``."""
    key = (m, kw, variant)
    if key not in _TABLES:
        if len(_TABLES) > 64:
            _TABLES.clear()
        mr, _, g = tiles.VARIANTS[variant]
        if variant == tiles.PLANES:
            xoffs = (np.arange(m)[:, None] * 8 + np.arange(8)[None, :]) * kw
            ooffs = np.arange(m)[:, None]
        else:
            nt = -(-m // mr)
            rows = np.minimum(np.arange(nt * mr), m - 1).reshape(nt, mr)
            xoffs = rows * kw
            ooffs = rows
        _TABLES[key] = (np.ascontiguousarray(xoffs, np.int64), np.zeros(xoffs.shape, np.int64),
                        np.ascontiguousarray(ooffs, np.int64))
    return _TABLES[key]


def bgemm(a_bits: np.ndarray, w: DenseWeights, out: np.ndarray | None = None) -> np.ndarray:
    """Optimized :func:`bgemm_reference`: ``[M, Kw]`` packed rows -> ``[M, N]`` int32."""
    a_bits = np.ascontiguousarray(a_bits, np.uint64)
    m, kw = a_bits.shape
    if kw != w.bits.shape[1]:
        raise ValueError(f"input has {kw} words per row, weights {w.bits.shape[1]}")
    npad = w.npad
    if out is None or out.shape != (m, npad):
        out = np.empty((m, npad), np.int32)
    xoffs, kcoffs, rows = row_tables(m, kw, tiles.ROWS)
    if w._kc is None:
        w._kc = np.full((1, npad), w.k, np.int64)
        w._thr = np.zeros(npad, np.int64)
        w._flip = np.zeros(npad // 8, np.uint8)
    tiles.run_tiles(w.variant, a_bits, 0, xoffs, 1, kw, 0, w.panels, w._kc, kcoffs, out, 0,
                    np.ascontiguousarray(rows * (npad * 4)), w._thr, w._flip, tiles.INT32, 1, True)
    return out[:, :w.n]
