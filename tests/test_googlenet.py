"""GoogLeNet (Inception v1 with BN) and the QNN GoogLeNet rows: every row builds and trains a step at
smoke scale, the blocks have Table 1's widths, the quantizers sit where the scheme puts them, the
full net has the published size, and ``bnnrepro summary`` describes each row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnnrepro import models
from bnnrepro.config import validate
from bnnrepro.models.googlenet import BLOCKS, AuxiliaryHead, Inception, auxiliary_logits
from bnnrepro.nn import QuantConv2d, QuantLinear
from bnnrepro.quant import QuantScheme
from bnnrepro.report import commands, summary, targets
from bnnrepro.train.factory import build_model
from conftest import compose

QNN_TARGETS = Path(__file__).resolve().parents[1] / "bnnrepro" / "report" / "targets" / "qnn.yaml"
ROWS = {row.id: list(row.overrides)
        for table in targets.load(QNN_TARGETS).tables if table.id == "googlenet" for row in table.rows}
# the bits each row's hidden layers get (weights, activations, gradients): the preset's 4/4/6, BNN's
# 1/1 with float gradients, float
ROW_BITS = {"bnn": (1, 1, 32), "qnn-4bit": (4, 4, 6), "float": (32, 32, 32)}
# Szegedy et al. 2015, Table 1, the "output size" column's depths of 3a ... 5b
TABLE1_DEPTHS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]
FLOAT = {"weight": "identity", "activation": "dorefa_activation", "a_bits": 32}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: torch's thread pool costs more than it gives, most on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_row_has_overrides_on_the_preset():
    assert sorted(ROWS) == sorted(ROW_BITS)
    assert all(o[0] == "+experiment=qnn_googlenet" for o in ROWS.values())


def _smoke(row):
    cfg = compose(ROWS[row] + ["data=mnist", "scale=smoke"])
    validate(cfg)
    return cfg, build_model(cfg, (1, 28, 28), 10)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


@pytest.mark.parametrize("row", sorted(ROW_BITS))
def test_row_builds_at_smoke_scale_and_takes_a_training_step(row):
    cfg, model = _smoke(row)
    assert cfg.model.name == "googlenet" and cfg.data.name == "mnist"
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    model.train()
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = [m.weight.grad for m in _convs(model)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads[1:-1])  # the gradient reaches the quantized layers
    model.eval()
    assert model(x).shape == (4, 10)


@pytest.mark.parametrize("row", sorted(ROW_BITS))
def test_row_quantizers_sit_where_the_scheme_says(row):
    _, model = _smoke(row)
    w_bits, a_bits, g_bits = ROW_BITS[row]
    layers = _convs(model)
    first, hidden, last = layers[0], layers[1:-1], layers[-1]
    # the stem's 3 convs + 9 blocks x 6 convs + the FC
    assert len(layers) == 3 + 6 * sum(1 for b in BLOCKS if b != "pool") + 1
    # QNN: the first and last layers in higher precision (float weights, no gradient quantizer)
    assert isinstance(first, QuantConv2d) and first.weight_quantizer.precision == 32
    assert first.grad_quantizer.precision == 32 and first.input_quantizer.precision == 32
    assert isinstance(last, QuantLinear) and last.weight_quantizer.precision == 32
    assert last.grad_quantizer.precision == 32 and last.bias is not None
    assert {m.weight_quantizer.precision for m in hidden} == {w_bits}
    assert {m.grad_quantizer.precision for m in hidden} == {g_bits}
    attached = {id(q) for layer in layers for q in layer.children()}
    acts = [m for m in model.modules() if getattr(type(m), "registry_name", None) and id(m) not in attached]
    assert len(acts) == len(layers) - 1 and {a.precision for a in acts} == {a_bits}


def test_inception_blocks_concatenate_their_branches_with_table1_depths():
    model = models.build("googlenet", input_shape=(3, 64, 64), num_classes=10, quant=QuantScheme.from_config(FLOAT))
    blocks = [m for m in model if isinstance(m, Inception)]
    assert len(blocks) == len(TABLE1_DEPTHS)
    depths = []
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        for stage in model:
            if isinstance(stage, Inception):
                outs = [branch(x) for branch in stage.branches]
                y = stage(x)
                assert y.shape[1] == sum(o.shape[1] for o in outs)
                assert all(o.shape[2:] == x.shape[2:] for o in outs)  # every branch keeps the size
                depths.append(y.shape[1])
            x = stage(x)
    assert depths == TABLE1_DEPTHS
    assert x.shape == (1, 10)


def test_width_mult_scales_every_branch():
    model = models.build("googlenet", input_shape=(3, 32, 32), num_classes=10, width_mult=0.25)
    block = next(m for m in model if isinstance(m, Inception))
    assert [b[-3].out_channels for b in block.branches] == [16, 32, 8, 8]  # 3a: 64, 128, 32, 32 / 4


def test_full_width_float_net_has_the_published_size():
    """Table 1 of Szegedy et al. sums its per-layer weights to 6.8 M (rounded per row); the exact
    count of those conv/FC weights with true 5x5 convs is 6.99 M. BN (2 per channel) and the FC's
    1000 biases add about 16 k. torchvision's googlenet (6.62 M) is below the range: its "5x5"
    branch is a 3x3."""
    with torch.device("meta"):
        model = models.build("googlenet", input_shape=(3, 224, 224), num_classes=1000,
                             quant=QuantScheme.from_config(FLOAT))
    weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
    total = sum(p.numel() for p in model.parameters())
    assert 6.8e6 <= weights <= 7.0e6
    assert 0 < total - weights < 0.03e6
    with torch.device("meta"):
        aux = models.build("googlenet", input_shape=(3, 224, 224), num_classes=1000, aux_classifiers=True,
                           quant=QuantScheme.from_config(FLOAT))
    # two heads: conv 512|528 -> 128, FC 128*4*4 -> 1024, FC 1024 -> 1000 (about 3.2 M each)
    extra = sum(p.numel() for p in aux.parameters()) - total
    assert 6.2e6 <= extra <= 6.5e6


def test_auxiliary_heads_leave_their_logits_in_training_only():
    model = models.build("googlenet", input_shape=(3, 64, 64), num_classes=10, width_mult=0.125,
                         aux_classifiers=True)
    heads = [m for m in model if isinstance(m, AuxiliaryHead)]
    assert len(heads) == 2
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)
    logits = auxiliary_logits(model)
    assert out.shape == (2, 10) and [tuple(t.shape) for t in logits] == [(2, 10), (2, 10)]
    model.eval()
    model(x)
    assert auxiliary_logits(model) == []
    assert not any(isinstance(m, AuxiliaryHead) for m in models.build(
        "googlenet", input_shape=(3, 64, 64), num_classes=10, width_mult=0.125))


def test_packed_engine_sees_blocks_and_the_summary_sees_their_layers():
    model = models.build("googlenet", input_shape=(1, 28, 28), num_classes=10, width_mult=0.0625)
    plain = [type(m) for _, m in models.stages(model)]
    walked = models.stages(model, branches=True)
    assert plain.count(Inception) == 9 and not any(isinstance(m, Inception) for _, m in walked)
    assert sum(isinstance(m, QuantConv2d) for _, m in walked) == 3 + 9 * 6
    names = dict(model.named_modules())
    assert all(names[n] is m for n, m in walked)  # the names are the modules' paths


@pytest.mark.parametrize("row", sorted(ROW_BITS))
def test_summary_of_each_row(row, capsys):
    pack = [] if row == "bnn" else ["--no-pack"]  # the binary row tries the packed engine: a block it cannot pack
    assert commands.summary_main(ROWS[row] + ["scale=smoke", "--json", "-"] + pack) == 0
    data = json.loads(capsys.readouterr().out)
    if row == "bnn":
        assert data["packed_bytes"] is None and data["packed_note"].startswith("does not pack")
    w_bits, a_bits, _ = ROW_BITS[row]
    name = {1: "binary", 32: "float32"}.get(w_bits, f"{w_bits}-bit")
    assert data["input_shape"] == [3, 224, 224] and set(data["params"]) <= {name, "float32"}
    assert data["params"][name] > 0
    convs = [l for l in data["layers"] if l["kind"] == "QuantConv2d"]
    assert convs[0]["input_bits"] == 32 and convs[0]["weight_bits"] == 32
    # every hidden conv, the pool branches' and each branch's first included, reads a_bits activations
    assert {l["input_bits"] for l in convs[1:]} == {a_bits}
    fc = data["layers"][-1]
    assert fc["kind"] == "QuantLinear" and fc["input_bits"] == 32 and fc["output_shape"] == [1000]


def test_summary_starts_each_branch_from_the_block_input_bits():
    # float activations at 5b's outputs (the last layer's input): the next branch of 5b still reads
    # the 2-bit activations of 5a, not the float output of the branch listed before it
    quant = QuantScheme.from_config({"weight": "qnn_linear", "w_bits": 2, "activation": "qnn_linear", "a_bits": 2,
                                     "last_input": "identity"})
    model = models.build("googlenet", input_shape=(1, 28, 28), num_classes=10, width_mult=0.0625, quant=quant)
    s = summary.profile(model, (1, 28, 28))
    last_block = str(max(i for i, m in enumerate(model) if isinstance(m, Inception)))
    convs = [l for l in s.layers if l.kind == "QuantConv2d" and l.name.startswith(last_block + ".")]
    firsts = [next(l for l in convs if l.name.startswith(f"{last_block}.branches.{i}.")) for i in range(4)]
    assert [l.in_bits for l in firsts] == [2, 2, 2, 2]
    assert s.layers[-1].kind == "QuantLinear" and s.layers[-1].in_bits == 32
