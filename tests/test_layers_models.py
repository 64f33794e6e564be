"""Binary layers and the BNN models: binarized forward, latent weights, widths, parameter counts."""
import math

import pytest
import torch
import torch.nn.functional as F

from bnnrepro import models
from bnnrepro.nn import QuantConv2d, QuantLinear
from bnnrepro.quant import QuantScheme
from bnnrepro.optim import LatentWeightClipper, param_groups


def test_quant_linear_uses_sign_of_latent_weights():
    layer = QuantLinear(4, 3, weight_quantizer="sign")
    x = torch.randn(5, 4)
    expected = x @ torch.where(layer.weight >= 0, 1.0, -1.0).T
    assert torch.allclose(layer(x), expected)
    assert layer.binary_weights and layer.clips_latent_weights


def test_quant_conv_matches_conv_on_binarized_weights():
    layer = QuantConv2d(3, 5, 3, padding=1, weight_quantizer="sign")
    x = torch.randn(2, 3, 8, 8)
    expected = F.conv2d(x, torch.where(layer.weight >= 0, 1.0, -1.0), padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_binary_latent_init_uniform_in_unit_interval():
    layer = QuantLinear(200, 300, weight_quantizer="sign")
    assert layer.weight.abs().max() <= 1.0
    assert layer.weight.std() > 0.5  # U(-1,1) has std 0.577, Glorot here would be ~0.06


def test_glorot_lr_scale_closed_form():
    fc = QuantLinear(784, 4096, weight_quantizer="sign")
    assert fc.glorot_lr_scale() == pytest.approx(1 / math.sqrt(1.5 / (784 + 4096)))
    conv = QuantConv2d(128, 256, 3, weight_quantizer="sign")
    assert conv.fans() == (128 * 9, 256 * 9)


def test_param_groups_scale_only_binary_weights():
    model = models.build("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    groups = param_groups(model, 0.01, "glorot")
    scaled = [g for g in groups if g["name"] != "rest"]
    assert len(scaled) == 2
    assert scaled[0]["lr"] == pytest.approx(0.01 / math.sqrt(1.5 / (16 + 8)))
    rest = [g for g in groups if g["name"] == "rest"][0]
    assert rest["lr"] == 0.01 and all(p.dim() == 1 for p in rest["params"])  # BN gamma/beta
    pow2 = param_groups(model, 0.01, "glorot_pow2")[0]["lr_scale"]
    assert math.log2(pow2) == round(math.log2(pow2))
    assert all(g["lr"] == 0.01 for g in param_groups(model, 0.01, "none"))


def test_clipper_clips_binary_latent_weights_only():
    model = models.build("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8,),
                         quant=QuantScheme.from_config({"last_weight": "identity"}))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    LatentWeightClipper(model)()
    assert model[1].weight.max() == 1.0  # binary hidden layer clipped
    assert model[4].weight.max() == 3.0  # float last layer untouched


def test_mlp_structure_matches_theano_bnn():
    m = models.build("mlp", input_shape=(1, 28, 28), num_classes=10, dropout_in=0.2, dropout_hidden=0.5)
    kinds = [type(layer).__name__ for layer in m]
    assert kinds == ["Flatten", "Dropout"] + ["QuantLinear", "BatchNorm1d", "Sign", "Dropout"] * 3 + [
        "QuantLinear", "BatchNorm1d"]
    assert [layer.out_features for layer in m if isinstance(layer, QuantLinear)] == [4096] * 3 + [10]


def test_convnet_parameter_count_matches_torch7_log():
    m = models.build("bnn_convnet", input_shape=(3, 32, 32), num_classes=10, bias=True)
    # itayhubara/BinaryNet issue #21 prints 14,033,566 parameters (with biases)
    assert sum(p.numel() for p in m.parameters()) == 14_033_566
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_mult_and_float_version():
    m = models.build("bnn_convnet", input_shape=(1, 28, 28), num_classes=10, width_mult=0.25,
                     quant=QuantScheme.from_config({"weight": "identity", "activation": "identity"}))
    convs = [layer for layer in m if isinstance(layer, QuantConv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert not any(c.binary_weights for c in convs)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model_named():
    with pytest.raises(ValueError, match=r"model.name='resnet' is unknown; allowed: .*mlp"):
        models.build("resnet", input_shape=(1, 2, 2), num_classes=2)
