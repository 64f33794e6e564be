"""QNN quantizers, AP2, quantized gradients and the bit-plane first layer, against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnnrepro import quant
from bnnrepro.quant import ap2, bitplane_conv2d, bitplane_linear, bitplanes

X = [-1.3, -1.0, -0.6, -0.26, -0.1, 0.0, 0.1, 0.3, 0.74, 0.9, 1.2]
INSIDE = [0.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # STE cancelled where |x| > 1


def forward_backward(q, values, upstream=None):
    x = torch.tensor(values, requires_grad=True)
    y = q(x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    return y.detach().tolist(), x.grad.tolist()


def test_ap2_hand_values():
    x = torch.tensor([0.0, 1.0, 0.7, 0.75, 1.4, 1.5, 3.0, -5.0, -0.3, 2.0**-20])
    # log2: 0.7 -> -0.51 (rounds to -1), 0.75 -> -0.42 (0), 1.4 -> 0.49 (0), 1.5 -> 0.58 (1), 3 -> 1.58 (2),
    # 5 -> 2.32 (2), 0.3 -> -1.74 (-2)
    assert ap2(x).tolist() == [0.0, 1.0, 0.5, 1.0, 1.0, 2.0, 4.0, -4.0, -0.25, 2.0**-20]


@pytest.mark.parametrize("bits, expected", [
    (1, [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1]),
    # step 1/2, range [-1, 1/2]
    (2, [-1, -1, -0.5, -0.5, 0, 0, 0, 0.5, 0.5, 0.5, 0.5]),
    # step 1/4, range [-1, 3/4]; -0.26*4 = -1.04 -> -1; 0.74*4 = 2.96 -> 3
    (3, [-1, -1, -0.5, -0.25, 0, 0, 0, 0.25, 0.75, 0.75, 0.75]),
])
def test_qnn_linear_hand_values_and_ste(bits, expected):
    y, grad = forward_backward(quant.build("qnn_linear", bits=bits), X)
    assert y == expected
    assert grad == INSIDE


def test_qnn_linear_no_negative_zero():
    y = quant.build("qnn_linear", bits=3)(torch.tensor([-0.1]))
    assert math.copysign(1.0, y.item()) == 1.0


def test_qnn_linear_scale():
    q = quant.build("qnn_linear", bits=3, scale=0.25)
    y, grad = forward_backward(q, [-0.3, -0.1, 0.02, 0.2, 0.3])
    # grid 0.25 * {-1, -3/4, ..., 3/4}; gradient window |x| <= 0.25
    assert y == [-0.25, -0.125, 0.0, 0.1875, 0.1875]
    assert grad == [0.0, 1, 1, 1, 0]


def test_qnn_linear_32_bits_is_identity():
    x = torch.randn(5)
    assert quant.build("qnn_linear", bits=32)(x) is x
    assert quant.build("qnn_log", bits=32)(x) is x


def test_qnn_linear_stochastic_is_unbiased_on_neighbours():
    q = quant.build("qnn_linear", bits=3, stochastic=True)
    q.generator = torch.Generator().manual_seed(0)
    x = torch.full((20000,), 0.3)
    y = q(x)
    assert set(y.unique().tolist()) == {0.25, 0.5}
    assert abs(y.mean().item() - 0.3) < 0.01
    q.eval()
    assert q(x).unique().tolist() == [0.25]


def test_qnn_linear_1bit_stochastic_is_hard_sigmoid():
    q = quant.build("qnn_linear", bits=1, stochastic=True)
    q.generator = torch.Generator().manual_seed(1)
    y = q(torch.full((20000,), 0.5))
    assert abs((y == 1).float().mean().item() - 0.75) < 0.02  # hard_sigmoid(0.5) = 0.75


@pytest.mark.parametrize("bits, expected", [
    (1, [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1]),
    # magnitudes {1, 1/2}
    (2, [-1, -1, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, 1, 1, 1]),
    # magnitudes {1, 1/2, 1/4, 1/8}; 0 -> +1/8; 0.74 -> log2 -0.43 -> 1; 0.26 -> -1.94 -> 1/4
    (3, [-1, -1, -0.5, -0.25, -0.125, 0.125, 0.125, 0.25, 1, 1, 1]),
])
def test_qnn_log_hand_values_and_ste(bits, expected):
    y, grad = forward_backward(quant.build("qnn_log", bits=bits), X)
    assert y == expected
    assert grad == INSIDE


finite = arrays(np.float32, st.integers(1, 64), elements=st.floats(-3, 3, width=32))


@settings(max_examples=40, deadline=None)
@given(x=finite, bits=st.sampled_from([1, 2, 3, 4, 5, 8]), name=st.sampled_from(["qnn_linear", "qnn_log"]))
def test_levels_range_idempotence(x, bits, name):
    q = quant.build(name, bits=bits)
    y = q(torch.from_numpy(x))
    assert y.unique().numel() <= 2**bits
    assert y.abs().max() <= 1.0
    assert torch.equal(q(y), y)


@settings(max_examples=20, deadline=None)
@given(x=finite, bits=st.sampled_from([2, 3, 4]))
def test_qnn_linear_values_are_fixed_point(x, bits):
    y = quant.build("qnn_linear", bits=bits)(torch.from_numpy(x)) * 2 ** (bits - 1)
    assert torch.equal(y, y.round())
    assert y.min() >= -(2 ** (bits - 1)) and y.max() <= 2 ** (bits - 1) - 1


def test_registry_bits_and_flags():
    for name in ("qnn_linear", "qnn_log", "qnn_gradient"):
        assert quant.allowed_bits(name) == tuple(range(1, 9)) + (32,)
        assert quant.build(name, bits=5).precision == 5
        with pytest.raises(ValueError, match=name):
            quant.build(name, bits=9)
    assert quant.build("qnn_linear").clips_latent_weights
    assert quant.build("qnn_gradient").precision == 6


def test_qnn_gradient_is_identity_forward_quantized_backward():
    q = quant.build("qnn_gradient", bits=3)
    q.generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, requires_grad=True)
    y = q(x)
    assert torch.equal(y, x)
    g = torch.randn(4, 7)
    y.backward(g)
    m = g.abs().amax(dim=1, keepdim=True)
    levels = (x.grad / (2 * m) + 0.5) * 7
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_bitplanes_reconstruct():
    x = torch.randint(0, 256, (3, 5), dtype=torch.uint8)
    planes = bitplanes(x)
    assert planes.shape == (8, 3, 5) and set(planes.unique().tolist()) <= {0, 1}
    assert torch.equal(sum(2**n * planes[n] for n in range(8)), x.to(torch.int32))


def test_bitplane_linear_equals_plain_product():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 784), dtype=torch.uint8, generator=gen)
    w = torch.where(torch.rand(50, 784, generator=gen) < 0.5, -1.0, 1.0)
    assert torch.equal(bitplane_linear(x, w), F.linear(x.float(), w))


def test_bitplane_conv2d_equals_plain_conv():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 9, 9), dtype=torch.uint8, generator=gen)
    w = torch.where(torch.rand(4, 3, 3, 3, generator=gen) < 0.5, -1.0, 1.0)
    kw = dict(stride=2, padding=1)
    assert torch.equal(bitplane_conv2d(x, w, **kw), F.conv2d(x.float(), w, **kw))


def test_bitplanes_rejects_float():
    with pytest.raises(TypeError):
        bitplanes(torch.rand(3))


def test_ap2_rounds_exactly_in_the_log_domain():
    """ap2's bit operations against the formula in float64, over 2^-60..2^60 and both signs, with
    the float32 neighbours of sqrt(2) * 2^e, where rounding log2 in float32 could go either way."""
    from bnnrepro.quant.qnn import ap2_reference

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) * torch.exp2(torch.randint(-60, 60, (200_000,), generator=g).float())
    root2 = torch.tensor(2.0).sqrt().float()
    near = torch.stack([torch.nextafter(root2, torch.tensor(0.0)), root2, torch.nextafter(root2, torch.tensor(2.0))])
    near = (near[None, :] * torch.exp2(torch.arange(-40.0, 41.0))[:, None]).flatten()
    x = torch.cat([x, near, -near, torch.tensor([0.0, -0.0, float("inf"), -float("inf")])])
    assert torch.equal(ap2(x), ap2_reference(x))
    # below sqrt(2) rounds down, from the first float32 above it up
    assert ap2(root2).item() == 1.0 and ap2(torch.nextafter(root2, torch.tensor(2.0))).item() == 2.0
    assert not torch.isfinite(ap2(torch.tensor([float("nan")]))).any()


@pytest.mark.parametrize("name, kwargs, bits, expected", [
    # symmetric linear grid, k = 2: ternary {-1, 0, 1}; k = 3: {-1, -2/3, -1/3, 0, 1/3, 2/3, 1}
    ("qnn_linear", {"grid": "symmetric"}, 2, [-1, -1, -1, 0, 0, 0, 0, 0, 1, 1, 1]),
    ("qnn_linear", {"grid": "symmetric"}, 3, [-1, -1, -2 / 3, -1 / 3, 0, 0, 0, 1 / 3, 2 / 3, 1, 1]),
    # log with a zero code, k = 3: magnitudes {1, 1/2, 1/4} and 0; 0.1 -> log2 -3.3 -> 0; 0.6 -> -0.74 -> 1/2
    ("qnn_log", {"zero_code": True}, 3, [-1, -1, -0.5, -0.25, 0, 0, 0, 0.25, 1, 1, 1]),
])
def test_alternative_grids_hand_values(name, kwargs, bits, expected):
    y, grad = forward_backward(quant.build(name, bits=bits, **kwargs), X)
    assert y == pytest.approx(expected, abs=1e-7)
    assert grad == INSIDE
    assert all(math.copysign(1.0, v) == 1.0 for v in y if v == 0)  # no -0.0


@settings(max_examples=40, deadline=None)
@given(x=finite, bits=st.sampled_from([2, 3, 4, 5, 8]),
       alt=st.sampled_from([("qnn_linear", {"grid": "symmetric"}), ("qnn_log", {"zero_code": True})]))
def test_alternative_grids_are_odd_with_a_zero_and_one_level_fewer(x, bits, alt):
    name, kwargs = alt
    q = quant.build(name, bits=bits, **kwargs)
    t = torch.from_numpy(x)
    y = q(t)
    assert y.unique().numel() <= 2**bits - 1
    assert torch.equal(q(-t), -y + 0.0)  # symmetric around zero
    assert q(torch.zeros(1)).item() == 0.0
    assert torch.equal(q(y), y)


def test_alternative_grid_arguments_are_checked():
    with pytest.raises(ValueError, match="grid"):
        quant.build("qnn_linear", bits=2, grid="ternary")
    with pytest.raises(ValueError, match="zero_code"):
        quant.build("qnn_log", bits=1, zero_code=True)
