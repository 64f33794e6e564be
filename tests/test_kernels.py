"""Packed binary kernels: bit-exact against torch's float ops on +-1 data, reference vs optimized."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bnnrepro.kernels import (ConvWeights, DenseWeights, bconv2d, bconv2d_planes, bconv2d_reference, bgemm,
                              bgemm_reference, bmaxpool2d, bmaxpool2d_reference, fold_sign, pack_nchw,
                              pack_nchw_reference, pack_reference, pack_rows, planes_dense, planes_im2col, unpack)
from bnnrepro.kernels import bitpack, tiles
from bnnrepro.kernels.fold import chain_fn
from bnnrepro.quant import sign_pm1

HYP = settings(max_examples=25, deadline=None, derandomize=True)


def pm1(rng, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- packing

def test_encoding_follows_training_sign_convention():
    x = torch.tensor([[0.0, -0.0, 1.0, -1.0, float("nan"), 1e-30, -1e-30, 3.0]])
    bits = pack_reference(x.numpy())
    assert np.array_equal(unpack(bits, 8), sign_pm1(x).numpy().astype(np.int8))
    assert np.array_equal(pack_rows(x.numpy()), bits)
    assert int(bits[0, 0]) == 0b01011000  # -1 at positions 3, 4 (NaN), 6


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130, 784])
def test_pack_rows_matches_reference_and_roundtrips(k):
    x = np.random.default_rng(k).standard_normal((7, k)).astype(np.float32)
    bits = pack_rows(x)
    assert bits.shape == (7, bitpack.words(k)) and bits.dtype == np.uint64
    assert np.array_equal(bits, pack_reference(x))
    assert np.array_equal(unpack(bits, k), np.where(x >= 0, 1, -1))
    if k % 64:
        assert not np.any(bits[:, -1] >> np.uint64(k % 64))  # padding bits stay 0


@pytest.mark.parametrize("c,pad", [(1, 0), (3, 1), (65, 1), (128, 2)])
def test_pack_nchw_matches_reference(c, pad):
    x = np.random.default_rng(c).standard_normal((2, c, 5, 6)).astype(np.float32)
    assert np.array_equal(pack_nchw(x, pad), pack_nchw_reference(x, pad))


def test_bit_planes_match_reference():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 130), dtype=np.uint8)
    assert np.array_equal(planes_dense(x), bitpack.planes_dense_reference(x))
    img = rng.integers(0, 256, (2, 3, 7, 6), dtype=np.uint8)
    for k, s, p in [(3, 1, 1), (3, 2, 1), (3, 1, 0), (5, 2, 2), (1, 1, 0)]:
        assert np.array_equal(planes_im2col(img, k, k, s, p), bitpack.planes_im2col_reference(img, k, k, s, p))


# ---------------------------------------------------------------- GEMM

def _check_gemm(m, n, k, seed=0):
    rng = np.random.default_rng(seed)
    a, w = pm1(rng, (m, k)), pm1(rng, (n, k))
    want = F.linear(torch.from_numpy(a), torch.from_numpy(w)).numpy()
    W = DenseWeights.from_float(w)
    got = bgemm(pack_rows(a), W)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bgemm_reference(pack_reference(a), W.bits, k), want)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 5, 64), (3, 70, 100), (5, 33, 130), (4, 32, 63),
                                   (9, 100, 65), (17, 64, 4096), (2, 10, 784), (1, 4096, 128)])
def test_bgemm_bit_exact_grid(m, n, k):
    _check_gemm(m, n, k)


@HYP
@given(m=st.integers(1, 20), n=st.integers(1, 80), k=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_bgemm_bit_exact_hypothesis(m, n, k, seed):
    _check_gemm(m, n, k, seed)


def test_bgemm_rejects_mismatched_words():
    W = DenseWeights.from_float(np.ones((3, 100), np.float32))
    with pytest.raises(ValueError, match="words"):
        bgemm(pack_rows(np.ones((2, 200), np.float32)), W)


# ---------------------------------------------------------------- convolution

def _check_conv(n, c, h, w, o, k, s, p, seed=0):
    rng = np.random.default_rng(seed)
    x, wt = pm1(rng, (n, c, h, w)), pm1(rng, (o, c, k, k))
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), stride=s, padding=p).permute(0, 2, 3, 1).numpy()
    W = ConvWeights.from_float(wt, s, p)
    np.testing.assert_array_equal(bconv2d(pack_nchw(x, p), W), want)
    np.testing.assert_array_equal(bconv2d_reference(pack_nchw(x, 0), W.bits, c, s, p), want)


@pytest.mark.parametrize("n,c,h,w,o", [(1, 1, 5, 5, 3), (1, 3, 8, 7, 5), (2, 65, 6, 6, 70), (1, 64, 9, 4, 64),
                                       (1, 130, 5, 5, 33)])
@pytest.mark.parametrize("s,p", [(1, 0), (1, 1), (2, 0), (2, 1)])
def test_bconv2d_bit_exact_grid(n, c, h, w, o, s, p):
    _check_conv(n, c, h, w, o, 3, s, p)


@pytest.mark.parametrize("k,s,p", [(1, 1, 0), (5, 1, 2), (5, 2, 2), (2, 2, 0)])
def test_bconv2d_other_kernel_sizes(k, s, p):
    _check_conv(2, 7, 9, 8, 9, k, s, p)


@HYP
@given(n=st.integers(1, 2), c=st.integers(1, 70), h=st.integers(1, 9), w=st.integers(1, 9), o=st.integers(1, 40),
       k=st.sampled_from([1, 3, 5]), s=st.integers(1, 2), p=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_bconv2d_bit_exact_hypothesis(n, c, h, w, o, k, s, p, seed):
    if h + 2 * p < k or w + 2 * p < k:
        return
    _check_conv(n, c, h, w, o, k, s, p, seed)


# ---------------------------------------------------------------- first layer on uint8 pixels

def test_bit_plane_dense_is_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 784), dtype=np.uint8)
    w = pm1(rng, (50, 784))
    exact = (2 * x.astype(np.int64) - 255) @ w.astype(np.int64).T  # 255 * (w . x) with x = 2p/255 - 1
    W = DenseWeights.from_float(w, tiles.PLANES)
    from bnnrepro.kernels.gemm import row_tables

    out = np.zeros((6, W.npad), np.int32)
    xoffs, kcoffs, rows = row_tables(6, W.bits.shape[1], tiles.PLANES)
    tiles.run_tiles(tiles.PLANES, planes_dense(x).reshape(6, -1), 0, xoffs, 1, W.bits.shape[1], 0, W.panels,
                    np.full((1, W.npad), W.k, np.int64), kcoffs, out, 0, np.ascontiguousarray(rows * W.npad * 4),
                    np.zeros(W.npad, np.int64), np.zeros(W.npad // 8, np.uint8), tiles.INT32, 1, True)
    np.testing.assert_array_equal(out[:, :50], exact)


@pytest.mark.parametrize("c,k,s,p", [(3, 3, 1, 1), (1, 3, 2, 1), (3, 5, 1, 2), (8, 3, 1, 0), (30, 3, 1, 1)])
def test_bit_plane_conv_is_exact_with_zero_padding(c, k, s, p):
    rng = np.random.default_rng(c)
    x = rng.integers(0, 256, (2, c, 7, 6), dtype=np.uint8)
    w = pm1(rng, (20, c, k, k))
    xs = torch.from_numpy(2 * x.astype(np.int64) - 255).double()  # 255 * x, zero padded like x
    exact = F.conv2d(xs, torch.from_numpy(w).double(), stride=s, padding=p).permute(0, 2, 3, 1).numpy()
    got = bconv2d_planes(x, ConvWeights.from_float(w, s, p, tiles.PLANES))
    np.testing.assert_array_equal(got, exact.astype(np.int64))


# ---------------------------------------------------------------- max-pool

@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1)])
def test_bmaxpool_matches_torch(k, s):
    x = pm1(np.random.default_rng(k), (2, 70, 7, 8))
    want = F.max_pool2d(torch.from_numpy(x), k, s)
    bits = pack_nchw(x, 0)
    for got in (bmaxpool2d(bits, k, s), bmaxpool2d_reference(bits, k, s)):
        np.testing.assert_array_equal(np.moveaxis(unpack(got, 70), -1, 1), want.numpy())


# ---------------------------------------------------------------- BatchNorm + sign folding

@pytest.mark.parametrize("dim", [1, 2])
def test_fold_matches_torch_batchnorm_sign_for_every_integer(dim):
    k, c = 300, 64
    g = torch.Generator().manual_seed(dim)
    bn = (torch.nn.BatchNorm1d if dim == 1 else torch.nn.BatchNorm2d)(c, eps=1e-4).eval()
    with torch.no_grad():
        bn.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 2 * k)
        bn.running_var.copy_(torch.rand(c, generator=g) * 100 + 0.01)
        bn.weight.copy_(torch.rand(c, generator=g) * 2 - 1)
        bn.weight[:4] = 0.0  # constant output, both signs of beta
        bn.bias.copy_(torch.rand(c, generator=g) * 2 - 1)
        bn.weight[10] = -1e-30  # tiny negative gamma
        bn.running_mean[11] = 0.5  # threshold exactly between two integers
    spatial = () if dim == 1 else (3, 2)
    th = fold_sign(chain_fn([bn]), c, spatial, -k, k)
    assert th.inconsistent == 0 and th.flip[bn.weight.detach().numpy() < 0].any()
    y = np.arange(-k, k + 1)
    v = torch.from_numpy(y.astype(np.float32))[:, None].expand(-1, c)
    if dim == 2:
        v = v[:, :, None, None]
    with torch.no_grad():
        want_neg = (sign_pm1(bn(v.contiguous())) < 0).reshape(len(y), c).numpy()
    got_neg = th.apply(np.repeat(y[:, None], c, axis=1))
    np.testing.assert_array_equal(got_neg, want_neg)


# ---------------------------------------------------------------- build: cache and portability

def _run(code: str, env_extra: dict) -> str:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_numba_cache_is_reused_by_a_second_process(tmp_path):
    code = """
        import numpy as np
        from bnnrepro.kernels import bgemm, pack_rows, DenseWeights, tiles, bitpack
        a = np.ones((3, 70), np.float32)
        assert (bgemm(pack_rows(a), DenseWeights.from_float(a)) == 70).all()
        for f in (tiles.run_tiles, bitpack._pack_rows):
            print(f.__name__, f.stats.cache_hits.total(), f.stats.cache_misses.total())
    """
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = _run(code, env).split()
    second = _run(code, env).split()
    assert first[1::3] == ["0", "0"]  # compiled (nothing to hit yet)
    assert all(int(h) > 0 for h in second[1::3]) and second[2::3] == ["0", "0"], second


def test_kernels_run_exactly_without_avx512(tmp_path):
    """Code generated for a Haswell (AVX2, no VPOPCNTQ): slower, same results."""
    code = """
        import numpy as np, torch, torch.nn.functional as F
        from bnnrepro.kernels import bgemm, bconv2d, pack_rows, pack_nchw, DenseWeights, ConvWeights, tiles
        rng = np.random.default_rng(0)
        pm1 = lambda s: np.where(rng.random(s) < 0.5, -1.0, 1.0).astype(np.float32)
        a, w = pm1((5, 130)), pm1((40, 130))
        want = F.linear(torch.tensor(a), torch.tensor(w)).numpy()
        assert np.array_equal(bgemm(pack_rows(a), DenseWeights.from_float(w)), want)
        x, k = pm1((1, 65, 5, 5)), pm1((9, 65, 3, 3))
        got = bconv2d(pack_nchw(x, 1), ConvWeights.from_float(k, 1, 1))
        assert np.array_equal(got, F.conv2d(torch.tensor(x), torch.tensor(k), padding=1).permute(0, 2, 3, 1).numpy())
        asm = tiles.run_tiles.overloads[tiles.run_tiles.signatures[0]].library.get_asm_str()
        print("vpopcntq" in asm, "zmm" in asm)
    """
    out = _run(code, {"NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_CPU_NAME": "haswell",
                      "NUMBA_CPU_FEATURES": "+avx,+avx2,+popcnt,+sse4.2,+fma,+bmi,+bmi2"})
    assert out.split() == ["False", "False"]
