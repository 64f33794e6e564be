"""Bit-serial multi-bit kernels (W1/W2 x A1/A2/A4) and the DoReFa engine against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnnrepro import models
from bnnrepro.kernels import PackedModel, PackError, commands
from bnnrepro.kernels import multibit as mb
from bnnrepro.kernels.multibit_engine import MultiBitModel
from bnnrepro.models.dorefa_svhn import DOREFA_QUANT
from bnnrepro.quant import DoReFaActivation, DoReFaWeight, Identity, QuantScheme

SHAPES = [(1, 1, 1), (3, 63, 5), (5, 64, 9), (4, 65, 17), (7, 200, 3)]
WIDTHS = [(w, a) for w in (1, 2) for a in (1, 2, 4)]


def codes(rng, shape, bits):
    return rng.integers(0, 2 ** bits, shape).astype(np.uint8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
def test_code_planes_match_reference(bits, k):
    c = codes(np.random.default_rng(k), (3, k), bits)
    planes = mb.pack_code_planes(c, bits)
    assert np.array_equal(planes, mb.pack_code_planes_reference(c, bits))
    # plane j read as +-1 is 2 c_j - 1; sum_j 2**j (2 c_j - 1) = 2c - (2**bits - 1)
    from bnnrepro.kernels import unpack

    pm1 = unpack(planes, k).astype(np.int64)
    assert np.array_equal((pm1 * (2 ** np.arange(bits))[None, :, None]).sum(1), 2 * c.astype(np.int64) - 2 ** bits + 1)


@pytest.mark.parametrize("w_bits,a_bits", WIDTHS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_bitserial_gemm_exact(m, k, n, w_bits, a_bits):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = codes(rng, (m, k), a_bits)
    w = mb.MultiBitWeights(codes(rng, (n, k), w_bits), w_bits, 0.37)
    want = mb.bitserial_gemm_reference(a, w)
    planes = mb.pack_code_planes(a, a_bits)
    assert np.array_equal(mb.bitserial_gemm(planes, w), want)
    assert np.array_equal(mb.bitserial_popcount_reference(planes, w), want)
    # the float computation: dequantized weights times dequantized activations
    exact = w.values() @ (a / (2 ** a_bits - 1)).T
    assert np.allclose(want * w.scale / (2 ** a_bits - 1), exact.T, rtol=1e-12, atol=1e-12)


def test_bitserial_gemm_extremes():
    """All-max codes over a long reduction: no overflow in the plane sums."""
    k = 4099
    a = np.full((2, k), 15, np.uint8)
    w = mb.MultiBitWeights(np.full((3, k), 3, np.uint8), 2, 1 / 3)
    y = mb.bitserial_gemm(mb.pack_code_planes(a, 4), w)
    assert (y == 3 * 15 * k).all()


@pytest.mark.parametrize("w_bits,a_bits", WIDTHS)
@pytest.mark.parametrize("n,c,hw,o,k,stride,pad", [(2, 3, 7, 5, 3, 1, 1), (1, 70, 5, 4, 3, 2, 1),
                                                   (2, 4, 6, 3, 5, 1, 0), (1, 1, 1, 2, 1, 1, 0)])
def test_bitserial_conv2d_exact(n, c, hw, o, k, stride, pad, w_bits, a_bits):
    rng = np.random.default_rng(c * 100 + k)
    x = codes(rng, (n, c, hw, hw), a_bits)
    w = mb.MultiBitWeights(codes(rng, (o, c * k * k), w_bits), w_bits, 0.25)
    want = mb.bitserial_conv2d_reference(x, w, k, k, stride, pad)
    assert np.array_equal(mb.bitserial_conv2d(x, w, k, k, stride, pad, a_bits).transpose(0, 3, 1, 2), want)
    # the float convolution of the dequantized values, torch's zero padding included
    vals = torch.nn.functional.conv2d(torch.from_numpy(x / (2 ** a_bits - 1)),
                                      torch.from_numpy(w.values().reshape(o, c, k, k)), stride=stride, padding=pad)
    assert np.allclose(want * w.scale / (2 ** a_bits - 1), vals.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("w_bits,a_bits", [(1, 2), (2, 4)])
def test_engine_dorefa_svhn_matches_torch(w_bits, a_bits):
    """DoReFa's SVHN net (variant D): float conv0, six bit-serial convolutions (SAME padding by code 0,
    max-pools on the codes), the float FC on the clipped conv6."""
    torch.manual_seed(0)
    model = models.build("dorefa_svhn", input_shape=(3, 40, 40), num_classes=10, variant="D",
                         quant=QuantScheme.from_config({**DOREFA_QUANT, "w_bits": w_bits, "a_bits": a_bits}))
    randomize_bn(model, seed=1)
    packed = PackedModel.from_torch(model, (3, 40, 40))
    assert [s.kind for s in packed.stages] == ["float"] + ["conv"] * 6 + ["float"]
    x = np.random.default_rng(2).integers(0, 256, (12, 3, 40, 40), dtype=np.uint8)
    rows = commands.compare(model, packed, x)
    for r in rows[1:-2]:
        assert r["pre_maxdiff"] < 1e-4 and r["forced_mismatch"] <= 1e-3 * r["n_out"], r
    assert rows[-1]["out_mismatch"] == 0
    records = []
    packed.run(x[:4], records)
    assert all(len(np.unique(rec["out"][0])) > 1 for rec in records[1:6])  # the codes are not constant


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_weight_codes_from_dorefa(bits):
    latent = torch.randn(6, 70, generator=torch.Generator().manual_seed(bits))
    wq = DoReFaWeight(bits)(latent).detach().numpy()
    w = mb.MultiBitWeights.from_dorefa(wq, bits)
    assert np.abs(w.values() - wq).max() <= 1e-7
    if bits == 1:
        assert np.array_equal(w.values().astype(np.float32), wq)
    with pytest.raises(ValueError, match="grid|E"):
        mb.MultiBitWeights.from_dorefa(wq * 1.1 + 0.01, bits)


def staircase(gamma, beta, mean, var, bits, eps=1e-4):
    bn = nn.BatchNorm1d(len(gamma), eps=eps).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma)), bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean)), bn.running_var.copy_(torch.tensor(var))
    act = DoReFaActivation(bits)
    n = 2 ** bits - 1
    return lambda v: torch.round(act(bn(v)) * n)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_fold_levels_matches_torch_everywhere(bits):
    """Every integer of the range, through BatchNorm (gamma > 0, < 0, = 0) and quantize_k(clip)."""
    rng = np.random.default_rng(bits)
    c = 12
    gamma = rng.uniform(-1, 1, c).astype(np.float32)
    gamma[:2] = 0.0
    gamma[2] = -0.5
    fn = staircase(gamma, rng.uniform(-0.5, 1.5, c).astype(np.float32), rng.uniform(-30, 30, c).astype(np.float32),
                   rng.uniform(1, 400, c).astype(np.float32), bits)
    lo, hi, scale = -300, 300, 0.37
    th = mb.fold_levels(fn, c, 2 ** bits - 1, lo, hi, scale)
    y = np.arange(lo, hi + 1)
    v = torch.from_numpy((y[:, None] * scale * np.ones((1, c))).astype(np.float32))
    want = fn(v).detach().numpy().astype(np.uint8)
    assert np.array_equal(th.apply(np.repeat(y[:, None], c, 1)), want)
    assert np.array_equal(th.apply_reference(np.repeat(y[:, None], c, 1)), want)
    assert len(np.unique(want[:, 3])) > 1  # the test crosses steps


def test_fold_levels_round_half_to_even():
    """quantize_1 of exactly 0.5 is 0 and quantize_2 of 0.5 (1.5 steps) is 2: torch's ties."""
    ident = staircase([1.0], [0.0], [0.0], [1.0 - 1e-4], 1)  # BN(v) = v exactly
    th = mb.fold_levels(ident, 1, 1, -4, 4, 0.5)
    assert th.apply(np.array([[0], [1], [2]])).ravel().tolist() == [0, 0, 1]
    two = staircase([1.0], [0.0], [0.0], [1.0 - 1e-4], 2)
    th2 = mb.fold_levels(two, 1, 3, -4, 4, 0.5)
    assert th2.apply(np.array([[0], [1], [2]])).ravel().tolist() == [0, 2, 3]


