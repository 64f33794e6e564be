"""DoReFa quantize_k, fw, fa, fg (papers.md §c.3, tensorpack dorefa.py) against closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnnrepro import quant
from bnnrepro.quant import quantize_gradient, quantize_k


def test_quantize_k_hand_values_and_identity_gradient():
    x = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.9, 1.0], requires_grad=True)
    y = quantize_k(x, 2)
    # 3x = 0, 0.3, 0.6, 1.5 (half to even -> 2), 2.7, 3
    assert torch.allclose(y, torch.tensor([0, 0, 1, 2, 3, 3]) / 3)
    g = torch.arange(6.0)
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_weight_1bit_scaled_sign():
    w = torch.tensor([[0.5, -0.25], [0.0, 1.0]], requires_grad=True)
    y = quant.build("dorefa_weight", bits=1)(w)
    e = (0.5 + 0.25 + 0.0 + 1.0) / 4
    assert torch.equal(y, torch.tensor([[e, -e], [e, e]]))  # zero -> +E
    g = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    y.backward(g)
    assert torch.equal(w.grad, g)  # STE, no gradient through E


def test_weight_kbit_hand_values():
    w = torch.tensor([[0.5, -0.25], [0.0, 1.0]])
    y = quant.build("dorefa_weight", bits=2)(w)
    # tanh/(2 max|tanh|) + 1/2 = 0.803, 0.339, 0.5, 1 -> round(3 *) = 2, 1, 2 (1.5 half to even), 3
    assert torch.allclose(y, torch.tensor([[1 / 3, -1 / 3], [1 / 3, 1.0]]))


def test_weight_kbit_gradient_through_tanh_and_max():
    torch.manual_seed(0)
    w = torch.randn(4, 5, requires_grad=True)
    g = torch.randn(4, 5)
    quant.build("dorefa_weight", bits=3)(w).backward(g)
    t = torch.tanh(w.detach())
    m = t.abs().max()
    a = t.abs().argmax()
    # y = 2 quantize_k(t / 2M + 1/2) - 1, STE: dy/dt_j = g_j / M - [j = argmax] sign(t_a) sum_i g_i t_i / M^2
    grad_t = g / m
    grad_t.view(-1)[a] -= torch.sign(t.view(-1)[a]) * (g * t).sum() / m**2
    assert torch.allclose(w.grad, grad_t * (1 - t**2), atol=1e-6)


def test_weight_32_is_identity():
    w = torch.randn(3)
    assert quant.build("dorefa_weight", bits=32)(w) is w


def test_activation_hand_values_and_gradient():
    x = torch.tensor([-0.5, 0.0, 0.1, 0.2, 0.5, 0.9, 1.0, 1.5], requires_grad=True)
    y = quant.build("dorefa_activation", bits=2)(x)
    assert torch.allclose(y, torch.tensor([0, 0, 0, 1, 2, 3, 3, 3]) / 3)
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 1, 0]  # clip's gradient (inclusive), STE inside


def test_activation_32_is_relu_and_cabs_variant():
    x = torch.tensor([-1.5, -0.4, 0.3, 2.0])
    assert torch.equal(quant.build("dorefa_activation", bits=32)(x), torch.relu(x))
    cabs = quant.build("dorefa_activation", bits=2, nonlin="cabs")
    assert torch.allclose(cabs(x), torch.tensor([3, 1, 1, 3]) / 3)  # min(1, |x|) then quantize
    assert torch.equal(quant.build("dorefa_activation", bits=32, nonlin="cabs")(x), torch.tensor([1, 0.4, 0.3, 1]))
    clip = quant.build("dorefa_activation", bits=2, quantize=False)
    assert torch.equal(clip(x), torch.tensor([0, 0, 0.3, 1])) and clip.precision == 32
    with pytest.raises(ValueError, match="nonlin"):
        quant.build("dorefa_activation", nonlin="tanh")


def test_gradient_matches_formula_with_the_same_noise():
    bits, n = 4, 15.0
    g = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(3, 2, 5, requires_grad=True)
    q = quant.build("dorefa_gradient", bits=bits)
    q.generator = torch.Generator().manual_seed(7)
    y = q(x)
    assert torch.equal(y, x)  # forward: identity
    y.backward(g)
    noise = (torch.rand(g.shape, generator=torch.Generator().manual_seed(7)) - 0.5) / n
    m = g.abs().amax(dim=(1, 2), keepdim=True)  # per example
    expected = 2 * m * (torch.round(n * (g / (2 * m) + 0.5 + noise).clamp(0, 1)) / n - 0.5)
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_gradient_extremes_exact_and_zero_rows():
    g = torch.tensor([[2.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-0.1, 0.05, 0.1]])
    out = quantize_gradient(g, 2, generator=torch.Generator().manual_seed(0))
    assert out[0, 0] == 2.0 and out[0, 1] == -2.0 and out[2, 0] == -0.1 and out[2, 2] == 0.1
    assert torch.equal(out[1], torch.zeros(3))


def test_gradient_is_unbiased():
    g = torch.tensor([0.7, -0.2, 0.05, -1.0, 0.33])
    draws = quantize_gradient(g.expand(20000, 5).contiguous(), 2, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(draws.mean(0), g, atol=0.02)
    assert draws.unique().numel() <= 4  # 2 bits


def test_gradient_32_is_identity():
    x = torch.randn(2, 3, requires_grad=True)
    g = torch.randn(2, 3)
    quant.build("dorefa_gradient", bits=32)(x).backward(g)
    assert torch.equal(x.grad, g)


def test_registry():
    for name in ("dorefa_weight", "dorefa_activation", "dorefa_gradient"):
        assert quant.allowed_bits(name) == tuple(range(1, 9)) + (32,)
        assert quant.build(name, bits=3).precision == 3
        with pytest.raises(ValueError, match=f"{name}.*allowed: 1, 2, 3, 4, 5, 6, 7, 8, 32"):
            quant.build(name, bits=16)
    assert not quant.build("dorefa_weight").clips_latent_weights


finite = arrays(np.float32, st.integers(1, 64), elements=st.floats(-3, 3, width=32))
bits = st.sampled_from([1, 2, 3, 4, 8])


@settings(max_examples=30, deadline=None)
@given(x=finite, k=bits)
def test_activation_levels_range_idempotence(x, k):
    q = quant.build("dorefa_activation", bits=k)
    y = q(torch.from_numpy(x))
    assert y.unique().numel() <= 2**k
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(q(y), y)


@settings(max_examples=30, deadline=None)
@given(x=finite, k=bits)
def test_weight_levels_and_range(x, k):
    q = quant.build("dorefa_weight", bits=k)
    y = q(torch.from_numpy(x))
    assert y.unique().numel() <= 2**k
    assert y.abs().max() <= max(1.0, float(np.abs(x).mean()) * (1 + 1e-6))
    if k == 1:
        assert torch.allclose(q(y), y)


@settings(max_examples=30, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 64), elements=st.floats(0, 1, width=32)), k=bits)
def test_quantize_k_levels_idempotence(x, k):
    y = quantize_k(torch.from_numpy(x), k)
    assert y.unique().numel() <= 2**k
    assert torch.equal(quantize_k(y, k), y)
