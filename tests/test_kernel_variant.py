"""The popcount variant the packed kernels run: read from LLVM's machine code for this CPU, forced
to other targets in fresh processes, and each variant bit-exact."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from llvmlite import binding as llvm

from bnnrepro.kernels import variant

X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.mark.parametrize("asm,want", [
    ("vpopcntq %zmm0, %zmm1\n", ("avx512-vpopcntdq", 512)),
    ("vpopcntq ymm1, ymm0\n", ("avx512-vpopcntdq", 256)),
    ("vpshufb %ymm2, %ymm3, %ymm4\nvpsadbw %ymm0, %ymm4, %ymm4\n", ("avx2-pshufb", 256)),
    ("pshufb %xmm2, %xmm3\npsadbw %xmm0, %xmm3\n", ("ssse3-pshufb", 128)),
    ("popcntq %rax, %rcx\n", ("scalar-popcnt", 64)),
    ("shrq %rax\nandq %rcx, %rax\nimulq %rdx, %rax\n", ("scalar-bitwise", 64)),
])
def test_classify_names_the_popcount_lowering(asm, want):
    assert variant.classify(asm) == want


def test_detect_matches_the_host_features():
    got = variant.detect()
    assert got["target_cpu"] == (os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name())
    if not X86 or os.environ.get("NUMBA_CPU_NAME"):
        pytest.skip("the expectations below are the host's x86 features")
    feats = llvm.get_host_cpu_features()
    if feats.get("avx512vpopcntdq") and feats.get("avx512f"):
        assert got == dict(got, variant="avx512-vpopcntdq", vector_bits=512)
    elif feats.get("avx2"):
        assert got["variant"] in ("avx2-pshufb", "scalar-popcnt")
    else:
        assert got["variant"] in ("ssse3-pshufb", "scalar-popcnt", "scalar-bitwise")


@pytest.mark.skipif(not X86, reason="forced x86 targets")
def test_a_forced_target_compiles_another_variant_in_a_fresh_process():
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES=variant.NEUTRAL_FEATURE)
    out = subprocess.run([sys.executable, "-c", "from bnnrepro.kernels import variant; print(variant.detect())"],
                         env=env, capture_output=True, text=True, check=True)
    assert "'variant': 'scalar-bitwise'" in out.stdout and "'target_cpu': 'x86-64'" in out.stdout


@pytest.mark.skipif(not X86, reason="forced x86 targets")
def test_compare_times_each_target_and_checks_it_bit_exact():
    rows = variant.compare(4, 256, 64, 2, targets=(("x86-64", "SSE2 only"),))
    assert [r["target"] for r in rows] == ["host", "x86-64"] and [r["picked"] for r in rows] == [True, False]
    assert rows[0]["variant"] == variant.detect()["variant"]
    assert rows[1]["variant"] == "scalar-bitwise"
    for r in rows:
        assert r["bit_exact"] is True and r["ms"] > 0, r
