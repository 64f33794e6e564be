"""train.precision: bf16 matmuls on +-1 x +-1 layers, forward outputs bit-identical to fp32."""
from __future__ import annotations

import json

import pytest
import torch

from bnnrepro.models import build
from bnnrepro.nn import QuantLinear
from bnnrepro.nn import precision
from bnnrepro.train import fit
from conftest import compose

CPU = torch.device("cpu")


def _pm1(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


@pytest.mark.parametrize("k", [1, 100, 256, 257, 1000, 4096])
@pytest.mark.parametrize("activation", ["sign", "stochastic_sign"])
def test_a_binary_layers_forward_is_bit_identical_in_bf16(k, activation):
    layer = QuantLinear(k, 37, input_quantizer=activation, weight_quantizer="sign")
    torch.manual_seed(k)
    x = torch.randn(9, k)
    layer.eval()  # deterministic sign for both activations
    fp32 = layer(x)
    assert precision.qualifying_layers(torch.nn.Sequential(layer)) == ["0"]
    layer.matmul_dtype = torch.bfloat16
    bf16 = layer(x)
    assert bf16.dtype == torch.float32 and torch.equal(bf16, fp32)


@pytest.mark.parametrize("k", [1001, 4095])
def test_the_exact_matmul_holds_where_a_bf16_output_rounds(k):
    x, w = torch.ones(3, k), torch.ones(5, k)
    w[1] = -1
    x[2, ::2] = -1
    out = precision.exact_pm1_matmul(x, w)
    assert torch.equal(out, x @ w.t()) and out[0, 0] == k and out[0, 1] == -k
    # a plain bf16 matmul rounds a sum of k > 256 to 8 significant bits
    assert torch.mm(x.bfloat16(), w.bfloat16().t())[0, 0].item() != k


def test_bf16_backward_rounds_only_the_gradient():
    x, w = _pm1(16, 600, seed=0).requires_grad_(), _pm1(40, 600, seed=1).requires_grad_()
    grad = torch.randn(16, 40)
    precision.PlusMinusOneLinear.apply(x, w).backward(grad)
    want_x, want_w = grad @ w.detach(), grad.t() @ x.detach()
    # grad in bf16 (8 bits): relative error about 2^-9 per term
    torch.testing.assert_close(x.grad, want_x, rtol=0.02, atol=0.05)
    torch.testing.assert_close(w.grad, want_w, rtol=0.02, atol=0.05)
    assert not torch.equal(x.grad, want_x)  # it did run in bf16


@pytest.mark.parametrize("dropout,qualify", [(0.0, True), (0.5, True), (0.75, True), (0.2, True), (0.3, False),
                                              (0.1, False)])
def test_only_pm1_by_pm1_linear_layers_qualify(dropout, qualify):
    bnn = build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 32), dropout_hidden=dropout)
    linears = [n for n, m in bnn.named_modules() if isinstance(m, QuantLinear)]
    # not the first layer (its input is real-valued); a dropout scaling by 1/0.7 or 1/0.9 (23 and 22
    # significant bits) makes fp32's own sums round, so there is nothing exact to match
    assert precision.qualifying_layers(bnn) == (linears[1:] if qualify else [])
    # the factor a layer divides out: an active dropout's (1.25, 2, 4), none for a sign-fed layer
    precision.configure(bnn, "bf16", CPU)
    want = 1.0 / (1.0 - dropout) if dropout > 0 else None
    assert [bnn.get_submodule(n).matmul_input_scale for n in precision.qualifying_layers(bnn)] == \
        ([want] * (len(linears) - 1) if qualify else [])


@pytest.mark.parametrize("c,bits", [(1.0, 1), (2.0, 1), (0.5, 1), (1.25, 3), (1.5, 2), (1.75, 3), (1 + 2 ** -23, 24)])
def test_significand_bits(c, bits):
    assert precision.significand_bits(c) == bits


@pytest.mark.parametrize("k", [255, 4096])
def test_a_scaled_input_matmul_is_exact_and_its_gradients_close(k):
    g = torch.Generator().manual_seed(k)
    x = (_pm1(16, k, seed=2) * (torch.rand(16, k, generator=g) > 0.2) * 1.25).requires_grad_()
    w = _pm1(40, k, seed=3).requires_grad_()
    grad = torch.randn(16, 40, generator=g)
    out = precision.PlusMinusOneLinear.apply(x, w, None, 1.25)
    assert torch.equal(out, x.detach() @ w.detach().t())
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad @ w.detach(), rtol=0.02, atol=0.05)
    torch.testing.assert_close(w.grad, grad.t() @ x.detach(), rtol=0.02, atol=0.08)


def test_float_and_dorefa_nets_have_no_bf16_layers():
    from bnnrepro.quant import QuantScheme

    for quant in (QuantScheme.from_config({"weight": "identity", "activation": "htanh"}),
                  QuantScheme.from_config({"weight": "dorefa_weight", "w_bits": 1, "activation": "dorefa_activation",
                                           "a_bits": 2})):
        assert precision.qualifying_layers(build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,),
                                                 quant=quant)) == []


