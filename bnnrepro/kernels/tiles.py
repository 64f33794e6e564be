"""Tile variants, weight panels and output helpers for ``run_tiles`` (``_simd``), the one parallel
driver behind every optimized kernel.

A layer is described by tables of tiles (per image): for each tile the word offsets of its input
rows, the offsets of each row's ``kc`` row (``K`` minus a zero-padding correction, per output
position class) and the byte offset of each output row group. The driver walks
``images x tiles x panels`` in parallel and calls the LLVM micro-kernel of ``_simd`` per
(tile, panel). ``panel_outer`` puts panels in the outer position so a thread keeps one weight
panel in L1 across all rows (fully connected layers); otherwise a thread keeps a tile's input
rows in L1 across all panels (convolutions).
"""
from __future__ import annotations

import numpy as np

from ._simd import PLANE_ROWS, PLANE_V, TILE_ROWS, TILE_V, run_tiles  # noqa: F401 (re-exported)

#: micro-kernel variants: (rows per tile, columns per panel, rows per output group)
ROWS, POOL4, PLANES = 0, 1, 2
VARIANTS = {
    ROWS: (TILE_ROWS, 8 * TILE_V, 1),
    POOL4: (4, 8 * TILE_V, 4),
    PLANES: (PLANE_ROWS, 8 * PLANE_V, PLANE_ROWS),
}
INT32, BITS = 0, 1

#: threshold of padding columns: y < T never holds, so their output bits stay 0 (+1)
NEVER = np.iinfo(np.int64).min


def panel_width(variant: int) -> int:
    return VARIANTS[variant][1]


def panelize(w: np.ndarray, nr: int) -> np.ndarray:
    """``[N, Ktot]`` uint64 -> ``[ceil(N/nr), Ktot, nr]``, zero columns past N.

    Column panels keep the ``nr`` weight words of one reduction step contiguous (one vector load
    each) and avoid the cache-set aliasing of 4096-word row strides."""
    n, ktot = w.shape
    p = -(-n // nr)
    out = np.zeros((p * nr, ktot), np.uint64)
    out[:n] = w
    return np.ascontiguousarray(out.reshape(p, nr, ktot).transpose(0, 2, 1))


def pad_cols(a: np.ndarray, npad: int, fill) -> np.ndarray:
    out = np.full(a.shape[:-1] + (npad,), fill, dtype=a.dtype)
    out[..., :a.shape[-1]] = a
    return out


def flip_bytes(flip: np.ndarray, npad: int) -> np.ndarray:
    """Per-column booleans -> one uint8 per 8 columns (bit j of byte i is column 8i+j)."""
    f = np.zeros(npad, bool)
    f[:len(flip)] = flip
    return np.packbits(f, bitorder="little")
