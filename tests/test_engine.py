"""The packed engine against the float model: whole networks, the artifact, the commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnnrepro import models, quant
from bnnrepro.kernels import PackedModel, PackError, artifact, commands
from bnnrepro.nn import QuantConv2d, QuantLinear, ShiftBatchNorm


def randomize_bn(model, seed=0, spread=20.0):
    """BN statistics and affine parameters of a trained-looking net, both signs of gamma."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 2 * spread)
                m.running_var.copy_(torch.rand(n, generator=g) * 50 + 1)
                m.weight.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
            elif isinstance(m, ShiftBatchNorm):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 2 * spread)
                m.running_invstd.copy_(torch.rand(n, generator=g) + 0.01)
                m.weight.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def float_logits(model, x_uint8) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.as_tensor(x_uint8).to(torch.float32).mul(2.0 / 255.0).sub(1.0))


def images(shape, n=23, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def assert_same_as_torch(model, shape, n=23):
    """Same predictions; every layer after the first exact given the same input (teacher forcing).

    The first layer is exact in the packed engine, while torch's float32 first layer rounds, so a
    pre-activation within ~1e-6 of a BN threshold can come out on the other side (counted, rare)."""
    x = images(shape, n)
    packed = PackedModel.from_torch(model, shape)
    got, want = packed.forward(x), float_logits(model, x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    rows = commands.compare(model, packed, x)
    first, rest = rows[0], rows[1:-1]
    assert first["out_mismatch"] <= 1e-4 * first["n_out"] and first["pre_maxdiff"] < 1e-4
    assert all(r["forced_mismatch"] in (0, None) for r in rest)
    assert all(r["pre_mismatch"] == 0 for r in rest if first["out_mismatch"] == 0)
    if first["out_mismatch"] == 0:
        assert torch.equal(got, want)  # then the logits are bit-identical
    return packed


MLP = dict(hidden=(300, 200, 100))


@pytest.mark.parametrize("batchnorm", ["standard", "shift"])
def test_mlp_logits_bit_identical(batchnorm):
    torch.manual_seed(0)
    model = randomize_bn(models.build("mlp", input_shape=(1, 28, 28), num_classes=10, batchnorm=batchnorm,
                                      dropout_in=0.2, dropout_hidden=0.5, **MLP))
    assert_same_as_torch(model, (1, 28, 28))


@pytest.mark.parametrize("batchnorm", ["standard", "shift"])
def test_convnet_logits_bit_identical(batchnorm):
    torch.manual_seed(1)
    model = randomize_bn(models.build("bnn_convnet", input_shape=(3, 32, 32), num_classes=10, width_mult=0.25,
                                      batchnorm=batchnorm))
    packed = assert_same_as_torch(model, (3, 32, 32), n=9)
    assert [L.fused_pool for L in packed.layers[:6]] == [False, True, False, True, False, True]


def test_stochastic_sign_activations_are_deterministic_in_eval():
    torch.manual_seed(2)
    model = randomize_bn(models.build("mlp", input_shape=(1, 28, 28), num_classes=10,
                                      quant=quant.QuantScheme.from_config({"activation": "stochastic_sign"}), **MLP))
    assert_same_as_torch(model, (1, 28, 28))


def _sign():
    return quant.build("sign")


def test_other_orders_pools_strides_and_biases():
    """Pool after the sign, a 3x3/2 pool before BN, stride 2, no padding, odd channels, biases."""
    torch.manual_seed(3)
    model = nn.Sequential(
        QuantConv2d(3, 13, 3, padding=1, weight_quantizer="sign", bias=True), nn.BatchNorm2d(13), _sign(),
        nn.MaxPool2d(2),
        QuantConv2d(13, 65, 3, stride=2, padding=1, weight_quantizer="sign"), nn.MaxPool2d(3, 2),
        nn.BatchNorm2d(65), _sign(),
        QuantConv2d(65, 70, 3, padding=0, weight_quantizer="sign"), nn.BatchNorm2d(70), nn.MaxPool2d(2), _sign(),
        nn.Flatten(), QuantLinear(70 * 1 * 1, 33, weight_quantizer="sign", bias=True), nn.BatchNorm1d(33), _sign(),
        QuantLinear(33, 7, weight_quantizer="sign"))
    randomize_bn(model, spread=5.0)
    packed = assert_same_as_torch(model, (3, 40, 44), n=5)
    assert packed.layers[0].pool_post == (2, 2) and packed.layers[1].pool_pre == (3, 2, 0)
    assert packed.layers[2].pool_post == (2, 2) and packed.layers[-1].affine.kind == "none"


@pytest.mark.parametrize("bad,name,why", [
    (lambda: nn.Linear(64, 10), "4", "float layer"),
    (lambda: QuantLinear(64, 10, weight_quantizer="identity"), "4", "not \\+-1"),
    (lambda: quant.build("qnn_linear", bits=2), "3", "2-bit activations"),  # DoReFa's: test_multibit
    (lambda: nn.ReLU(), "3", "not supported"),
])
def test_unpackable_layers_fail_naming_the_layer(bad, name, why):
    mods = [nn.Flatten(), QuantLinear(784, 64, weight_quantizer="sign"), nn.BatchNorm1d(64), _sign(),
            QuantLinear(64, 10, weight_quantizer="sign")]
    mods[int(name)] = bad()
    model = nn.Sequential(*mods).eval()
    with pytest.raises(PackError, match=f"layer {name} .*{why}"):
        PackedModel.from_torch(model, (1, 28, 28))


def test_grouped_conv_and_missing_logits_fail_with_names():
    model = nn.Sequential(QuantConv2d(4, 8, 3, weight_quantizer="sign"), nn.BatchNorm2d(8), _sign(),
                          nn.Conv2d(8, 8, 3, groups=2)).eval()
    with pytest.raises(PackError, match="layer 3 "):
        PackedModel.from_torch(model, (4, 8, 8))
    model = nn.Sequential(nn.Flatten(), QuantLinear(16, 8, weight_quantizer="sign"), nn.BatchNorm1d(8), _sign()).eval()
    with pytest.raises(PackError, match="ends with a sign activation \\(3\\)"):
        PackedModel.from_torch(model, (1, 4, 4))


def test_artifact_roundtrip_size_and_no_pickle(tmp_path):
    torch.manual_seed(4)
    model = randomize_bn(models.build("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=(4096,) * 3))
    packed = PackedModel.from_torch(model, (1, 28, 28))
    path = artifact.save(packed, tmp_path / "m.bnn")
    assert path.name == "m.bnn"
    float_bytes = artifact.float_weight_bytes(model)
    assert path.stat().st_size * 25 <= float_bytes, (path.stat().st_size, float_bytes)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        header = json.loads(z["header"].tobytes())
    assert header["format"] == "bnnrepro-packed" and len(header["layers"]) == 4
    loaded = artifact.load(path)
    x = images((1, 28, 28), 16)
    assert torch.equal(loaded.forward(x), packed.forward(x))
    assert torch.equal(loaded.forward(x).argmax(1), float_logits(model, x).argmax(1))


def test_predict_packed_accepts_models_artifacts_and_tensors(tmp_path):
    torch.manual_seed(5)
    model = randomize_bn(models.build("mlp", input_shape=(1, 28, 28), num_classes=10, **MLP))
    x = torch.from_numpy(images((1, 28, 28), 300))
    want = float_logits(model, x)
    labels = commands.predict_packed(model, x)
    assert labels.dtype == torch.int64 and torch.equal(labels, want.argmax(1))
    path = artifact.save(PackedModel.from_torch(model, (1, 28, 28)), tmp_path / "m.bnn")
    assert torch.equal(commands.predict_packed(str(path), x, return_logits=True, batch_size=64), want)
    with pytest.raises(PackError, match="preprocessing='zca'"):
        commands.predict_packed(model, x, preprocessing="zca")


# ---------------------------------------------------------------- a trained network, the commands

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A BNN MLP (784-1024x3-10) trained briefly on MNIST with the project's own training loop."""
    from conftest import fit_briefly

    return fit_briefly(tmp_path_factory, ["+paper=bnn", "scale=smoke", "scale.epochs=1", "scale.train_subset=2000",
                                          "scale.width_mult=0.25"])


def _mnist_test(root):
    from bnnrepro import data

    s = data.load("mnist", root, download=False)
    return s.test_x, s.test_y


def test_trained_mlp_predictions_identical_on_all_mnist_test_images(trained_run):
    run, root = trained_run
    from bnnrepro.train import load_model

    model, _ = load_model(run)
    x, y = _mnist_test(root)
    assert len(x) == 10000
    want = float_logits(model, x).argmax(1)
    got = commands.predict_packed(run, x)
    assert torch.equal(got, want)
    assert float((got == y).float().mean()) > 0.5  # it did learn something


def test_pack_and_compare_commands(trained_run, tmp_path, capsys):
    run, root = trained_run
    out = tmp_path / "model.bnn"
    assert commands.pack_main([str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ratio 1/" in text and out.is_file()
    assert commands.compare_main([str(run), "--artifact", str(out), "-n", "2000", f"data.root={root}",
                                  "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    assert "first layer that differs" in text and "predictions differ on 0/2000" in text
    rows = json.loads((tmp_path / "c.json").read_text())
    assert all(r["pre_mismatch"] == 0 for r in rows[1:-1])  # hidden layers: exact integers
    assert all(r["forced_mismatch"] == 0 for r in rows[1:-2])  # folded thresholds agree with torch's BN


def test_eval_engine_packed_matches_torch(trained_run):
    run, root = trained_run
    from bnnrepro import evaluate

    opts = {"engine": "torch", "split": "test", "which": "best", "data.root": str(root), "batch_size": 1000}
    torch_err = evaluate.run(str(run), opts)["error"]
    packed_err = evaluate.run(str(run), {**opts, "engine": "packed"})["error"]
    assert packed_err == pytest.approx(torch_err, abs=1e-4)  # same number of errors


def test_pack_command_reports_unpackable_layer(tmp_path, capsys):
    assert commands.pack_main([str(tmp_path / "missing")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_bnn_mlp_identical_predictions_on_mnist(tmp_path, monkeypatch):
    """784-4096x3-10 trained for one epoch on 4000 images: all 10k test predictions identical."""
    from conftest import compose, data_root

    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found")
    from bnnrepro.train import fit, load_model

    monkeypatch.setenv("BNNREPRO_RUNS", str(tmp_path / "runs"))
    run = fit(compose(["+paper=bnn", "scale=smoke", "scale.epochs=1", "scale.train_subset=4000",
                       "scale.width_mult=1.0", "train.progress=false", f"data.root={root}"]))
    model, _ = load_model(run)
    x, _ = _mnist_test(root)
    assert torch.equal(commands.predict_packed(run, x), float_logits(model, x).argmax(1))