def dorefa_mlp(w_bits, a_bits, hidden=(70, 65, 30), seed=0, **overrides):
    torch.manual_seed(seed)
    quant = QuantScheme.from_config({**DOREFA_QUANT, "w_bits": w_bits, "a_bits": a_bits, **overrides})
    model = models.build("mlp", input_shape=(1, 8, 8), num_classes=10, quant=quant, hidden=hidden)
    return randomize_bn(model, seed)


def randomize_bn(model, seed=0):
    """BN statistics of a trained-looking DoReFa net (pre-activations spread over the clip window),
    both signs of gamma."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.2 + 0.01)
                m.weight.copy_(torch.rand(n, generator=g) * 2 - 0.7)
                m.bias.copy_(torch.rand(n, generator=g) * 0.8)
    return model.eval()


@pytest.mark.parametrize("w_bits,a_bits", WIDTHS)
def test_engine_dorefa_mlp_matches_torch(w_bits, a_bits):
    model = dorefa_mlp(w_bits, a_bits)
    x = np.random.default_rng(1).integers(0, 256, (300, 1, 8, 8), dtype=np.uint8)
    packed = PackedModel.from_torch(model, (1, 8, 8))
    assert isinstance(packed, MultiBitModel)
    assert [type(s).__name__ for s in packed.stages] == ["FloatStage", "BitSerialStage", "BitSerialStage",
                                                          "FloatStage"]
    with torch.no_grad():
        want = model(torch.from_numpy(x).float().mul(2 / 255).sub(1))
    got = packed.forward(x, batch_size=128)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() < 1e-3
    rows = commands.compare(model, packed, x)
    assert rows[0]["out_mismatch"] == 0  # the float first layer is torch's own computation
    hidden = rows[1]  # codes: torch's float32 rounding may only flip values on a step
    assert hidden["pre_maxdiff"] < 1e-4 and hidden["forced_mismatch"] <= 1e-3 * hidden["n_out"]
    records = []
    packed.run(x[:50], records)
    assert len(np.unique(records[1]["out"][0])) > 1  # the hidden codes are not constant
    assert rows[-1]["out_mismatch"] == 0


def test_engine_codes_equal_torch_when_float_is_exact():
    """With E a power of two and A = 1 (values 0/1) torch's float32 matmul is exact: every code equal."""
    model = dorefa_mlp(1, 1, hidden=(40, 33, 20))
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "weight_quantizer", None) is not None and isinstance(m.weight_quantizer, DoReFaWeight):
                m.weight.copy_(torch.sign(m.weight) * 0.125 + (m.weight == 0) * 0.125)
    x = np.random.default_rng(2).integers(0, 256, (200, 1, 8, 8), dtype=np.uint8)
    rows = commands.compare(model, PackedModel.from_torch(model, (1, 8, 8)), x)
    for r in rows[1:3]:
        assert r["pre_mismatch"] == 0 and r["pre_maxdiff"] == 0.0 and r["out_mismatch"] == 0
        assert r["forced_mismatch"] == 0


