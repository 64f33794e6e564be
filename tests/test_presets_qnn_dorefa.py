"""QNN and DoReFa presets, their table-row lists, the MLP's DoReFa conventions, the grid scripts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from bnnrepro import models
from bnnrepro.config import ConfigError, validate
from bnnrepro.nn import QuantConv2d, QuantLinear
from bnnrepro.quant import DoReFaActivation, DoReFaGradient, Identity, QnnGradient, QnnLinear, QnnLog
from bnnrepro.train import fit
from bnnrepro.train.factory import build_model
from conftest import compose

REPO = Path(__file__).resolve().parents[1]
TARGETS = REPO / "bnnrepro" / "report" / "targets"  # the papers' tables, rows as presets + overrides
TRAINABLE = ["+paper=qnn", "+paper=dorefa"] + [f"+experiment={e}" for e in (
    "dorefa_svhn_A", "dorefa_svhn_B", "dorefa_svhn_C", "dorefa_svhn_D", "dorefa_alexnet", "dorefa_mnist_mlp",
    "qnn_mnist_mlp", "qnn_mnist_theano", "qnn_alexnet", "qnn_googlenet")]
LM_PRESETS = [f"+experiment=qnn_ptb_{cell}" for cell in ("lstm", "gru", "rnn")]


def here(preset: str) -> list[str]:
    """The overrides that make a preset run on the data of this machine (MNIST)."""
    return [preset, "data=mnist", "scale=smoke"] + (["data.image_size=64"] if "alexnet" in preset else [])


def input_shape(cfg) -> tuple[int, int, int]:
    size = cfg.data.image_size or 28
    return (1, size, size)


def quant_layers(model):
    return [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]


def activations(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


# ---------------------------------------------------------------- presets compose, validate, build

@pytest.mark.parametrize("preset", TRAINABLE)
@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_presets_compose_and_validate(preset, scale):
    cfg = compose([preset, f"scale={scale}"])
    assert cfg.paper in ("qnn", "dorefa") and cfg.experiment
    validate(cfg)


@pytest.mark.parametrize("preset", TRAINABLE)
def test_data_and_scale_overrides_make_every_preset_runnable_here(preset):
    cfg = compose(here(preset))
    validate(cfg)
    assert cfg.data.name == "mnist" and not cfg.data.use_extra  # data=mnist replaces SVHN's train+extra
    model = build_model(cfg, input_shape(cfg), 10)
    x = torch.rand(3, *input_shape(cfg)) * 2 - 1
    y = model(x)
    y.square().mean().backward()
    assert y.shape == (3, 10) and torch.isfinite(y).all()


def test_paper_presets_are_their_experiments():
    dorefa = compose(["+paper=dorefa"])
    assert (dorefa.experiment, dorefa.model.name, dorefa.model.variant) == ("dorefa_svhn_A", "dorefa_svhn", "A")
    assert (dorefa.quant.w_bits, dorefa.quant.a_bits, dorefa.quant.g_bits) == (1, 2, 4)
    assert (dorefa.data.name, dorefa.data.use_extra, dorefa.data.image_size) == ("svhn", True, 40)
    assert (dorefa.optim.name, dorefa.optim.lr, dorefa.optim.eps, dorefa.train.loss) == (
        "adam", 1e-3, 1e-5, "cross_entropy")
    assert (dorefa.train.batch_size, dorefa.train.epochs, dorefa.optim.step_epochs) == (128, 200, 100)
    qnn = compose(["+paper=qnn"])
    theano = compose(["+experiment=bnn_mnist_theano"])
    assert qnn.experiment == "qnn_mnist_theano" and qnn.paper == "qnn"
    assert (qnn.quant.weight, qnn.quant.w_bits, qnn.quant.activation, qnn.quant.a_bits) == (
        "qnn_linear", 1, "qnn_linear", 1)
    # BNN's Theano MNIST protocol apart from the quantizers' names (qnn_linear at 1 bit is BNN's sign)
    for section in ("model", "optim", "train", "data"):
        assert qnn[section] == theano[section], section


@pytest.mark.parametrize("variant, mult", [("B", 0.5), ("C", 0.25), ("D", 0.125)])
def test_svhn_models_b_c_d_inherit_model_a(variant, mult):
    a, v = compose(["+experiment=dorefa_svhn_A"]), compose([f"+experiment=dorefa_svhn_{variant}"])
    assert v.model.variant == variant and v.experiment == f"dorefa_svhn_{variant}"
    assert (v.optim, v.train, v.quant, v.data) == (a.optim, a.train, a.quant, a.data)
    convs = [m for m in quant_layers(build_model(v, (3, 40, 40), 10)) if isinstance(m, QuantConv2d)]
    assert convs[1].out_channels == round(64 * mult)


@pytest.mark.parametrize("preset", LM_PRESETS)
def test_lm_presets_validate(preset):
    for scale in ("smoke", "paper"):
        validate(compose([preset, f"scale={scale}"]))  # the language-model loop trains them (tests/test_lm.py)


def test_lm_preset_without_its_data_fails_before_a_run_directory_exists(runs_dir, tmp_path):
    from bnnrepro.data import DataError

    with pytest.raises(DataError, match=r"ptb\.\{train,valid,test\}\.txt not found"):
        fit(compose(["+experiment=qnn_ptb_lstm", f"data.root={tmp_path}"]))
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


# ---------------------------------------------------------------- bit overrides reach the quantizers

@pytest.mark.parametrize("w, a, g", [(1, 2, 4), (2, 3, 6), (8, 8, 8), (32, 32, 32)])
def test_dorefa_svhn_bits_land_in_the_model(w, a, g):
    cfg = compose(["+paper=dorefa", f"quant.w_bits={w}", f"quant.a_bits={a}", f"quant.g_bits={g}"])
    validate(cfg)
    layers = quant_layers(build_model(cfg, (3, 40, 40), 10))
    first, middle, last = layers[0], layers[1:-1], layers[-1]
    assert isinstance(first.weight_quantizer, Identity) and isinstance(last.weight_quantizer, Identity)
    assert [m.weight_quantizer.precision for m in middle] == [w] * 6
    assert [m.grad_quantizer.precision for m in middle] == [g] * 6
    assert all(isinstance(m.grad_quantizer, DoReFaGradient) for m in middle)
    acts = activations(build_model(cfg, (3, 40, 40), 10), DoReFaActivation)
    assert [q.precision for q in acts] == [a] * 6 + [32]


@pytest.mark.parametrize("w, a, g", [(1, 2, 4), (1, 1, 2), (2, 2, 4), (8, 8, 8), (32, 32, 32)])
def test_dorefa_mnist_mlp_follows_dorefa_conventions(w, a, g):
    cfg = compose(["+experiment=dorefa_mnist_mlp", "scale=quick", f"quant.w_bits={w}", f"quant.a_bits={a}",
                   f"quant.g_bits={g}"])
    validate(cfg)
    model = build_model(cfg, (1, 28, 28), 10)
    layers = quant_layers(model)
    assert [m.out_features for m in layers] == [256, 256, 256, 10]  # 3x1024 at x0.25
    first, middle, last = layers[0], layers[1:-1], layers[-1]
    # first and last layer entirely float: float weights, no gradient quantizer
    for m in (first, last):
        assert isinstance(m.weight_quantizer, Identity) and isinstance(m.grad_quantizer, Identity)
    assert [m.weight_quantizer.precision for m in middle] == [w, w]
    assert [m.grad_quantizer.precision for m in middle] == [g, g]
    acts = activations(model, DoReFaActivation)
    assert [q.precision for q in acts] == [a, a, 32]  # the last layer's input: clipped, not quantized
    assert all(q.nonlin == "clip" for q in acts)
    x = torch.randn(4, 1, 28, 28)
    if a == 32:  # ReLU-like at A = 32
        h = model[:4](x)
        assert torch.equal(acts[0](h), torch.relu(h))
    assert cfg.train.loss == "cross_entropy" and cfg.optim.name == "adam"


@pytest.mark.parametrize("kind, cls", [("qnn_linear", QnnLinear), ("qnn_log", QnnLog)])
@pytest.mark.parametrize("bits", [2, 4])
def test_qnn_mnist_mlp_bits_and_kind_land_in_the_model(kind, cls, bits):
    cfg = compose(["+experiment=qnn_mnist_mlp", f"quant.weight={kind}", f"quant.activation={kind}",
                   f"quant.w_bits={bits}", f"quant.a_bits={bits}", "quant.g_bits=6"])
    validate(cfg)
    model = build_model(cfg, (1, 28, 28), 10)
    layers = quant_layers(model)
    assert all(isinstance(m.weight_quantizer, cls) and m.weight_quantizer.precision == bits for m in layers)
    acts = [m for m in model if isinstance(m, cls)]
    assert [q.precision for q in acts] == [bits] * 3  # BNN convention: every hidden activation quantized
    assert [type(m.grad_quantizer) for m in layers] == [QnnGradient] * 3 + [Identity]
    assert [m.grad_quantizer.precision for m in layers[:3]] == [6] * 3


def test_qnn_alexnet_bits_and_float_first_last():
    cfg = compose(["+experiment=qnn_alexnet", "quant.a_bits=1", "data=mnist", "data.image_size=64", "scale=smoke"])
    validate(cfg)
    model = build_model(cfg, input_shape(cfg), 10)
    layers = quant_layers(model)
    assert isinstance(layers[0].weight_quantizer, Identity) and isinstance(layers[-1].weight_quantizer, Identity)
    assert all(m.weight_quantizer.precision == 1 for m in layers[1:-1])
    assert [q.precision for q in model if isinstance(q, QnnLinear)] == [1] * 7  # the activation stages


def test_qnn_alexnet_6_bit_gradients_on_the_hidden_layers():
    cfg = compose(["+experiment=qnn_alexnet", "quant.gradient=qnn_gradient", "quant.g_bits=6", "data=mnist",
                   "data.image_size=64", "scale=smoke"])
    validate(cfg)
    layers = quant_layers(build_model(cfg, input_shape(cfg), 10))
    # the float first and last layers (first_weight/last_weight set) have no gradient quantizer
    assert [type(m.grad_quantizer) for m in layers] == [Identity] + [QnnGradient] * 6 + [Identity]
    assert {m.grad_quantizer.precision for m in layers[1:-1]} == {6}


def test_qnn_mnist_theano_default_is_bnn():
    cfg = compose(["+paper=qnn", "scale=smoke"])
    model = build_model(cfg, (1, 28, 28), 10)
    assert all(m.binary_weights and m.clips_latent_weights for m in quant_layers(model))
    x = torch.linspace(-2, 2, 9)
    act = activations(model, QnnLinear)[0]
    assert torch.equal(act(x), torch.where(x >= 0, 1.0, -1.0))


# ---------------------------------------------------------------- bad values fail before training

BAD = [
    (["+paper=dorefa", "quant.w_bits=9"], r"quant.w_bits=9 is not valid for quantizer 'dorefa_weight'; allowed: 1, 2"),
    (["+paper=dorefa", "quant.a_bits=0"], r"quant.a_bits=0 is not valid for quantizer 'dorefa_activation'"),
    (["+paper=dorefa", "quant.g_bits=16"], r"quant.g_bits=16 is not valid for quantizer 'dorefa_gradient'"),
    (["+paper=qnn", "quant.w_bits=12"], r"quant.w_bits=12 is not valid for quantizer 'qnn_linear'"),
    (["+experiment=dorefa_mnist_mlp", "quant.weight=dorefa_wieght"], r"quant.weight='dorefa_wieght' is unknown"),
    (["+experiment=qnn_mnist_mlp", "quant.activation=qnn_lin"], r"quant.activation='qnn_lin' is unknown"),
    (["+paper=dorefa", "quant.gradient=dorefa_grad"], r"quant.gradient='dorefa_grad' is unknown"),
    (["+experiment=qnn_alexnet", "quant.g_bits=6"], r"quant.g_bits=6 is not valid for quantizer 'identity'"),
    (["+paper=dorefa", "model.variant=E"], None),  # checked when the model is built (factory error)
]


@pytest.mark.parametrize("overrides, message", [b for b in BAD if b[1]], ids=[" ".join(o) for o, m in BAD if m])
def test_bad_bits_and_names_fail_before_training(overrides, message, runs_dir):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))
    with pytest.raises(ConfigError, match=message):
        fit(compose(overrides + ["data=mnist", "scale=smoke"]))
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # no run directory, no data loaded


# ---------------------------------------------------------------- smoke training on MNIST

SMOKE = ["scale=smoke", "scale.train_subset=500", "scale.epochs=1", "train.progress=false", "train.num_threads=1"]


@pytest.mark.parametrize("preset, bits", [
    ("+paper=dorefa", (1, 2, 4)),
    ("+experiment=dorefa_mnist_mlp", (1, 1, 2)),
    ("+experiment=qnn_mnist_mlp", (4, 4, 32)),
])
def test_smoke_train_completes(preset, bits, mnist_root, runs_dir):
    w, a, g = bits
    cfg = compose([preset, "data=mnist", f"data.root={mnist_root}", f"quant.w_bits={w}", f"quant.a_bits={a}",
                   f"quant.g_bits={g}"] + SMOKE)
    run = fit(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 1
    assert summary["dataset"] == "mnist" and summary["scale"] == "smoke" and summary["train_examples"] == 500
    assert summary["paper"] == cfg.paper and summary["experiment"] == cfg.experiment
    q = summary["quantizer"]
    assert (q["w_bits"], q["a_bits"], q["g_bits"]) == (w, a, g)
    assert 0 <= summary["test_error"] <= 100 and math.isfinite(summary["test_error"])


# ---------------------------------------------------------------- table-row lists

def _table_rows(paper):
    raw = yaml.safe_load((TARGETS / f"{paper}.yaml").read_text())
    return [(t["id"], r) for t in raw["tables"] for r in t["rows"]]


@pytest.mark.parametrize("paper", ["qnn", "dorefa"])
def test_table_rows_parse_in_the_report_format(paper):
    targets = pytest.importorskip("bnnrepro.report.targets")
    t = targets.load(TARGETS / f"{paper}.yaml")
    assert t.paper == paper and t.tables
    for table in t.tables:
        for row in table.rows:
            assert bool(row.overrides) != bool(row.not_reproduced)


def test_table_rows_cover_the_papers_tables():
    dorefa = _table_rows("dorefa")
    svhn = [r for t, r in dorefa if t == "svhn"]
    assert len(svhn) == 15 * 4  # 15 (W, A, G) rows x Models A-D
    anchor = {r["id"]: r["paper"]["value"] for r in svhn}
    assert anchor["A-w1a2g4"] == 0.975 and anchor["D-w1a1g2"] == 0.803 and anchor["A-w32a32g32"] == 0.975
    alexnet = {r["id"]: r for t, r in dorefa if t == "alexnet"}
    assert alexnet["w1a2g6"]["paper"] == {"value": 0.461, "tag": "ABS", "source": "abstract: 46.1% top-1"}
    qnn = {f"{t}/{r['id']}": r for t, r in _table_rows("qnn")}
    assert qnn["alexnet/qnn-w1a2"]["paper"]["tag"] == "ABS"
    assert qnn["table1/theano-mnist"]["overrides"] == ["+experiment=qnn_mnist_theano"]
    assert qnn["ptb/lstm-w4a4"]["overrides"] == ["+experiment=qnn_ptb_lstm"]
    assert "unknown" in qnn["ptb/lstm-other"]["not_reproduced"]


@pytest.mark.parametrize("paper", ["qnn", "dorefa"])
def test_every_runnable_row_composes_validates_and_sets_its_bits(paper):
    for table, row in _table_rows(paper):
        if not row.get("overrides"):
            continue
        cfg = compose(row["overrides"])
        validate(cfg)
        for o in row["overrides"]:
            key, _, value = o.partition("=")
            if key.startswith("quant."):
                assert str(cfg.quant[key.split(".", 1)[1]]) == value, (table, row["id"], o)


def test_every_rows_preset_runs_on_mnist_here():
    """Each preset a row launches, plus data=mnist (and AlexNet's image size), validates: the table's
    rows run here at small scale (the rows differ from their preset only in bit widths). The PTB
    rows' language models need a text corpus: tests/test_lm.py runs them on a generated one."""
    presets = {(table, row["overrides"][0]) for paper in ("qnn", "dorefa") for table, row in _table_rows(paper)
               if row.get("overrides") and "bnn_" not in row["overrides"][0] and table != "ptb"}
    assert len({p for _, p in presets}) == 8
    for table, preset in sorted(presets):
        validate(compose(here(preset)))


# ---------------------------------------------------------------- the acceptance grid (a table target)

def test_grid_rows_are_the_acceptance_grid():
    from bnnrepro.report import targets

    (grid,) = targets.load("quant_grid").tables
    assert grid.name == "quant_grid_mnist" and grid.seeds == (0, 1)
    labels = [(r.labels["quantizer"], r.labels["W"], r.labels["A"], r.labels["G"]) for r in grid.rows]
    dorefa = {(w, a, g) for q, w, a, g in labels if q == "dorefa"}
    assert dorefa == {(32, 32, 32), (1, 32, 32), (1, 1, 32), (1, 2, 32), (1, 2, 4), (1, 2, 6), (1, 1, 2), (2, 2, 4),
                      (8, 8, 8)}
    assert {(q, w) for q, w, a, g in labels if q != "dorefa"} == {("qnn_linear", 2), ("qnn_linear", 4),
                                                                   ("qnn_log", 2), ("qnn_log", 4)}
    assert [c.kind for c in grid.checks] == ["worst", "worse", "within", "within"]
    for r in grid.rows:
        cfg = compose(list(r.overrides) + ["scale=quick"])
        validate(cfg)
        assert (cfg.quant.w_bits, cfg.quant.a_bits) == (r.labels["W"], r.labels["A"])
        assert cfg.scale.width_mult == 0.25 and list(cfg.model.hidden) == [1024] * 3
        assert cfg.data.name == "mnist" and cfg.scale.schedule == "compress"
