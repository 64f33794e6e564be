"""Bit-packed binary inference on CPU (numba): packing, binary GEMM/conv/max-pool (a reference
and an optimized kernel each), BatchNorm+sign folded into integer thresholds, a whole-model
engine, the ``.bnn`` artifact, and the ``pack``/``compare``/``bench`` commands. Multi-bit DoReFa nets
(m-bit weights x k-bit activations) run bit-serially: ``multibit`` (kernels, folded staircase
thresholds) and ``multibit_engine`` (``PackedModel.from_torch`` hands such a model to it); their
``.bnn`` file is ``multibit_artifact``'s.

Bit encoding: bit 1 = -1, bit 0 = +1, and ``x >= 0`` packs to +1 (``sign(0) = +1`` as in
training); a +-1 dot product of length K is ``K - 2 * popcount(a ^ w)``.

Compiled kernels are cached on disk by numba (``cache=True``: ``__pycache__`` beside these files,
or ``NUMBA_CACHE_DIR`` when that is not writable).
"""
from __future__ import annotations

from .bitpack import (pack_nchw, pack_nchw_reference, pack_reference, pack_rows, planes_dense,
                      planes_im2col, unpack, words)
from .conv import ConvWeights, bconv2d, bconv2d_planes, bconv2d_reference
from .engine import PackedModel, PackError
from .fold import Thresholds, fold_sign
from .gemm import DenseWeights, bgemm, bgemm_reference
from .multibit import MultiBitWeights, bitserial_gemm, bitserial_gemm_reference
from .multibit_engine import MultiBitModel
from .pool import bmaxpool2d, bmaxpool2d_reference

__all__ = [
    "pack_reference", "pack_rows", "pack_nchw", "pack_nchw_reference", "planes_dense", "planes_im2col",
    "unpack", "words", "DenseWeights", "bgemm", "bgemm_reference", "ConvWeights", "bconv2d",
    "bconv2d_planes", "bconv2d_reference", "bmaxpool2d", "bmaxpool2d_reference", "Thresholds", "fold_sign",
    "PackedModel", "PackError", "warmup", "predict_packed", "MultiBitWeights", "bitserial_gemm",
    "bitserial_gemm_reference", "MultiBitModel",
]


def predict_packed(artifact_or_model, x_uint8, **kwargs):
    from .commands import predict_packed as impl

    return impl(artifact_or_model, x_uint8, **kwargs)


def warmup(references: bool = False) -> None:
    """Compile (or load from numba's cache) what the packed engine runs, once, on tiny inputs:
    the tile driver and the bit-plane packers; ``references=True`` also the packers and reference
    kernels the tests and benchmarks use."""
    import numpy as np

    from . import tiles

    rng = np.random.default_rng(0)
    a = np.where(rng.random((3, 70)) < 0.5, -1.0, 1.0).astype(np.float32)
    w = DenseWeights.from_float(a[:2])
    bgemm(pack_reference(a), w)  # run_tiles
    pw = ConvWeights.from_float(np.ones((2, 3, 3, 3), np.float32), 1, 1, tiles.PLANES)
    bconv2d_planes(rng.integers(0, 256, (1, 3, 4, 4), dtype=np.uint8), pw)
    planes_dense(rng.integers(0, 256, (2, 5), dtype=np.uint8))
    if references:
        x = np.where(rng.random((1, 3, 4, 4)) < 0.5, -1.0, 1.0).astype(np.float32)
        cw = ConvWeights.from_float(np.ones((2, 3, 3, 3), np.float32), 1, 1)
        bconv2d(pack_nchw(x, 1), cw)
        pack_rows(a)
        bgemm_reference(pack_reference(a), w.bits, 70)
        bconv2d_reference(pack_nchw(x, 0), cw.bits, 3, 1, 1)
        bmaxpool2d(pack_nchw(x, 0), 2)
