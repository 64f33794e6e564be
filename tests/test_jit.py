"""The training kernels (Numba) leave torch's thread count as it was set."""
from __future__ import annotations

import subprocess
import sys

CALLS = """
import numpy as np, torch
torch.set_num_threads(1)
from bnnrepro.quant.ste import sign_pm1_counting, stochastic_sign
from bnnrepro.nn.dropout import masked
from bnnrepro.nn import precision
from bnnrepro.optim.shift_adamax import ShiftAdaMax
x = torch.randn(64, 32)
sign_pm1_counting(x, 1.0); stochastic_sign(x, torch.rand(64, 32)); masked(x, 1, 0.2)
w8, wb, _ = precision.sign_operands(x, 1.0); precision.widen_to_float(wb)
p = torch.nn.Parameter(x.clone()); p.grad = torch.randn(64, 32); ShiftAdaMax([p], fused=True).step()
print(torch.get_num_threads())
"""


def test_a_fresh_process_set_to_one_thread_keeps_one_after_every_kernel():
    # a fresh interpreter: the first kernel call of a process is the one that reset OpenMP's count
    out = subprocess.run([sys.executable, "-c", CALLS], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-1] == "1"
