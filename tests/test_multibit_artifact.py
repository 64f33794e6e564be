"""The ``.bnn`` file of the multi-bit (DoReFa, bit-serial) engine: save -> load computes bit-identical
logits, the weights are stored as bit-planes (smaller than float32), and every damaged, edited or
undescribable model is refused with one :class:`PackError` naming the file (or layer) and the field."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnnrepro import quant
from bnnrepro.errors import CheckpointError, PackError
from bnnrepro.kernels import PackedModel, artifact, commands
from bnnrepro.kernels.multibit_engine import BitSerialStage, FloatStage, MultiBitModel
from bnnrepro.nn import QuantConv2d, QuantLinear, ShiftBatchNorm
from test_artifact_integrity import _flip_a_byte_of, _read, _refused, _write
from test_multibit import dorefa_mlp, randomize_bn

SHAPE = (1, 8, 8)


def _images(n=64, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def _conv_net(w_bits=2, a_bits=2):
    """float conv -> bit-serial conv + max-pool on the codes -> bit-serial conv with a bias and a float
    tail (BN, clip, flatten) -> float linear with a bias: every stage kind the file describes."""
    torch.manual_seed(0)
    act = lambda: quant.build("dorefa_activation", bits=a_bits)  # noqa: E731
    wq = ("dorefa_weight", {"bits": w_bits})
    model = nn.Sequential(
        QuantConv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), act(),
        QuantConv2d(4, 8, 3, padding=1, weight_quantizer=wq), nn.BatchNorm2d(8), nn.MaxPool2d(2), act(),
        QuantConv2d(8, 16, 3, weight_quantizer=wq, bias=True), nn.BatchNorm2d(16),
        quant.build("dorefa_activation", bits=a_bits, quantize=False), nn.Flatten(),
        QuantLinear(16, 10, bias=True))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)  # the layers zero their biases
    return randomize_bn(model, seed=3)


def _shift_bn_net():
    """Shift-based BN, ReLU and hard-tanh in float stages, a folded chain and a float tail."""
    torch.manual_seed(1)
    act = lambda: quant.build("dorefa_activation", bits=2)  # noqa: E731
    model = nn.Sequential(
        nn.Flatten(), QuantLinear(64, 40), ShiftBatchNorm(40), nn.ReLU(), act(),
        QuantLinear(40, 30, weight_quantizer=("dorefa_weight", {"bits": 1})), ShiftBatchNorm(30), act(),
        QuantLinear(30, 20, weight_quantizer=("dorefa_weight", {"bits": 2})), nn.BatchNorm1d(20), nn.Hardtanh(),
        QuantLinear(20, 10), ShiftBatchNorm(10))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ShiftBatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_invstd.copy_(torch.rand(m.num_features, generator=g) * 4 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2 - 0.7)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.8)
    return randomize_bn(model, seed=4)


MODELS = {"mlp_w1a2": lambda: dorefa_mlp(1, 2), "mlp_w2a4": lambda: dorefa_mlp(2, 4), "conv_w2a2": _conv_net,
          "shift_bn": _shift_bn_net}


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    """(torch model, in-memory MultiBitModel, input shape) of a model built directly (random weights)."""
    model = MODELS[request.param]()
    shape = (1, 8, 8)
    return model, PackedModel.from_torch(model, shape), shape


@pytest.fixture(scope="module")
def mlp_packed():
    return PackedModel.from_torch(dorefa_mlp(1, 2), SHAPE)


@pytest.fixture
def mlp(mlp_packed, tmp_path):
    """(in-memory W1A2 MLP: float 64->70, bit-serial 70->65 and 65->30 (float tail), float 30->10; its
    saved file): the file the edits below start from."""
    return mlp_packed, artifact.save(mlp_packed, tmp_path / "model.bnn")


# ---------------------------------------------------------------- round trips

def test_roundtrip_is_bit_exact(built, tmp_path):
    model, packed, shape = built
    path = artifact.save(packed, tmp_path / "m.bnn")
    header, arrays = _read(path)
    assert header["engine"] == "multibit" and header["sha256"] == artifact.content_hash(header, arrays)
    loaded = artifact.load(path)
    assert isinstance(loaded, MultiBitModel)
    assert [type(s) for s in loaded.stages] == [type(s) for s in packed.stages]
    assert [type(s) for s in packed.stages] == [FloatStage, BitSerialStage, BitSerialStage, FloatStage]
    for seed in range(2):
        x = _images(shape=shape, seed=seed)
        assert torch.equal(loaded.forward(x), packed.forward(x))
    x = _images(shape=shape)
    assert torch.equal(commands.predict_packed(path, x, return_logits=True), packed.forward(x))
    # the loaded model saves to the same content: nothing was lost or changed in the round trip
    again = artifact.save(loaded, tmp_path / "again.bnn")
    assert _read(again)[0]["sha256"] == header["sha256"]
    # the weights are their bit-planes (bits per code, not a byte), the file smaller than float32
    for i, st in enumerate(packed.stages):
        if isinstance(st, BitSerialStage):
            planes, w = arrays[f"s{i}.planes"], st.weights
            assert planes.dtype == np.uint64 and planes.shape == (w.bits * w.n, -(-w.k // 64))
            assert np.array_equal(loaded.stages[i].weights.codes, st.weights.codes)


def test_roundtrip_compare_agrees_with_torch(tmp_path):
    """The loaded conv net, compared layer by layer with its torch model, as the in-memory one."""
    model = _conv_net()
    packed = PackedModel.from_torch(model, SHAPE)
    loaded = artifact.load(artifact.save(packed, tmp_path / "m.bnn"))
    x = _images(200)
    assert commands.compare(model, loaded, x) == commands.compare(model, packed, x)
    assert [s.kind for s in loaded.stages] == ["float", "conv", "conv", "float"]
    assert loaded.stages[1].pool is not None and loaded.stages[2].tail is not None


def test_load_does_not_touch_torchs_random_state(mlp):
    _, path = mlp
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    artifact.load(path)
    assert torch.equal(torch.rand(3), want)


# ---------------------------------------------------------------- what save refuses

def test_save_refuses_a_module_it_cannot_describe(tmp_path):
    model = dorefa_mlp(1, 2)
    model[2] = nn.LayerNorm(70)  # in the float first stage: the engine runs it, the file cannot say it
    packed = PackedModel.from_torch(model.eval(), SHAPE)
    with pytest.raises(PackError, match=r"cannot save layer 2 \(LayerNorm\) to a \.bnn file"):
        artifact.save(packed, tmp_path / "m.bnn")
    model = dorefa_mlp(1, 2)
    model[1].input_quantizer = quant.build("sign")
    with pytest.raises(PackError, match=r"layer 1 \(QuantLinear\).*input quantizer Sign"):
        artifact.save(PackedModel.from_torch(model, SHAPE), tmp_path / "m.bnn")
    assert not list(tmp_path.iterdir())


def test_save_refuses_a_tail_without_description(tmp_path):
    packed = PackedModel.from_torch(dorefa_mlp(1, 2), SHAPE)
    tail = packed.stages[2]
    assert tail.thresholds is None and tail.chain is not None
    tail.chain = None  # a tail closure made by hand
    with pytest.raises(PackError, match=r"layer 7 \(BitSerialStage\).*float tail"):
        artifact.save(packed, tmp_path / "m.bnn")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- what load refuses

def test_truncated_and_flipped_byte(mlp):
    _, path = mlp
    data = _flip_a_byte_of(path, "s1.planes")
    _refused(path, "modified or damaged")
    path.write_bytes(data[:len(data) // 2])
    _refused(path)


def _stage(h, i):
    return h["stages"][i]


def _edit_engine(h, a):
    h["engine"] = "ternary"
    return "engine: expected one of ['multibit']"


def _edit_in_bits(h, a):
    _stage(h, 1)["in_bits"] = 4
    return "stages[1].in_bits: expected 2"


def _edit_k(h, a):
    _stage(h, 1)["k"] = 71
    return "stages[1].k: 71 does not match its input shape [70]"


def _edit_w_bits(h, a):
    _stage(h, 1)["w_bits"] = 2
    return "stages[1]: array 's1.planes': expected uint64 of shape (130, 2)"


def _edit_out_bits(h, a):
    _stage(h, 1)["out_bits"] = _stage(h, 2)["in_bits"] = 3
    return "stages[1]: array 's1.t': expected int16 or int32 or int64 of shape (65, 7)"


def _edit_float_out_bits(h, a):
    _stage(h, 0)["out_bits"] = 4
    return "stages[0].out_bits: expected 2 (from its last module), got 4"


def _edit_module_width(h, a):
    _stage(h, 0)["modules"][1]["out_features"] = 71
    return "stages[0].modules[2]: a batchnorm1d of 70 features; its input has shape [71]"


def _edit_module_type(h, a):
    _stage(h, 0)["modules"][2]["type"] = "groupnorm"
    return "stages[0].modules[2].type: expected one of"


def _edit_module_key(h, a):
    del _stage(h, 0)["modules"][2]["eps"]
    return "stages[0].modules[2]: missing key 'eps'"


def _edit_module_bool(h, a):
    _stage(h, 0)["modules"][3]["quantize"] = 1
    return "stages[0].modules[3].quantize: expected true or false, got 1"


def _edit_tail_type(h, a):
    _stage(h, 2)["tail"]["modules"][0] = {"name": "8", "type": "relu"}
    return "stages[2].tail.modules[0].type: a float tail holds only"


def _edit_tail_quantize(h, a):
    _stage(h, 2)["tail"]["modules"][1]["quantize"] = True
    return "stages[2].tail.modules[1]: a float tail's DoReFa activation is clip(x, 0, 1), not quantized"


def _edit_input_shape(h, a):
    h["input_shape"] = [1, 8, 9]
    return "stages[0].modules[1]: a linear of in_features 64; its input has shape [72]"


def _edit_stage_type(h, a):
    _stage(h, 0)["type"] = "bitserial"
    return "stages[0]: missing key"


def _edit_last_stage(h, a):
    del h["stages"][2:]
    return "stages[1]: the last stage must make logits [classes], it makes codes of shape [65]"


def _edit_version_1(h, a):
    h["version"] = 1
    return "version: a multi-bit file has version >= 2"


def _missing_array(h, a):
    del a["s0.m2.running_var"]
    return "stages[0].modules[2]: missing array 's0.m2.running_var'"


def _extra_array(h, a):
    a["s9.planes"] = np.zeros(3, np.uint64)
    return "unexpected array 's9.planes'"


def _wrong_shape(h, a):
    a["s0.m1.weight"] = a["s0.m1.weight"][:, :-1]
    return "stages[0].modules[1]: array 's0.m1.weight': expected float32 of shape (70, 64)"


def _wrong_dtype(h, a):
    a["s1.t"] = a["s1.t"].astype(np.float32)
    return "stages[1]: array 's1.t': expected int16 or int32 or int64"


def _tail_bias_shape(h, a):
    _stage(h, 2)["tail"]["bias"] = True
    return "stages[2].tail: missing array 's2.tail.bias'"


def _padding_bits(h, a):
    a["s1.planes"] = a["s1.planes"].copy()
    a["s1.planes"][0, -1] |= np.uint64(1) << np.uint64(63)  # k = 70: bits 6..63 of the last word pad
    return "stages[1]: array 's1.planes': bits past k=70 are set"


def _flip_weight_bit(h, a):  # invisible to the schema: only the hash can tell
    a["s1.planes"] = a["s1.planes"].copy()
    a["s1.planes"][3, 0] ^= np.uint64(1 << 17)


EDITS = [_edit_engine, _edit_in_bits, _edit_k, _edit_w_bits, _edit_out_bits, _edit_float_out_bits, _edit_module_width,
         _edit_module_type, _edit_module_key, _edit_module_bool, _edit_tail_type, _edit_tail_quantize,
         _edit_input_shape, _edit_stage_type, _edit_last_stage, _edit_version_1, _missing_array, _extra_array,
         _wrong_shape, _wrong_dtype, _tail_bias_shape, _padding_bits]


@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__)
def test_edits_with_the_hash_recomputed_fail_the_schema(mlp, edit, record_property):
    record_property("bad_inputs", 1)
    _, path = mlp
    header, arrays = _read(path)
    field = edit(header, arrays)
    _write(path, header, arrays, rehash=header["version"] >= 2)
    _refused(path, field)


@pytest.mark.parametrize("edit", [e for e in EDITS if e is not _edit_version_1] + [_flip_weight_bit],
                         ids=lambda f: f.__name__)
def test_edits_with_a_stale_hash_fail_the_hash(mlp, edit, record_property):
    record_property("bad_inputs", 1)
    _, path = mlp
    header, arrays = _read(path)
    edit(header, arrays)
    _write(path, header, arrays, rehash=False)
    _refused(path, "sha256: content hash mismatch")


def test_conv_edits_fail_the_schema(tmp_path):
    path = artifact.save(PackedModel.from_torch(_conv_net(), SHAPE), tmp_path / "m.bnn")
    for edit, field in [
            (lambda h: h["stages"][1].update(conv=[3, 3, 1, "1"]), "stages[1].conv: expected null or [kh, kw, stride"),
            (lambda h: h["stages"][1]["pool"].update(kernel_size=[3, 3]), "stages[2].conv: its input shape "
                                                                           "[8, 2, 2] makes an empty output"),
            (lambda h: h["stages"][1]["pool"].update(type="relu"), "stages[1].pool: unexpected key"),
            (lambda h: h["stages"][2].update(pool=h["stages"][1]["pool"]), "stages[2]: a stage with a float tail"),
            (lambda h: h["stages"][0]["modules"][0].update(groups=3), "stages[0].modules[0]: a conv2d of 1 input")]:
        header, arrays = _read(path)
        edit(header)
        _write(tmp_path / "edited.bnn", header, arrays)
        _refused(tmp_path / "edited.bnn", field)


def test_binary_files_still_load(tmp_path):
    """A binary file (no engine field) loads as a PackedModel, as before."""
    from test_artifact_integrity import SHAPE as BSHAPE, _images as bimages, _model

    packed = PackedModel.from_torch(_model(), BSHAPE)
    path = artifact.save(packed, tmp_path / "b.bnn")
    assert "engine" not in _read(path)[0]
    loaded = artifact.load(path)
    assert isinstance(loaded, PackedModel) and torch.equal(loaded.forward(bimages()), packed.forward(bimages()))


# ---------------------------------------------------------------- a trained DoReFa MLP and the commands

@pytest.fixture(scope="module", params=[(1, 2), (2, 2)], ids=["W1A2", "W2A2"])
def dorefa_run(request, tmp_path_factory):
    """The DoReFa MNIST MLP (784-64x3-10) trained briefly with the project's own loop."""
    from conftest import fit_briefly

    w, a = request.param
    run, root = fit_briefly(tmp_path_factory, ["+experiment=dorefa_mnist_mlp", "scale=smoke", "scale.epochs=1",
                                               "scale.train_subset=1000", f"quant.w_bits={w}", f"quant.a_bits={a}"])
    return run, root, request.param