def test_engine_refuses_what_it_cannot_pack():
    with pytest.raises(PackError, match=r"layer 4 .*float weights"):  # a hidden layer kept float
        m = dorefa_mlp(1, 2)
        m[4].weight_quantizer = Identity()
        PackedModel.from_torch(m, (1, 8, 8))
    with pytest.raises(PackError, match=r"layer 6 .*cabs"):  # min(1, |x|) is no monotone staircase
        PackedModel.from_torch(dorefa_mlp(1, 2, activation_kwargs={"nonlin": "cabs"}), (1, 8, 8))
    from bnnrepro import quant
    from bnnrepro.nn import QuantConv2d, QuantLinear

    pool_first = nn.Sequential(QuantConv2d(3, 8, 3), nn.BatchNorm2d(8), quant.build("dorefa_activation", bits=2),
                               QuantConv2d(8, 8, 3, weight_quantizer=("dorefa_weight", {"bits": 1})),
                               nn.MaxPool2d(2), nn.BatchNorm2d(8), quant.build("dorefa_activation", bits=2),
                               nn.Flatten(), QuantLinear(8 * 2 * 2, 10))
    with pytest.raises(PackError, match=r"layer 4 .*max-pool must sit between BatchNorm and the activation"):
        PackedModel.from_torch(pool_first.eval(), (3, 8, 8))


