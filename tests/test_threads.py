"""set_threads sizes torch's and numba's pools together (numba capped at its pool)."""
from __future__ import annotations

import numba
import torch

from bnnrepro.threads import set_threads


def test_both_pools_follow_and_numba_is_capped():
    before = (torch.get_num_threads(), numba.get_num_threads())
    try:
        set_threads(1)
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
        set_threads(numba.config.NUMBA_NUM_THREADS + 3)
        assert torch.get_num_threads() == numba.config.NUMBA_NUM_THREADS + 3
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])

