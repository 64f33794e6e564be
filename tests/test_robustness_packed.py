"""Bit errors in the packed engine: the flips are the torch sweep's, p = 0 changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bnnrepro import models
from bnnrepro.kernels import PackedModel, commands
from bnnrepro.robustness import DISTORTIONS, DistortableCopy, DistortionOptions
from bnnrepro.robustness import packed as engine
from test_engine import float_logits, images, randomize_bn, trained_run  # noqa: F401 (a fixture)

BITFLIP = DISTORTIONS["bitflip"]


def _net(name, shape, seed):
    torch.manual_seed(seed)
    kwargs = dict(hidden=(300, 200, 100)) if name == "mlp" else dict(width_mult=0.25)
    return randomize_bn(models.build(name, input_shape=shape, num_classes=10, **kwargs))


@pytest.mark.parametrize("name,shape", [("mlp", (1, 28, 28)), ("bnn_convnet", (3, 32, 32))])
def test_packed_bitflips_are_the_torch_flips_and_p0_changes_nothing(name, shape):
    model = _net(name, shape, seed=3)
    packed = PackedModel.from_torch(model, shape)
    x = images(shape, n=40)
    clean = packed.forward(x)
    for i, (layer, torch_layer) in enumerate(zip(packed.layers, DistortableCopy(model, "effective").clean)):
        previous = packed.layers[i - 1] if i else None
        assert torch.equal(engine.layer_signs(layer, previous), torch_layer)  # the stored bits are sign(w)
        assert np.array_equal(engine._repacked(layer, torch_layer, previous).bits, layer.weights.bits)
    same, unchanged, _, _ = engine.distorted(packed, BITFLIP, 0.0, torch.Generator().manual_seed(1))
    assert unchanged and torch.equal(same.forward(x), clean)

    flipped, unchanged, before, after = engine.distorted(packed, BITFLIP, 0.05, torch.Generator().manual_seed(7))
    assert not unchanged
    share = sum(int((a != b).sum()) for a, b in zip(after, before)) / sum(b.numel() for b in before)
    assert 0.04 < share < 0.06
    net = DistortableCopy(model, "effective")
    net.set(BITFLIP, 0.05, torch.Generator().manual_seed(7), DistortionOptions())
    assert all(torch.equal(m.weight, a) for m, a in zip(net.layers, after))  # the same faults
    # the engine computes the flipped net exactly: every layer after the first matches torch given
    # the same input; the first (8-bit pixels) is exact in the engine and rounds in torch's float32,
    # so a pre-activation within ~1e-6 of a threshold may differ (rare; test_engine.py says more)
    rows = commands.compare(net.model, flipped, x)
    assert rows[0]["out_mismatch"] <= 1e-5 * rows[0]["n_out"]
    assert all(r["forced_mismatch"] in (0, None) for r in rows[1:-1])
    if rows[0]["out_mismatch"] == 0:
        assert torch.equal(flipped.forward(x), float_logits(net.model, x))
    assert not torch.equal(flipped.forward(x), clean)
    assert all(layer is not new for layer, new in zip(packed.layers, flipped.layers))  # the stored model untouched
    assert torch.equal(packed.forward(x), clean)


def test_packed_engine_takes_bitflip_only():
    packed = PackedModel.from_torch(_net("mlp", (1, 28, 28), seed=0), (1, 28, 28))
    with pytest.raises(ValueError, match="bitflip only"):
        engine.distorted(packed, DISTORTIONS["additive"], 0.1, None)


def test_packed_error_counts_wrong_predictions():
    packed = PackedModel.from_torch(_net("mlp", (1, 28, 28), seed=0), (1, 28, 28))
    x = images((1, 28, 28), n=50)
    pred = packed.predict(x)
    y = pred.copy()
    y[:5] = (y[:5] + 1) % 10
    assert engine.error(packed, x, y) == pytest.approx(10.0)
    assert engine.error(packed, x, np.asarray(pred)) == 0.0


def test_packed_sweep_of_a_trained_bnn(trained_run):
    """``--engine packed``: a trained W1A1 MLP's bits flipped; p = 0 is the packed net as trained,
    whose predictions are the torch net's on every MNIST test image (test_engine.py)."""
    from bnnrepro.robustness import SweepOptions, sweep_run

    run, root = trained_run
    opts = SweepOptions(levels=(0.0, 0.02), draws=2, weights="effective", engine="packed", progress=False,
                        data_root=str(root))
    rows = sweep_run(run, ["bitflip"], opts)
    assert [(r["level"], r["draw"]) for r in rows] == [(0.0, 0), (0.02, 0), (0.02, 1)]
    clean = rows[0]
    assert clean["noop"] and clean["error"] == clean["clean_error"] == clean["trained_error"]
    assert clean["projection"].endswith("[packed]")
    assert not any(r["noop"] for r in rows[1:]) and all(0 < r["effective_bits"] < 10 for r in rows[1:])
    torch_rows = sweep_run(run, ["bitflip"], SweepOptions(levels=(0.0, 0.02), draws=2, weights="effective",
                                                          progress=False, data_root=str(root)))
    # the same faults in both engines: the same errors (the first layer's float rounding aside)
    assert [r["error"] for r in torch_rows] == pytest.approx([r["error"] for r in rows], abs=0.05)
    with pytest.raises(ValueError, match="--weights effective"):
        SweepOptions(weights="hidden", engine="packed")
    with pytest.raises(ValueError, match="bitflip only"):
        sweep_run(run, ["additive"], SweepOptions(weights="effective", engine="packed", progress=False))