def test_trained_run_pack_load_bit_identical(dorefa_run, tmp_path, capsys):
    from bnnrepro import cli, data

    run, root, (w, a) = dorefa_run
    out = tmp_path / "model.bnn"
    assert cli.main(["pack", str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "ratio 1/" in text and f"W{w}A{a}" in text and "fp32" in text
    model, _, shape = commands.load_torch(str(run))
    packed = PackedModel.from_torch(model, shape)
    x = data.load("mnist", root, download=False).test_x[:300].numpy()
    loaded = artifact.load(out)
    assert torch.equal(loaded.forward(x), packed.forward(x))
    assert torch.equal(commands.predict_packed(out, x), packed.forward(x).argmax(1))
    assert out.stat().st_size < artifact.float_weight_bytes(model)
    assert _read(out)[0]["meta"]["float32_weight_bytes"] == artifact.float_weight_bytes(model)
    # the file runs where a binary one does: compare --artifact; eval names that command
    assert commands.compare_main([str(run), "--artifact", str(out), "-n", "300", f"data.root={root}"]) == 0
    assert "predictions differ on 0/300" in capsys.readouterr().out
    from bnnrepro import evaluate

    with pytest.raises(CheckpointError, match="packed artifact.*compare <run> --artifact"):
        evaluate.run(str(out))


# ---------------------------------------------------------------- thresholds in the narrowest integer type

@pytest.mark.parametrize("lo,hi,dtype", [(-768, 768, np.int16), (-32767, 32767, np.int16), (-32768, 5, np.int32),
                                         (-2**31 + 1, 2**31 - 1, np.int32), (0, 2**31, np.int64)])
def test_thresholds_take_the_narrowest_type_and_widen_back_exactly(lo, hi, dtype):
    from bnnrepro.kernels import multibit_artifact as mba
    from bnnrepro.kernels.tiles import NEVER

    t = np.array([[lo, NEVER, hi], [NEVER, NEVER, NEVER], [hi, lo, 0]], np.int64)
    narrow = mba.narrow_thresholds(t)
    assert narrow.dtype == dtype
    assert np.array_equal(mba.widen_thresholds(narrow), t) and mba.widen_thresholds(narrow).dtype == np.int64
    assert mba.narrow_thresholds(np.full((2, 3), NEVER, np.int64)).dtype == np.int16  # nothing reachable


def test_saved_thresholds_are_narrow_and_an_int64_file_still_loads(mlp, tmp_path):
    packed, path = mlp
    header, arrays = _read(path)
    assert arrays["s1.t"].dtype == np.int16  # |y| <= 64 * 1 * 3 for the 64-wide W1A2 layer
    x = _images(32)
    arrays["s1.t"] = np.asarray(packed.stages[1].thresholds.t, np.int64)  # as files were written before
    _write(tmp_path / "wide.bnn", header, arrays)
    assert torch.equal(artifact.load(tmp_path / "wide.bnn").forward(x), packed.forward(x))