def test_engine_sign_weights_on_dorefa_activations():
    """BNN's +-1 weights (E = 1) after a 2-bit DoReFa activation: a bit-serial output layer."""
    from bnnrepro import quant
    from bnnrepro.nn import QuantLinear

    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), QuantLinear(64, 40, weight_quantizer="sign"), nn.BatchNorm1d(40),
                          quant.build("dorefa_activation", bits=2), QuantLinear(40, 10, weight_quantizer="sign"))
    model[2].running_var.fill_(0.01)
    model.eval()
    x = np.random.default_rng(4).integers(0, 256, (100, 1, 8, 8), dtype=np.uint8)
    packed = PackedModel.from_torch(model, (1, 8, 8))
    assert [type(s).__name__ for s in packed.stages] == ["FloatStage", "BitSerialStage"]
    rows = commands.compare(model, packed, x)
    assert rows[1]["pre_maxdiff"] < 1e-4 and rows[1]["out_mismatch"] == 0
    # logits are multiples of 1/3: exact ties between classes, which torch's rounding breaks either way
    got, want = packed.forward(x), model(torch.from_numpy(x).float().mul(2 / 255).sub(1)).detach()
    top2 = got.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    assert clear.sum() > 50 and torch.equal(got.argmax(1)[clear], want.argmax(1)[clear])
    with pytest.raises(PackError, match=r"layer 4 .*2-bit weights of kind 'linear'"):
        model[4].weight_quantizer = quant.build("qnn_linear", bits=2)
        PackedModel.from_torch(model, (1, 8, 8))


@pytest.mark.parametrize("w_bits,a_bits", [(1, 2), (2, 2)])
def test_bench_row_bitserial_fc(monkeypatch, w_bits, a_bits):
    from bnnrepro.kernels import baselines, bench

    monkeypatch.setattr(baselines, "MATMUL_N", 128)
    monkeypatch.setattr(baselines, "ENGINE_PROBE", (4, 128, 128))
    row = bench.bench_fc_multibit(3, 130, 70, w_bits, a_bits, 2, np.random.default_rng(0), baselines.Baselines())
    assert row["case"] == f"FC 3x130->70 W{w_bits}A{a_bits}" and row["bit_exact"] is True
    assert row["packed_ms"] > 0 and row["torch_fp32_ms"] > 0 and row["ops"] == 2.0 * 3 * 130 * 70
    assert row["binary_ops"] == row["ops"] * w_bits * a_bits  # "% of peak" counts the plane pairs run


def test_summary_measures_the_multibit_artifact(tmp_path):
    from bnnrepro.kernels import artifact
    from bnnrepro.report import summary

    model = dorefa_mlp(1, 2)
    size, note = summary.packed_size(model, (1, 8, 8))
    assert size == artifact.save(PackedModel.from_torch(model, (1, 8, 8)), tmp_path / "m.bnn").stat().st_size
    assert note.startswith("measured")


@pytest.fixture(scope="module")
def dorefa_run(tmp_path_factory):
    """The DoReFa MNIST MLP at W1A2 (G4), trained briefly with the project's own loop."""
    from conftest import fit_briefly

    return fit_briefly(tmp_path_factory, ["+experiment=dorefa_mnist_mlp", "scale=smoke", "scale.epochs=1",
                                          "scale.train_subset=2000", "quant.w_bits=1", "quant.a_bits=2"])


def test_trained_dorefa_w1a2_eval_and_compare(dorefa_run, tmp_path, capsys):
    import json

    from bnnrepro import evaluate

    run, root = dorefa_run
    opts = {"engine": "torch", "split": "test", "which": "best", "data.root": str(root), "batch_size": 1000}
    torch_err = evaluate.run(str(run), opts)["error"]
    assert torch_err < 60.0  # it learned something
    assert evaluate.run(str(run), {**opts, "engine": "packed"})["error"] == pytest.approx(torch_err, abs=1e-4)  # same count
    assert commands.compare_main([str(run), "-n", "2000", f"data.root={root}", "--json", str(tmp_path / "c.json")]) == 0
    assert "predictions differ on 0/2000" in capsys.readouterr().out
    rows = json.loads((tmp_path / "c.json").read_text())
    assert [r["kind"] for r in rows[:-1]] == ["float", "dense", "dense", "float"]
    assert all(r["pre_mismatch"] == 0 for r in rows[:-1])
    assert rows[1]["forced_mismatch"] <= 1e-3 * rows[1]["n_out"]  # codes: only values on a step may differ
    assert commands.pack_main([str(run), "--out", str(tmp_path / "m.bnn")]) == 0
    assert "W1A2" in capsys.readouterr().out
