"""The ``.bnn`` artifact is tamper-evident and strictly validated: every damaged, edited or foreign
file is refused with one :class:`PackError` naming the file and the field."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnnrepro import evaluate, quant
from bnnrepro.errors import CheckpointError, PackError
from bnnrepro.kernels import PackedModel, artifact
from bnnrepro.nn import QuantConv2d, QuantLinear

SHAPE = (1, 8, 8)
ROOT = Path(__file__).resolve().parents[1]


def _model():
    """conv (bit-planes) -> conv + pool -> flatten -> dense -> dense + BatchNorm1d (logits)."""
    torch.manual_seed(0)
    sign = lambda: quant.build("sign")  # noqa: E731
    model = nn.Sequential(
        QuantConv2d(1, 8, 3, padding=1, weight_quantizer="sign"), nn.BatchNorm2d(8), sign(),
        QuantConv2d(8, 16, 3, padding=1, weight_quantizer="sign"), nn.MaxPool2d(2), nn.BatchNorm2d(16), sign(),
        nn.Flatten(), QuantLinear(16 * 4 * 4, 24, weight_quantizer="sign"), nn.BatchNorm1d(24), sign(),
        QuantLinear(24, 10, weight_quantizer="sign"), nn.BatchNorm1d(10))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 10)
                m.running_var.copy_(torch.rand(n, generator=g) * 5 + 1)
                m.weight.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def _images(n=17, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


@pytest.fixture(autouse=True)
def _tally(request, record_property):
    """Every refusal case counts as a bad input in `make test-faults`' tally (tests/conftest.py)."""
    name = request.node.name
    if not name.startswith(("test_roundtrip", "test_version_1")):
        record_property("bad_inputs", 3 if name.startswith("test_empty_file") else 1)


@pytest.fixture(scope="module")
def packed():
    return PackedModel.from_torch(_model(), SHAPE)


@pytest.fixture
def good(packed, tmp_path) -> Path:
    return artifact.save(packed, tmp_path / "model.bnn")


def _read(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays.pop("header").tobytes()), arrays


def _write(path, header, arrays, rehash=True):
    if rehash:
        header["sha256"] = artifact.content_hash(header, arrays)
    with open(path, "wb") as f:
        np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)


def _refused(path, *fields):
    with pytest.raises(PackError) as info:
        artifact.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    for f in fields:
        assert f in msg, (f, msg)
    return msg


def test_roundtrip_is_bit_exact_and_hashed(packed, good, capsys):
    header, arrays = _read(good)
    assert header["version"] == 2 and header["sha256"] == artifact.content_hash(header, arrays)
    loaded = artifact.load(good)
    for seed in range(3):
        x = _images(seed=seed)
        assert torch.equal(loaded.forward(x), packed.forward(x))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:int(len(data) * keep)])
    _refused(good)


def test_empty_file_and_not_a_zip_and_missing(tmp_path):
    for name, data in (("empty.bnn", b""), ("text.bnn", b"not a model\n" * 50)):
        (tmp_path / name).write_bytes(data)
        _refused(tmp_path / name, "not an npz/zip")
    _refused(tmp_path / "absent.bnn", "no such file")


def _flip_a_byte_of(path, name) -> bytes:
    """Flip one byte of array ``name`` where its data lies in the (uncompressed) zip; the new bytes."""
    data = bytearray(path.read_bytes())
    at = bytes(data).index(_read(path)[1][name].tobytes()[:64]) + 8
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_bytes_flipped_inside_an_array(good):
    _flip_a_byte_of(good, "l2.bits")
    _refused(good, "modified or damaged")


def _edit_out_channels_negative(h, a):
    h["layers"][2]["out_channels"] = -3
    return "layers[2].out_channels: expected a positive int, got -3"


def _edit_out_channels_other(h, a):
    h["layers"][2]["out_channels"] = 23
    return "layers[2].out_channels"


def _edit_kind_conv(h, a):
    h["layers"][2]["kind"] = "conv"
    return "layers[2]: missing key 'c'"


def _edit_kind_unknown(h, a):
    h["layers"][1]["kind"] = "pool"
    return "layers[1].kind: expected one of"


