"""DoReFa SVHN A-D, the AlexNets, the quantized LSTM LM and the layers' gradient quantizer."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bnnrepro import models
from bnnrepro.nn import QuantConv2d, QuantLinear
from bnnrepro.models.dorefa_svhn import DOREFA_QUANT
from bnnrepro.models.language_model import DEFAULT_QUANT as LSTM_QUANT
from bnnrepro.quant import DoReFaActivation, DoReFaGradient, Identity, QuantScheme


def dorefa(**bits):
    return QuantScheme.from_config({**DOREFA_QUANT, **bits})


def forward_backward(model, x):
    y = model(x)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return y


def quant_layers(model):
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def test_registry_names():
    assert {"dorefa_svhn", "dorefa_alexnet", "binary_alexnet", "lstm_lm"} <= set(models.names())


@pytest.mark.parametrize("variant, div", [("A", 1), ("B", 2), ("C", 4), ("D", 8)])
def test_dorefa_svhn_variants(variant, div):
    model = models.build("dorefa_svhn", input_shape=(3, 40, 40), num_classes=10, variant=variant)
    assert forward_backward(model, torch.rand(2, 3, 40, 40)).shape == (2, 10)
    convs = [m for m in quant_layers(model) if isinstance(m, QuantConv2d)]
    assert [c.out_channels for c in convs] == [c // div for c in (48, 64, 64, 128, 128, 128, 512)]


def test_dorefa_svhn_structure():
    model = models.build("dorefa_svhn", input_shape=(3, 40, 40), num_classes=10,
                         quant=dorefa(w_bits=1, a_bits=2, g_bits=4))
    layers = quant_layers(model)
    first, last, middle = layers[0], layers[-1], layers[1:-1]
    assert isinstance(first.weight_quantizer, Identity) and isinstance(last.weight_quantizer, Identity)
    assert isinstance(first.grad_quantizer, Identity) and isinstance(last.grad_quantizer, Identity)
    assert first.bias is not None and last.bias is not None and last.in_features == 512
    assert len(middle) == 6
    assert all(m.weight_quantizer.precision == 1 and m.grad_quantizer.precision == 4 for m in middle)
    assert all(isinstance(m.grad_quantizer, DoReFaGradient) and m.bias is None for m in middle)
    acts = [m for m in model if isinstance(m, DoReFaActivation)]
    assert [a.precision for a in acts] == [2] * 6 + [32]  # the last FC's input is clipped, not quantized
    # tensorpack's parameter count for Model A: convs + conv0 bias + fc (+bias) + BN gamma/beta
    assert sum(p.numel() for p in model.parameters()) == 2_082_378


def test_dorefa_svhn_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        models.build("dorefa_svhn", input_shape=(3, 40, 40), num_classes=10, variant="E")
    with pytest.raises(ValueError, match="larger input"):
        models.build("dorefa_svhn", input_shape=(3, 24, 24), num_classes=10)
    with pytest.raises(ValueError, match="dorefa_weight"):
        models.build("dorefa_svhn", input_shape=(3, 40, 40), num_classes=10, quant=dorefa(w_bits=12))


def test_dorefa_svhn_full_precision():
    model = models.build("dorefa_svhn", input_shape=(3, 40, 40), num_classes=10, variant="D",
                         quant=dorefa(w_bits=32, a_bits=32, g_bits=32))
    assert forward_backward(model, torch.rand(2, 3, 40, 40)).shape == (2, 10)


def test_dorefa_alexnet_small():
    model = models.build("dorefa_alexnet", input_shape=(3, 224, 224), num_classes=1000, width_mult=1 / 16)
    assert forward_backward(model, torch.rand(2, 3, 224, 224)).shape == (2, 1000)
    layers = quant_layers(model)
    assert layers[5].in_features == layers[4].out_channels * 6 * 6  # AlexNet's 6x6 before fc0
    assert [m.groups for m in layers[1:5]] == [2, 1, 2, 2]
    assert isinstance(layers[0].weight_quantizer, Identity) and isinstance(layers[-1].weight_quantizer, Identity)
    assert all(m.grad_quantizer.precision == 6 for m in layers[1:-1])


def test_binary_alexnet_matches_larq_zoo_count():
    model = models.build("binary_alexnet", input_shape=(3, 224, 224), num_classes=1000)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    weights = sum(m.weight.numel() for m in quant_layers(model))
    # Keras counts beta + moving mean + moving variance per BN channel (scale=False)
    assert weights + 3 * sum(n.num_features for n in norms) == 61_859_192
    assert not any(n.weight.requires_grad for n in norms)


def test_binary_alexnet_small_forward_and_qnn_variant():
    model = models.build("binary_alexnet", input_shape=(3, 224, 224), num_classes=10, width_mult=1 / 16,
                         quant=QuantScheme.from_config(dict(weight="qnn_linear", w_bits=1, activation="qnn_linear",
                                                            a_bits=2, first_weight="identity", last_weight="identity")))
    assert forward_backward(model, torch.rand(2, 3, 224, 224)).shape == (2, 10)
    layers = quant_layers(model)
    assert isinstance(layers[0].weight_quantizer, Identity) and isinstance(layers[-1].weight_quantizer, Identity)
    assert all(m.weight_quantizer.precision == 1 for m in layers[1:-1])


def test_grad_quantizer_quantizes_the_output_gradient():
    layer = QuantLinear(3, 4, bias=True, grad_quantizer=("dorefa_gradient", {"bits": 2}))
    layer.grad_quantizer.generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    y = layer(x)
    assert torch.equal(y, plain)
    g = torch.tensor([[0.9, -0.3, 0.1, -0.9]])
    y.backward(g)
    # with batch 1 the bias gradient is the quantized output gradient: 2 bits over [-M, M]
    levels = (layer.bias.grad / 1.8 + 0.5) * 3
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert layer.bias.grad[0] == pytest.approx(0.9) and layer.bias.grad[3] == pytest.approx(-0.9)


def test_layers_default_grad_quantizer_is_identity():
    conv = QuantConv2d(2, 4, 3, padding=1)
    assert isinstance(conv.grad_quantizer, Identity)


GRAD_MODELS = [("bnn_convnet", (3, 32, 32), 9), ("binary_alexnet", (3, 64, 64), 8)]  # name, input, weight layers


def layer_grads(model, x):
    """The gradient coming out of each QuantLayer's gradient quantizer (into the conv/FC output),
    and the parameters' gradients, for one seeded backward pass."""
    grads = []

    def capture(module, inputs, output):
        inputs[0].register_hook(grads.append)

    hooks = [m.grad_quantizer.register_forward_hook(capture) for m in quant_layers(model)]
    torch.manual_seed(1)
    forward_backward(model, x)
    for h in hooks:
        h.remove()
    return grads[::-1], [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("name, shape, n", GRAD_MODELS)
def test_conv_models_quantize_hidden_layer_gradients(name, shape, n):
    quant = QuantScheme.from_config({"gradient": "dorefa_gradient", "g_bits": 2})
    torch.manual_seed(0)
    model = models.build(name, input_shape=shape, num_classes=10, width_mult=1 / 16, quant=quant)
    # BNN's quantized first layer takes the hidden layers' gradient quantizer, the output layer none
    assert [type(m.grad_quantizer) for m in quant_layers(model)] == [DoReFaGradient] * (n - 1) + [Identity]
    grads, _ = layer_grads(model, torch.randn(3, *shape))
    assert len(grads) == n
    for g in grads[:-1]:  # per example: at most 2**2 levels of 2M[k/3 - 1/2]
        assert all(row.unique().numel() <= 4 for row in g.flatten(1))
    assert any(row.unique().numel() > 4 for row in grads[-1].flatten(1))


@pytest.mark.parametrize("name, shape, n", GRAD_MODELS)
def test_conv_models_identity_gradient_changes_nothing(name, shape, n):
    x = torch.randn(3, *shape)
    runs = []
    for absent in (False, True):
        torch.manual_seed(0)
        model = models.build(name, input_shape=shape, num_classes=10, width_mult=1 / 16)
        assert all(isinstance(m.grad_quantizer, Identity) for m in quant_layers(model))
        if absent:
            for m in quant_layers(model):
                m.grad_quantizer = nn.Identity()
        runs.append(layer_grads(model, x))
    (g0, p0), (g1, p1) = runs
    assert len(g0) == n and all(torch.equal(a, b) for a, b in zip(g0 + p0, g1 + p1, strict=True))


# ------------------------------------------------------------------ LSTM language model

def test_lstm_lm_shapes_and_state():
    model = models.build("lstm_lm", input_shape=(7,), num_classes=50, embed_dim=16, hidden=(12, 12))
    tokens = torch.randint(0, 50, (7, 3))
    logits, state = model(tokens)
    assert logits.shape == (7, 3, 50) and len(state) == 2 and state[0][0].shape == (3, 12)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    logits2, _ = model(tokens, [(h.detach(), c.detach()) for h, c in state])
    assert logits2.shape == (7, 3, 50)


def test_lstm_lm_quantizes_weights_and_hidden_state():
    model = models.build("lstm_lm", input_shape=(35,), num_classes=30, embed_dim=8, hidden=16,
                         quant=QuantScheme.from_config({**LSTM_QUANT, "w_bits": 4, "a_bits": 2}), dropout_hidden=0.0)
    lstm = model.layers[0]
    assert lstm.weight_quantizer.scale == 0.25  # AP2(1 / sqrt(16))
    w = lstm.weight_quantizer(lstm.weight_hh)
    assert w.unique().numel() <= 16 and torch.equal(w * 32, (w * 32).round())  # step 0.25 / 8
    h, _ = lstm(torch.randn(5, 3, 8))
    assert set(h.unique().tolist()) <= {-1.0, -0.5, 0.0, 0.5}


def test_lstm_float_path_equals_torch_lstm():
    model = models.build("lstm_lm", input_shape=(35,), num_classes=20, embed_dim=6, hidden=5,
                         quant=QuantScheme.from_config({**LSTM_QUANT, "w_bits": 32, "a_bits": 32}), dropout_hidden=0.0)
    ours = model.layers[0]
    ref = nn.LSTM(6, 5)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(ours.weight_ih)
        ref.weight_hh_l0.copy_(ours.weight_hh)
        ref.bias_ih_l0.copy_(ours.bias)
        ref.bias_hh_l0.zero_()
    x = torch.randn(4, 2, 6)
    out, (h, c) = ours(x)
    out_ref, (h_ref, c_ref) = ref(x)
    assert torch.allclose(out, out_ref, atol=1e-6) and torch.allclose(c, c_ref[0], atol=1e-6)
