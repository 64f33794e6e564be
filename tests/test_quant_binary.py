"""BNN quantizers: values and straight-through gradients against hand-computed numbers."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnrepro import quant

X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5])


def test_registry_has_bnn_names_with_precision():
    for name, bits in (("identity", 32), ("sign", 1), ("stochastic_sign", 1)):
        q = quant.build(name)
        assert isinstance(q, torch.nn.Module)
        assert q.precision == bits


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown quantizer 'sgn'.*allowed:.*sign"):
        quant.build("sgn")


def test_bad_bits_named():
    with pytest.raises(ValueError, match=r"bits=2 is not valid for quantizer 'sign'; allowed: 1"):
        quant.build("sign", bits=2)
    quant.build("sign", bits=1)  # its own width is accepted


def test_sign_values_zero_is_plus_one():
    out = quant.build("sign")(X)
    assert out.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


def test_sign_ste_cancels_outside_unit_interval():
    x = X.clone().requires_grad_(True)
    quant.build("sign")(x).backward(torch.arange(1.0, 8.0))
    # gradient passes where |x| <= 1 (the hard-tanh derivative), is zero at -2 and 1.5
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]


def test_sign_without_clip_is_identity_ste():
    x = X.clone().requires_grad_(True)
    quant.build("sign", clip=None)(x).sum().backward()
    assert x.grad.tolist() == [1.0] * 7


def test_identity_passes_values_and_gradients():
    x = X.clone().requires_grad_(True)
    q = quant.build("identity")
    assert torch.equal(q(x), X)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0] * 7


def test_stochastic_sign_probability_is_hard_sigmoid():
    torch.manual_seed(0)
    q = quant.build("stochastic_sign").train()
    x = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5]).repeat(20000, 1)
    p_plus = (q(x) > 0).float().mean(0)
    expected = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert torch.allclose(p_plus, expected, atol=0.015)
    assert set(q(x).unique().tolist()) <= {-1.0, 1.0}


def test_stochastic_sign_is_deterministic_in_eval():
    q = quant.build("stochastic_sign").eval()
    assert q(X).tolist() == quant.build("sign")(X).tolist()


def test_stochastic_sign_gradient_is_ste_with_cancellation():
    x = X.clone().requires_grad_(True)
    quant.build("stochastic_sign").train()(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=64))
def test_sign_properties(values):
    x = torch.tensor(values, dtype=torch.float32)
    q = quant.build("sign")
    y = q(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}  # at most 2^1 levels
    assert torch.equal(q(y), y)  # idempotent
    assert torch.equal(y > 0, x >= 0)


def test_htanh_is_the_float_activation_sign_binarizes():
    x = X.clone().requires_grad_(True)
    q = quant.build("htanh")
    assert q.precision == 32
    y = q(x)
    assert torch.equal(y, torch.tensor([-1.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.0]))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert torch.equal(quant.build("sign")(y), quant.build("sign")(X))


def test_sign_of_nan_is_minus_one_as_the_packed_bits():
    from bnnrepro.quant import sign_pm1
    from bnnrepro.quant.ste import SteSign

    x = torch.tensor([float("nan"), 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0])
    want = torch.tensor([-1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0])
    assert torch.equal(sign_pm1(x), want)
    stochastic = SteSign.apply(x, 1.0, True, torch.Generator().manual_seed(0))
    assert stochastic[0] == -1.0 and stochastic[5] == 1.0 and stochastic[6] == -1.0


_EDGES = [float("nan"), 0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 1.0, -1.0, 1.0000001, -1.0000001, 3.0, -3.0,
          float("inf"), float("-inf")]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_one_pass_sign_equals_sign_pm1_and_knows_when_nothing_is_cancelled(threads):
    from bnnrepro.quant import sign_pm1
    from bnnrepro.quant.ste import sign_pm1_counting

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.cat([torch.tensor(_EDGES), torch.randn(1000)])
        out, inside = sign_pm1_counting(x, 1.0)
        assert torch.equal(out, sign_pm1(x)) and not inside
        for v in (-1.0, 1.0, 0.0, -0.0, 0.999):
            assert sign_pm1_counting(torch.tensor([v, 0.5]), 1.0)[1]
        for v in (1.0000001, float("nan"), float("-inf")):
            assert not sign_pm1_counting(torch.tensor([v, 0.5]), 1.0)[1]
        assert not sign_pm1_counting(torch.zeros(3), None)[1]  # no window: nothing to skip
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("latent", ["inside", "outside"])
def test_the_sign_gradient_is_the_masked_one_whether_or_not_the_mask_is_skipped(latent):
    from bnnrepro.quant.ste import SteSign

    torch.manual_seed(0)
    w = torch.rand(64, 33) * 2 - 1
    if latent == "outside":
        w[::3] *= 1.7
    w.requires_grad_()
    g = torch.randn(64, 33)
    SteSign.apply(w, 1.0, False, None).backward(g)
    assert torch.equal(w.grad, g * (w.detach().abs() <= 1))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_one_pass_stochastic_sign_equals_the_torch_formula(threads):
    from bnnrepro.quant.ste import hard_sigmoid, stochastic_sign

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.cat([torch.tensor(_EDGES + [1e-9, -1e-9, -0.9999999, 0.9999999]), torch.randn(5000, generator=g)])
        u = torch.rand(x.shape, generator=g)
        u[:40] = hard_sigmoid(x[:40]).clamp(0, 0.99999994)  # ties u == p: -1, as u < p is false
        want = hard_sigmoid(x).sub_(u).sign_().sub_(0.5).sign_()
        assert torch.equal(stochastic_sign(x, u), want)
        assert torch.equal(stochastic_sign(x[::2], u[::2]), want[::2])  # strided: the torch formula
    finally:
        torch.set_num_threads(before)
