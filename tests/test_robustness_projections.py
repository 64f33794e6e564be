"""Merolla et al.'s training projections: closed forms, the straight-through gradient contract,
which layers clip latent weights, and the +experiment=merolla_* presets."""
import math

import pytest
import torch
import torch.nn.functional as F

from bnnrepro import quant
from bnnrepro.nn import QuantLayer, QuantLinear
from bnnrepro.optim.build import param_groups
from bnnrepro.quant.projections import expected_power
from bnnrepro.train.factory import build_model
from conftest import compose

W = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])


def _grad_through(q, w):
    w = w.clone().requires_grad_(True)
    g = torch.arange(1.0, w.numel() + 1).view_as(w)
    (q(w) * g).sum().backward()
    return w.grad, g


@pytest.mark.parametrize("name,kwargs,expected", [
    ("clip", {}, [-1.0, -0.5, 0.0, 0.5, 1.0]),
    ("clip", {"c": 0.25}, [-0.25, -0.25, 0.0, 0.25, 0.25]),
    ("power", {"beta": 0.5}, [-1.0, -0.5, 0.0, 0.5, 1.0]),   # |w/2|^0.5: 1, 0.5, 0
    ("power", {"beta": 1.0}, [-1.0, -0.25, 0.0, 0.25, 1.0]),  # normalised identity
    ("power", {"beta": 0.0}, [-1.0, -1.0, 1.0, 1.0, 1.0]),    # sign, sign(0) = +1
    ("power", {"beta": 2.0, "norm": "none"}, [-4.0, -0.25, 0.0, 0.25, 4.0]),
])
def test_projection_closed_forms_and_straight_through_gradient(name, kwargs, expected):
    q = quant.build(name, **kwargs)
    assert torch.equal(q(W), torch.tensor(expected))
    grad, g = _grad_through(q, W)
    assert torch.equal(grad, g)  # BinaryConnect: dL/dw := dL/dP(w), also where P saturates


def test_clipping_flags_of_the_training_projections():
    # none keeps its latent weights free; every projection of the paper's family is trained with
    # BinaryConnect's clipping (and Glorot LR scale) unless clip_latent=False says otherwise
    flags = {name: quant.build(name).clips_latent_weights
             for name in ("identity", "clip", "sign", "stochastic_binary", "power", "stochastic_projection")}
    assert flags == {"identity": False, "clip": True, "sign": True, "stochastic_binary": True, "power": True,
                     "stochastic_projection": True}
    assert not quant.build("power", clip_latent=False).clips_latent_weights
    assert not quant.build("stochastic_projection", clip_latent=False).clips_latent_weights
    assert all(quant.build(n).precision == 32 for n in ("clip", "power", "stochastic_projection", "relu"))


def test_relu_activation():
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    y = quant.build("relu")(x)
    y.sum().backward()
    assert torch.equal(y, torch.tensor([0.0, 0.0, 2.0])) and torch.equal(x.grad, torch.tensor([0.0, 0.0, 1.0]))


def test_expected_power_closed_form():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    got = expected_power(t, 0.0, 1.0)
    want = [0.0, (0.25 - 1) / math.log(0.25), (0.5 - 1) / math.log(0.5), 1.0]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert torch.allclose(expected_power(t, 0.5, 0.5), t.pow(0.5))
    # numerical integral over beta
    betas = torch.linspace(0.2, 0.7, 20001)
    numeric = torch.trapezoid(0.3 ** betas, betas) / 0.5
    assert float(expected_power(torch.tensor([0.3]), 0.2, 0.7)) == pytest.approx(float(numeric), rel=1e-5)


def test_stochastic_projection_uniform_samples_the_power_family_and_evals_its_mean():
    q = quant.build("stochastic_projection")
    q.generator = torch.Generator().manual_seed(0)
    w = torch.tensor([-0.8, -0.2, 0.0, 0.1, 0.4]).repeat(20000, 1)
    q.train()
    samples = q(w)
    t = w.abs() / 0.8
    assert torch.equal(torch.sign(samples[:, [0, 1, 3, 4]]), torch.sign(w[:, [0, 1, 3, 4]]))
    assert bool(((samples.abs() >= t - 1e-6) & (samples.abs() <= 1 + 1e-6)).all())  # t^1 <= t^beta <= t^0
    assert len(torch.unique(samples[:, 1])) > 1000  # a fresh beta per weight and per call
    q.eval()
    mean = q(w[:1])
    assert torch.allclose(samples.mean(0), mean[0], atol=0.01)  # eval = E over beta (Monte Carlo)
    grad, g = _grad_through(q.train(), w[:3])
    assert torch.equal(grad, g)


