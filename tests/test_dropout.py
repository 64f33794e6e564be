"""nn.Dropout's seeded mask: the Bernoulli rate, independence, determinism, and its gradient."""
from __future__ import annotations

import math

import pytest
import torch

from bnnrepro.nn import Dropout
from bnnrepro.nn.dropout import masked
from bnnrepro.nn.precision import dropout_scale


@pytest.mark.parametrize("p", [0.2, 0.5, 0.7])
def test_the_mask_keeps_each_value_with_probability_one_minus_p(p):
    n = 1 << 20
    kept = masked(torch.ones(n), seed=12345, p=p) != 0
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int(kept.sum()) - n * (1 - p)) < 5 * sigma
    # neighbours and elements 64 apart are independent: the rate of both kept is (1 - p)^2
    for lag in (1, 64):
        both = int((kept[:-lag] & kept[lag:]).sum())
        assert abs(both - (n - lag) * (1 - p) ** 2) < 5 * math.sqrt(n * (1 - p) ** 2 * (1 - (1 - p) ** 2))
    # another seed, another mask, unrelated to this one
    other = masked(torch.ones(n), seed=12346, p=p) != 0
    assert abs(int((kept & other).sum()) - n * (1 - p) ** 2) < 5 * math.sqrt(n)


def test_kept_values_are_scaled_as_torch_scales_them_and_nan_is_not_hidden():
    x = torch.randn(1000)
    x[:10] = float("nan")
    y = masked(x, seed=7, p=0.2)
    c = dropout_scale(torch.nn.Dropout(0.2))
    kept = y != 0
    assert torch.equal(y[kept & ~x.isnan()], x[kept & ~x.isnan()] * c)
    assert y[:10].isnan().all()  # x * 0 is NaN, as in torch's dropout


@pytest.mark.parametrize("threads", [1, 2])
def test_the_mask_is_the_seeds_alone_and_the_gradient_uses_it(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        d = Dropout(0.3).train()
        x = torch.randn(64, 257, requires_grad=True)
        torch.manual_seed(3)
        y = d(x)
        g = torch.randn(64, 257)
        y.backward(g)
        mask = (y != 0).float()
        assert torch.equal(x.grad, g * mask * dropout_scale(d))
        torch.manual_seed(3)
        assert torch.equal(d(x.detach()), y.detach())  # torch's seed decides the mask
        torch.manual_seed(3)
        with torch.no_grad():
            reference = masked(x.detach(), int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)), 0.3)
        assert torch.equal(reference, y.detach())
        assert not torch.equal(d(x.detach()), y.detach())  # the next call draws another seed
    finally:
        torch.set_num_threads(before)


def test_eval_mode_and_other_inputs_are_torchs_dropout():
    d = Dropout(0.5)
    x = torch.randn(8, 9)
    assert torch.equal(d.eval()(x), x)
    d.train()
    torch.manual_seed(0)
    strided = d(x.t())  # not contiguous: nn.Dropout's own mask
    torch.manual_seed(0)
    assert torch.equal(strided, torch.nn.functional.dropout(x.t(), 0.5, True))
    assert isinstance(d, torch.nn.Dropout)


def test_the_mask_does_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    x = torch.randn(100_003)
    try:
        masks = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            masks.append(masked(x, seed=99, p=0.2))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(masks[0], masks[1])