def _edit_delete_key(h, a):
    del h["layers"][1]["stride"]
    return "layers[1]: missing key 'stride'"


def _edit_input_shape(h, a):
    h["input_shape"] = [1, 8, 9]
    return "layers[0].in_shape"


def _edit_input_shape_bad(h, a):
    h["input_shape"] = [1, 0, 8]
    return "input_shape: expected a list of positive ints"


def _edit_chain(h, a):
    h["layers"][1]["out_shape"] = [16, 8, 8]
    return "layers[1].out_shape"


def _edit_affine(h, a):
    h["layers"][3]["affine"]["present"].append("gamma")
    return "layers[3].affine.present"


def _edit_version(h, a):
    h["version"] = 3
    return "version"


def _extra_array(h, a):
    a["l9.bits"] = np.zeros(3, np.uint64)
    return "unexpected array 'l9.bits'"


def _missing_array(h, a):
    del a["l1.tap_sums"]
    return "layers[1]: missing array 'l1.tap_sums'"


def _wrong_dtype(h, a):
    a["l0.t"] = a["l0.t"].astype(np.int32)
    return "layers[0]: array 'l0.t': expected int64"


def _wrong_shape(h, a):
    a["l2.bits"] = a["l2.bits"][:, :-1]
    return "layers[2]: array 'l2.bits'"


def _flip_weight_bit(h, a):  # invisible to the schema: only the hash can tell
    a["l2.bits"] = a["l2.bits"].copy()
    a["l2.bits"][3, 1] ^= np.uint64(1 << 17)


EDITS = [_edit_out_channels_negative, _edit_out_channels_other, _edit_kind_conv, _edit_kind_unknown,
         _edit_delete_key, _edit_input_shape, _edit_input_shape_bad, _edit_chain, _edit_affine, _edit_version,
         _extra_array, _missing_array, _wrong_dtype, _wrong_shape]


@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__)
def test_edits_with_the_hash_recomputed_fail_the_schema(good, edit):
    header, arrays = _read(good)
    field = edit(header, arrays)
    _write(good, header, arrays)
    _refused(good, field)


@pytest.mark.parametrize("edit", [e for e in EDITS if e is not _edit_version] + [_flip_weight_bit],
                         ids=lambda f: f.__name__)
def test_edits_with_a_stale_hash_fail_the_hash(good, edit):
    header, arrays = _read(good)
    edit(header, arrays)
    _write(good, header, arrays, rehash=False)
    _refused(good, "sha256: content hash mismatch", "modified or damaged after it was written")


def test_missing_header_and_invalid_json(good):
    header, arrays = _read(good)
    with open(good, "wb") as f:
        np.savez(f, **arrays)
    _refused(good, "no header")
    with open(good, "wb") as f:
        np.savez(f, header=np.frombuffer(b'{"format": ', np.uint8), **arrays)
    _refused(good, "header: invalid JSON")


def test_version_1_loads_with_a_warning(packed, good, capsys):
    header, arrays = _read(good)
    del header["sha256"]
    header["version"] = 1
    _write(good, header, arrays, rehash=False)
    loaded = artifact.load(good)
    x = _images()
    assert torch.equal(loaded.forward(x), packed.forward(x))
    err = capsys.readouterr().err
    assert "no content hash" in err and str(good) in err and err.count("\n") == 1
    header["layers"][0]["k"] = 10  # version 1 files are validated all the same
    _write(good, header, arrays, rehash=False)
    _refused(good, "layers[0].k")


def test_eval_of_an_artifact_says_which_command_runs_it(good, tmp_path):
    with pytest.raises(CheckpointError, match="packed artifact.*compare <run> --artifact"):
        evaluate.run(str(good))
    renamed = tmp_path / "model.pt"  # detected by content, not by the suffix
    renamed.write_bytes(good.read_bytes())
    assert zipfile.is_zipfile(renamed)
    proc = subprocess.run([sys.executable, "-m", "bnnrepro", "eval", str(renamed)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "packed artifact" in proc.stderr and "--artifact" in proc.stderr