def test_stochastic_projection_bernoulli_mixes_sign_and_identity():
    q = quant.build("stochastic_projection", beta="bernoulli", p=0.3)
    q.generator = torch.Generator().manual_seed(1)
    w = torch.full((100000,), 0.25)
    w[0] = 1.0  # the layer max: t = 0.25 elsewhere
    out = q.train()(w)[1:]
    assert set(out.unique().tolist()) == {0.25, 1.0}
    assert float((out == 1.0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert float(q.eval()(w)[1]) == pytest.approx(0.3 + 0.7 * 0.25)


def test_stochastic_projection_generator_reproducible():
    w = torch.randn(64, 32)
    outs = []
    for _ in range(2):
        q = quant.build("stochastic_projection")
        q.generator = torch.Generator().manual_seed(5)
        outs.append(q.train()(w))
    assert torch.equal(*outs)


def test_stochastic_binary_samples_hard_sigmoid_and_evals_its_expectation():
    q = quant.build("stochastic_binary")
    q.generator = torch.Generator().manual_seed(2)
    w = torch.tensor([-1.0, -0.5, 0.0, 0.6, 1.0]).repeat(40000, 1)
    samples = q.train()(w)
    assert set(samples.unique().tolist()) == {-1.0, 1.0}
    p_plus = (samples == 1).float().mean(0)
    assert torch.allclose(p_plus, torch.tensor([0.0, 0.25, 0.5, 0.8, 1.0]), atol=0.01)  # hard_sigmoid(w)
    assert torch.equal(q.eval()(torch.tensor([-1.5, -0.5, 0.0, 0.6, 1.5])),
                       torch.tensor([-1.0, -0.5, 0.0, 0.6, 1.0]))  # E[P(w)] = clip(w, -1, 1)
    assert torch.equal(quant.build("stochastic_binary", eval_mode="sign").eval()(w[0]),
                       torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))
    grad, g = _grad_through(q.train(), w[0])
    assert torch.equal(grad, g)  # |w| <= 1: the straight-through gradient is never cancelled
    grad, g = _grad_through(q.eval(), w[0])
    assert torch.equal(grad, g)


@pytest.mark.parametrize("name,kwargs,message", [
    ("power", {"beta": -1.0}, "beta=-1.0 must be >= 0"),
    ("power", {"norm": "l2"}, "norm='l2' is unknown; allowed: max, none"),
    ("clip", {"c": 0.0}, "c=0.0 must be > 0"),
    ("stochastic_projection", {"beta": "gauss"}, "beta='gauss' is unknown; allowed: uniform, bernoulli"),
    ("stochastic_projection", {"beta_min": 0.8, "beta_max": 0.2}, "beta_min <= beta_max"),
    ("stochastic_projection", {"p": 1.5}, "p=1.5 must be in"),
    ("stochastic_binary", {"eval_mode": "median"}, "eval_mode='median' is unknown; allowed: mean, sign, sample"),
])
def test_bad_projection_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quant.build(name, **kwargs)


def test_layer_gradient_is_the_gradient_at_the_projected_weight():
    torch.manual_seed(0)
    layer = QuantLinear(6, 4, weight_quantizer=("power", {"beta": 0.5}))
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    projected = layer.quantized_weight().detach().requires_grad_(True)
    F.linear(x, projected).pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, projected.grad)


PROJECTIONS = {"none": "identity", "clip": "clip", "sign": "sign", "stochastic_binary": "stochastic_binary",
               "power": "power", "stochastic_projection": "stochastic_projection"}


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_merolla_presets_build_the_projected_mlp(projection):
    cfg = compose([f"+experiment=merolla_{projection}", "scale=quick"])
    assert (cfg.paper, cfg.experiment, cfg.quant.weight) == ("merolla", f"merolla_{projection}",
                                                            PROJECTIONS[projection])
    assert cfg.quant.activation == "relu" and cfg.data.name == "mnist"
    model = build_model(cfg, (1, 28, 28), 10)
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    assert [m.out_features for m in layers] == [512, 512, 512, 10]  # quick: x0.25 of 3x2048
    assert all(m.weight_quantizer.registry_name == PROJECTIONS[projection] for m in layers)
    groups = param_groups(model, 1e-3, "glorot")
    scaled = [g for g in groups if g["name"] != "rest"]
    assert len(scaled) == (0 if projection == "none" else 4)


def test_paper_merolla_is_the_sign_preset_and_cifar_preset_composes():
    assert compose(["+paper=merolla"]).experiment == "merolla_sign"
    cfg = compose(["+experiment=merolla_cifar10", "quant.weight=stochastic_projection"])
    assert (cfg.data.name, cfg.model.name, cfg.data.preprocessing) == ("cifar10", "bnn_convnet", "zca")
    model = build_model(cfg, (3, 32, 32), 10)
    assert sum(isinstance(m, QuantLayer) for m in model.modules()) == 9


def test_training_treatment_labels_name_what_differs_from_the_projection_default():
    from bnnrepro.robustness.weights import projection_label

    base = ["scale=quick"]
    label = {e: projection_label(compose([f"+experiment=merolla_{e}", *base]))
             for e in ("none", "none_scaled", "clip", "clip_plain", "sign")}
    assert label == {"none": "none", "none_scaled": "none+scaled", "clip": "clip", "clip_plain": "clip+plain",
                     "sign": "sign"}
    assert projection_label(compose(["+experiment=merolla_none", "model.init=uniform1", *base])) == \
        "none[init=uniform1, lr_scale=off]"
    assert projection_label(compose(["+experiment=merolla_sign", "optim.clip_latent=false", *base])) == \
        "sign[no latent clipping]"


def test_lr_scale_layers_all_scales_every_quantized_layer():
    model = build_model(compose(["+experiment=merolla_none", "scale=smoke"]), (1, 28, 28), 10)  # 3 hidden + output
    assert [g["name"] for g in param_groups(model, 1e-3, "glorot")] == ["rest"]  # nothing clips
    groups = param_groups(model, 1e-3, "glorot", layers="all")
    scaled = [g for g in groups if g["name"] != "rest"]
    assert len(scaled) == 4 and all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) and g["lr_scale"] > 1
                                    for g in scaled)
    with pytest.raises(ValueError, match="lr_scale_layers='some' is unknown; allowed: clipping, all"):
        param_groups(model, 1e-3, "glorot", layers="some")
