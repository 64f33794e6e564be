"""Shift-based BatchNorm and shift-based AdaMax (BNN Algorithms 3 and 4, Torch7 code)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bnnrepro.nn import ShiftBatchNorm
from bnnrepro.optim import ShiftAdaMax, param_groups
from bnnrepro.quant import ap2


def hand_bn():
    bn = ShiftBatchNorm(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -0.3]))  # AP2: 4, -1/4
        bn.bias.copy_(torch.tensor([0.25, 1.0]))
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 2.0], [7.0, 2.0]], requires_grad=True)
    return bn, x


def test_forward_hand_values():
    bn, x = hand_bn()
    y = bn(x)
    # channel 0: C = -3,-1,1,3; AP2(C) = -4,-1,1,4; var = mean(12,1,1,12) = 6.5; AP2(6.5^-1/2 = 0.39) = 1/2
    # channel 1: C = -1,-1,1,1; var = 1; AP2((1 + 1e-5)^-1/2) = 1
    expected = torch.tensor([[4 * -1.5 + 0.25, -0.25 * -1 + 1], [4 * -0.5 + 0.25, 1.25],
                             [4 * 0.5 + 0.25, 0.75], [4 * 1.5 + 0.25, 0.75]])
    assert torch.equal(y, expected)
    # running stats: Torch7 momentum 0.125 on the mean and on the (unrounded) inverse std
    assert torch.allclose(bn.running_mean, torch.tensor([0.5, 0.125]))
    invstd = torch.tensor([6.5, 1.0]).add(1e-5).rsqrt()
    assert torch.allclose(bn.running_invstd, 0.875 + 0.125 * invstd)


def test_backward_is_torch7s():
    bn, x = hand_bn()
    g = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 0.25], [1.1, -2.0]])
    bn(x).backward(g)
    c = x.detach() - x.detach().mean(0)
    ca = ap2(c)
    s = torch.tensor([0.5, 1.0])
    gamma = torch.tensor([4.0, -0.25])
    expected = (g - g.mean(0) - ca * s**2 * (ca * g).mean(0)) * s * gamma
    assert torch.allclose(x.grad, expected)
    assert torch.allclose(bn.weight.grad, (ap2(c * s) * g).sum(0))
    assert torch.allclose(bn.bias.grad, g.sum(0))


def test_eval_uses_running_stats():
    bn, x = hand_bn()
    bn(x)
    bn.eval()
    z = torch.randn(5, 2)
    expected = (z - bn.running_mean) * ap2(bn.running_invstd) * ap2(bn.weight.detach()) + bn.bias.detach()
    assert torch.allclose(bn(z), expected)
    scale, shift = bn.scale_shift()
    assert torch.allclose(z * scale + shift, expected)


def test_fresh_layer_is_identity_in_eval():
    bn = ShiftBatchNorm(3).eval()
    z = torch.randn(4, 3)
    assert torch.equal(bn(z), z)


@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 5), (8, 3, 4, 4)])
def test_shapes(shape):
    bn = ShiftBatchNorm(3)
    x = torch.randn(shape, requires_grad=True)
    y = bn(x)
    y.square().sum().backward()
    assert y.shape == shape and x.grad.shape == shape
    with pytest.raises(ValueError):
        bn(torch.randn(8, 4))


def test_close_to_plain_bn():
    torch.manual_seed(0)
    x = torch.randn(64, 8, 4, 4) * 3 + 2
    y_shift = ShiftBatchNorm(8)(x)
    y_plain = nn.BatchNorm2d(8, eps=1e-5)(x)
    # per channel the two differ by one factor: var is within 2^+-1/2 (AP2 of C), and AP2 of the
    # inverse std adds another 2^+-1/2, so the ratio is in [2^-3/4, 2^3/4]
    dims = (0, 2, 3)
    ratio = (y_shift * y_plain).sum(dims) / y_plain.square().sum(dims)
    assert torch.allclose(y_shift, ratio.view(1, -1, 1, 1) * y_plain, atol=1e-4)
    assert ratio.min() >= 2**-0.75 and ratio.max() <= 2**0.75
    assert torch.corrcoef(torch.stack([y_shift.flatten(), y_plain.flatten()]))[0, 1] > 0.99


def test_batch_stats_in_eval_without_running_stats():
    bn = ShiftBatchNorm(2, track_running_stats=False).eval()
    _, x = hand_bn()
    assert torch.allclose(bn(x).mean(0), torch.zeros(2))


def test_bf16_input_under_autocast_normalises_in_fp32():
    """train.amp=bf16: a bf16 matmul output reaches the shift BN; it normalises in fp32 (running
    statistics stay fp32 buffers) and gives what it gives the same values in fp32."""
    torch.manual_seed(0)
    x = torch.randn(16, 8).to(torch.bfloat16)
    a, b = ShiftBatchNorm(8), ShiftBatchNorm(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = a(x.requires_grad_())
    out.sum().backward()
    assert out.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert torch.equal(out, b(x.detach().float()))
    assert torch.equal(a.running_mean, b.running_mean) and a.running_mean.dtype == torch.float32


# ------------------------------------------------------------------ shift-based AdaMax

def test_adamax_first_step_hand_values():
    p = nn.Parameter(torch.tensor([0.5, -0.5, 0.1], dtype=torch.float64))
    opt = ShiftAdaMax([p], lr=2**-6)
    p.grad = torch.tensor([0.3, -0.02, 0.0], dtype=torch.float64)
    opt.step()
    # m = 0.1 g; u = |g| + 2^-27 -> AP2 = 1/4, 2^-6, 2^-27; step = AP2(2^-6 / 0.1 = 0.156) = 1/8
    expected = torch.tensor([0.5 - 0.125 * 0.03 / 0.25, -0.5 + 0.125 * 0.002 / 2**-6, 0.1], dtype=torch.float64)
    assert torch.allclose(p.detach(), expected)


def test_adamax_updates_are_m_times_powers_of_two():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(50, dtype=torch.float64))
    opt = ShiftAdaMax([p], lr=2**-6)
    for _ in range(5):
        before = p.detach().clone()
        p.grad = torch.randn(50, dtype=torch.float64)
        opt.step()
        m = opt.state[p]["exp_avg"]
        factor = torch.log2((before - p.detach()) / m)
        assert torch.allclose(factor, factor.round(), atol=1e-6)
        # the factor is AP2(lr / bias correction) / AP2(u)
        t = opt.state[p]["step"]
        step = 2.0 ** round(math.log2(2**-6 / (1 - 0.9**t)))
        assert torch.allclose(2**factor, step / ap2(opt.state[p]["exp_inf"]))


def test_adamax_honours_group_lr():
    a = nn.Parameter(torch.zeros(4))
    b = nn.Parameter(torch.zeros(4))
    opt = ShiftAdaMax([{"params": [a], "lr": 2**-6}, {"params": [b], "lr": 2**-4}])
    g = torch.tensor([0.3, -1.0, 0.01, 2.0])
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    assert torch.equal(b.detach(), 4 * a.detach())
    assert (a.detach() * g < 0).all()


def test_adamax_with_glorot_param_groups():
    from bnnrepro.models import build

    model = build("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    opt = ShiftAdaMax(param_groups(model, 2**-6, "glorot_pow2"))
    model(torch.randn(5, 1, 4, 4)).square().sum().backward()
    opt.step()
    assert all(math.log2(g["lr"]).is_integer() for g in opt.param_groups)


def test_adamax_rounds_the_step_then_multiplies_by_an_unrounded_scale():
    # Torch7 on MNIST: AP2(lr / bias correction) times the (unrounded) Glorot LR vector
    scale = 27.7128  # 1 / sqrt(1.5 / (2048 + 2048)), not a power of two
    p = nn.Parameter(torch.zeros(3))
    opt = ShiftAdaMax([{"params": [p], "lr": 2**-6 * scale, "lr_scale": scale}], fused=False)
    p.grad = torch.tensor([0.5, -2.0, 1.0])
    opt.step()
    # first step: m = 0.1 g, u = |g| + eps, bias correction 0.1: the update is -AP2(2^-6 / 0.1) * scale
    # * m / AP2(u); AP2(2^-6 / 0.1) = 2^-3 (log2 = -2.68)
    m, u = 0.1 * p.grad, p.grad.abs() + 2**-27
    assert torch.allclose(p.detach(), -(2**-3) * scale * m / ap2(u), rtol=1e-6)
    # rounded together with the scale, as before, the step would have been AP2(2^-6 * scale / 0.1) = 2^2
    assert not torch.allclose(p.detach(), -(2**2) * m / ap2(u), rtol=1e-2)


def _adamax_trajectory(fused: bool, seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    """Parameters and state after steps with gradients of very different scales (so u's AP2 and
    the bias-corrected step take many exponents), two groups with their own lr."""
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(64, 33, generator=g)), nn.Parameter(torch.randn(17, generator=g)),
              nn.Parameter(torch.randn(3, 5, 7, generator=g))]
    opt = ShiftAdaMax([{"params": params[:1], "lr": 2**-3 * scale, "lr_scale": scale},
                       {"params": params[1:], "lr": 2**-6}], fused=fused)
    for k in range(8):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 10.0 ** (3 - k)
        params[1].grad[:2] = 0.0  # u then falls to eps (2^-27) and below 2^-126 / sqrt(2) never
        opt.step()
    state = [t for p in params for t in (opt.state[p]["exp_avg"], opt.state[p]["exp_inf"])]
    return [p.detach() for p in params] + state


def test_the_one_thread_kernel_is_the_parallel_one_bit_for_bit():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = _adamax_trajectory(True, 3, 27.7128)
    finally:
        torch.set_num_threads(before)
    torch.set_num_threads(max(2, before))
    try:
        parallel = _adamax_trajectory(True, 3, 27.7128)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 1.0), (2, 1.0), (0, 27.7128), (1, 0.3)])
def test_fused_adamax_is_the_reference_bit_for_bit(seed, scale):
    fused, reference = _adamax_trajectory(True, seed, scale), _adamax_trajectory(False, seed, scale)
    for a, b in zip(fused, reference):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [lambda: torch.randn(6, 4, dtype=torch.float64),
                                  lambda: torch.randn(4, 6).t()],  # float64; not contiguous
                         ids=["float64", "strided"])
def test_fused_adamax_falls_back_to_the_reference_where_it_cannot_fuse(make, monkeypatch):
    from bnnrepro.optim import shift_adamax

    def no_kernel(parallel=True):
        raise AssertionError("the Numba loop was called")

    monkeypatch.setattr(shift_adamax, "_fused_kernel", no_kernel)
    torch.manual_seed(0)
    p = nn.Parameter(make())
    start = p.detach().clone()
    opt = ShiftAdaMax([p], lr=2**-6, fused=True)
    p.grad = torch.full_like(p, 0.1)
    opt.step()
    assert not torch.equal(p.detach(), start)


def test_adamax_resumes_a_state_saved_before_the_fused_knob():
    p = nn.Parameter(torch.randn(8))
    opt = ShiftAdaMax([p], lr=2**-6, fused=True)
    p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["fused"]  # as a checkpoint of an older version
    again = ShiftAdaMax([p], lr=2**-6, fused=True)
    again.load_state_dict(state)
    again.step()
    assert again.state[p]["step"] == 2