@pytest.mark.parametrize("dropout", [0.5, 0.2])
@pytest.mark.parametrize("activation", ["sign", "stochastic_sign"])
def test_a_bnn_nets_bf16_forward_is_bit_identical_in_train_and_eval_mode(activation, dropout):
    from bnnrepro.quant import QuantScheme

    torch.manual_seed(0)
    net = build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(300, 1100), dropout_hidden=dropout,
                quant=QuantScheme.from_config({"activation": activation}))
    x = torch.randn(20, 1, 8, 8)
    for mode in (net.train, net.eval):
        mode()
        outs = []
        for p in ("fp32", "bf16"):
            record = precision.configure(net, p, CPU)
            torch.manual_seed(1)  # the same dropout masks and stochastic signs
            outs.append(net(x))
        assert len(record["bf16_layers"]) == 2
        assert torch.equal(outs[0], outs[1]), mode.__name__


@pytest.mark.parametrize("requested,hardware,used", [
    ("auto", None, "fp32"), ("auto", "amx_bf16", "bf16"), ("fp32", "amx_bf16", "fp32"), ("bf16", None, "bf16")])
def test_auto_takes_bf16_only_on_bf16_hardware(requested, hardware, used):
    model = build("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    record = precision.configure(model, requested, CPU, hardware=lambda device: hardware)
    assert record["used"] == used and record["requested"] == requested
    dtypes = [model.get_submodule(n).matmul_dtype for n in precision.qualifying_layers(model)]
    assert dtypes == [torch.bfloat16 if used == "bf16" else None]
    assert len(record["bf16_layers"]) == (1 if used == "bf16" else 0)


def test_unknown_precision_names_the_field():
    with pytest.raises(ValueError, match=r"train.precision='fp16'.*auto, fp32, bf16"):
        precision.resolve("fp16", CPU)


def test_a_run_records_its_precision_and_learns_in_bf16(mnist_root, runs_dir):
    base = ["+paper=bnn", "scale=smoke", "scale.epochs=2", "scale.train_subset=2000", "train.progress=false",
            f"data.root={mnist_root}"]
    errors = {}
    for p in ("fp32", "bf16"):
        run = fit(compose(base + [f"train.precision={p}"]))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["precision"]["used"] == p and summary["precision"]["requested"] == p
        assert (len(summary["precision"]["bf16_layers"]) == 3) == (p == "bf16")
        errors[p] = summary["test_error"]
    # same seed, same data order: only the gradients' bf16 rounding differs
    assert abs(errors["bf16"] - errors["fp32"]) < 5.0, errors


@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_sign_operands_and_widening_equal_torchs_conversions(threads):
    from bnnrepro.quant import sign_pm1

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        edges = torch.tensor([float("nan"), 0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 1.5, float("inf"), float("-inf")])
        latent = torch.cat([edges, torch.randn(3000)]).reshape(10, 301)
        w8, wb, inside = precision.sign_operands(latent, 1.0)
        want = sign_pm1(latent)
        assert w8.dtype == torch.int8 and torch.equal(w8.float(), want)
        assert wb.dtype == torch.bfloat16 and torch.equal(wb.float(), want) and not inside
        assert precision.sign_operands(latent.clamp(-1, 1).nan_to_num(0.0), 1.0)[2]
        g = torch.cat([edges, torch.randn(3000) * 1e-3, torch.tensor([1e-40, -1e-39])]).bfloat16()
        assert torch.equal(precision.widen_to_float(g).view(torch.int32), g.float().view(torch.int32))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("latent", ["inside", "outside"])
def test_a_layer_binarizing_inside_its_matmul_has_the_gradients_of_the_unfused_one(latent, dropout):
    """The fused node (sign of the latent inside the matmul) against the same matmul fed by the
    weight quantizer: outputs and both gradients bit for bit, the STE mask applied where needed."""
    torch.manual_seed(0)
    layer = QuantLinear(700, 50, input_quantizer="sign", weight_quantizer="sign")
    if latent == "outside":
        with torch.no_grad():
            layer.weight[::4] *= 3
    layer.matmul_dtype = torch.bfloat16
    scale = 1.0 / (1.0 - dropout) if dropout else None
    x = torch.randn(30, 700).sign() * (torch.rand(30, 700) > dropout) * (scale or 1.0)
    g = torch.randn(30, 50)
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        layer.weight.grad = None
        if fused:
            out = precision.PlusMinusOneLinear.apply(xi, layer.weight, 1.0, scale)
        else:
            out = precision.PlusMinusOneLinear.apply(xi, layer.weight_quantizer(layer.weight), None, scale)
        out.backward(g)
        results.append((out.detach(), xi.grad, layer.weight.grad.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert torch.equal(results[0][0], x @ torch.where(layer.weight.detach() >= 0, 1.0, -1.0).t())
    cancelled = layer.weight.detach().abs() > 1
    assert bool(cancelled.any()) == (latent == "outside") and not results[0][2][cancelled].any()
    assert precision.fuses_sign(layer.weight_quantizer)


def test_a_layer_whose_weight_quantizer_no_longer_gives_pm1_computes_in_fp32():
    from bnnrepro import quant

    torch.manual_seed(0)
    layer = QuantLinear(64, 8, input_quantizer="sign", weight_quantizer="sign")
    precision.configure(torch.nn.Sequential(layer), "bf16", CPU)
    assert layer.matmul_dtype == torch.bfloat16
    layer.weight_quantizer = quant.build("identity")  # real-valued weights, as a distortion leaves them
    x = torch.randn(5, 64)
    assert torch.equal(layer(x), torch.nn.functional.linear(torch.where(x >= 0, 1.0, -1.0), layer.weight))
