"""The bit-aware summary against hand-computed counts, and ``bnnrepro summary`` on presets."""
import json

import pytest

from bnnrepro import models
from bnnrepro.quant import QuantScheme
from bnnrepro.report import commands, summary


def _tiny_mlp(hidden=(8,), **quant):
    # Flatten -> QuantLinear(16, 8) -> BN(8) -> act -> QuantLinear(8, 3) -> BN(3); quant: config keys
    return models.build("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=hidden,
                        quant=QuantScheme.from_config(quant))


def test_binary_mlp_counts_by_hand():
    s = summary.profile(_tiny_mlp(weight="sign", activation="sign"), (1, 4, 4))
    first, second = [l for l in s.layers if l.kind == "QuantLinear"]
    assert (first.in_bits, first.w_bits, first.out_shape) == (32, 1, (8,))  # pixels are float
    assert (second.in_bits, second.w_bits) == (1, 1)                        # after the sign
    assert first.macs == {32: 16 * 8} and second.macs == {1: 8 * 3}
    assert s.params() == {1: 16 * 8 + 8 * 3, 32: 2 * 8 + 2 * 3}  # binary weights; BN gamma, beta
    assert s.buffers == 2 * 8 + 2 * 3                            # BN running mean and variance
    memory_bits = 152 * 1 + 22 * 32 + 22 * 32
    assert s.memory_bytes == memory_bits / 8 == 195
    assert s.float32_bytes == (152 + 22 + 22) * 4 == 784
    assert s.compression == pytest.approx(784 / 195)
    assert s.binary_mac_fraction == pytest.approx(24 / 152)


def test_float_model_has_no_compression():
    s = summary.profile(_tiny_mlp(weight="identity", activation="identity"), (1, 4, 4))
    assert set(s.params()) == {32} and set(s.macs()) == {32}
    assert s.compression == 1.0 and s.binary_mac_fraction == 0.0


def test_k_bit_activations_set_the_mac_precision():
    """DoReFa's 2-bit activations feeding 1-bit weights: the MAC precision is max(2, 1) = 2; the
    last layer's input is clipped but not quantized (float)."""
    s = summary.profile(_tiny_mlp(hidden=(8, 8), weight="dorefa_weight", w_bits=1,
                                  activation="dorefa_activation", a_bits=2,
                                  last_input_kwargs={"quantize": False}), (1, 4, 4))
    first, second, last = [l for l in s.layers if l.kind == "QuantLinear"]
    assert (second.in_bits, second.w_bits) == (2, 1) and second.macs == {2: 64}
    assert (last.in_bits, last.w_bits) == (32, 1) and last.macs == {32: 24}


def test_conv_counts_by_hand():
    # conv 1->2 (3x3, pad 1) on 4x4 -> BN -> sign; conv 2->4 -> maxpool 2 -> BN -> sign; FC 16->3 -> BN
    model = models.build("bnn_convnet", input_shape=(1, 4, 4), num_classes=3, channels=(2, 4), fc=(),
                         pool_after=(1,), quant=QuantScheme.from_config({"weight": "sign", "activation": "sign"}))
    s = summary.profile(model, (1, 4, 4))
    convs = [l for l in s.layers if l.kind == "QuantConv2d"]
    assert [c.out_shape for c in convs] == [(2, 4, 4), (4, 4, 4)]
    assert convs[0].macs == {32: 18 * 16} and convs[1].macs == {1: 72 * 16}
    fc = next(l for l in s.layers if l.kind == "QuantLinear")
    assert fc.in_bits == 1 and fc.macs == {1: 16 * 3}  # max-pooling keeps the bits binary
    assert s.params() == {1: 18 + 72 + 48, 32: 4 + 8 + 6}
    assert s.memory_bytes == (138 + 18 * 32 + 18 * 32) / 8
    assert s.compression == pytest.approx((138 + 18 + 18) * 32 / (138 + 36 * 32))


def test_packed_size_is_measured_when_the_model_packs():
    pytest.importorskip("numba")
    model = _tiny_mlp(weight="sign", activation="sign").eval()
    size, note = summary.packed_size(model, (1, 4, 4))
    assert size is not None and size > 0, note
    float_model = _tiny_mlp(weight="identity", activation="identity").eval()
    size, note = summary.packed_size(float_model, (1, 4, 4))
    assert size is None and note.startswith("does not pack")


def test_summary_cli_on_a_preset(capsys):
    assert commands.summary_main(["+paper=bnn", "scale=smoke", "--no-pack"]) == 0
    out = capsys.readouterr().out
    assert "bnn_mnist_theano: mlp on mnist, scale=smoke" in out
    for text in ("in bits", "params binary", "MACs binary", "compression x", "MACs per sample"):
        assert text in out
    assert commands.summary_main(["+paper=bnn", "scale=smoke", "--no-pack", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    hidden = 256  # 4096 x 0.0625
    assert data["params"]["binary"] == 784 * hidden + 2 * hidden * hidden + hidden * 10
    assert data["macs"]["float32"] == 784 * hidden and data["packed_bytes"] is None


@pytest.mark.parametrize("argv, message", [
    (["no/such/run"], "'no/such/run' is neither a run directory or checkpoint nor an override"),
    (["+paper=bnn", "model.hiden=[10]"], "unknown config key `model.hiden`; did you mean `model.hidden`?"),
    (["+experiment=no_such_preset"], "bnnrepro: error: "),
    (["+paper=bnn", "quant.weight=sgn"], "quant.weight='sgn' is unknown"),
])
def test_summary_cli_bad_input(argv, message, capsys):
    assert commands.summary_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnnrepro: error: ") and message in err and err.count("\n") == 1
