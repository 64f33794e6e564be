"""Every preset composes from the real configs; validation names the field and the allowed values."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnnrepro.config import ConfigError, validate
from bnnrepro.config import effective_epochs, effective_width_mult
from bnnrepro.train.factory import build_model
from conftest import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = [f"+paper={p.stem}" for p in sorted((CONF / "paper").glob("*.yaml"))] + [
    f"+experiment={p.stem}" for p in sorted((CONF / "experiment").glob("*.yaml"))]


# presets that compose but cannot train yet: validation must say why, before any data is loaded
NOT_TRAINABLE: dict[str, str] = {}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_every_preset_composes_and_validates(preset, scale):
    cfg = compose([preset, f"scale={scale}"])
    assert cfg.scale.name == scale
    assert cfg.experiment and cfg.paper
    if preset in NOT_TRAINABLE:
        with pytest.raises(ConfigError, match=NOT_TRAINABLE[preset]):
            validate(cfg)
    else:
        validate(cfg)


def test_paper_bnn_is_the_theano_mnist_protocol():
    cfg = compose(["+paper=bnn"])
    assert (cfg.data.name, cfg.model.name, list(cfg.model.hidden)) == ("mnist", "mlp", [4096] * 3)
    assert (cfg.model.dropout_in, cfg.model.dropout_hidden) == (0.2, 0.5)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.lr_final, cfg.optim.schedule) == (
        "adam", 3e-3, 3e-7, "exponential")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.loss) == (1000, 100, "squared_hinge")
    assert (cfg.quant.weight, cfg.quant.activation) == ("sign", "sign")
    assert cfg.data.val_size == 10000 and cfg.scale.name == "paper"
    assert effective_epochs(cfg) == 1000 and effective_width_mult(cfg) == 1.0


def test_scale_shrinks_and_is_recorded():
    cfg = compose(["+paper=bnn", "scale=quick"])
    assert effective_epochs(cfg) == cfg.scale.epochs < cfg.train.epochs
    model = build_model(cfg, (1, 28, 28), 10)
    assert model[2].out_features == int(4096 * cfg.scale.width_mult)


def test_float_baseline_by_identity_quantizer():
    cfg = compose(["+paper=bnn", "quant.weight=identity", "quant.activation=htanh"])
    validate(cfg)
    model = build_model(cfg, (1, 28, 28), 10)
    assert not any(getattr(m, "binary_weights", False) for m in model.modules())


BAD = [
    (["data.name=cifar100"], r"data.name='cifar100' is unknown; allowed: .*mnist"),
    (["model.name=resnet50"], r"model.name='resnet50' is unknown; allowed: .*mlp"),
    (["quant.weight=sgn"], r"quant.weight='sgn' is unknown; allowed: .*sign"),
    (["quant.activation=relu6"], r"quant.activation='relu6' is unknown"),
    (["optim.name=lamb"], r"optim.name='lamb' is not allowed; allowed: adam"),
    (["train.epochs=0"], r"train.epochs=0 must be a positive"),
    (["train.epochs=-3"], r"train.epochs=-3 must be a positive"),
    (["train.batch_size=0"], r"train.batch_size=0 must be a positive"),
    (["quant.w_bits=3"], r"quant.w_bits=3 is not valid for quantizer 'sign'; allowed: 1"),
    (["quant.w_bits=9", "quant.weight=identity"], r"quant.w_bits=9 is not valid"),
    (["model.dropout_in=1.0"], r"model.dropout_in=1.0 must be in \[0, 1\)"),
    (["model.dropout_hidden=-0.1"], r"model.dropout_hidden=-0.1 must be in \[0, 1\)"),
    (["optim.lr=0"], r"optim.lr=0.0 must be a positive"),
    (["optim.schedule=cosine"], r"optim.schedule='cosine' is not allowed"),
    (["train.loss=mse"], r"train.loss='mse' is not allowed; allowed: squared_hinge"),
    (["data.preprocessing=pca"], r"data.preprocessing='pca' is not allowed; allowed: scale"),
    (["device=tpu"], r"device='tpu' is not allowed; allowed: cpu"),
    (["model.variant=B"], r"model.variant='B' is not used by model 'mlp'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_name_the_field(overrides, message):
    cfg = compose(["+paper=bnn"] + overrides)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_typed_schema_rejects_wrong_types():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="train.epochs"):
        compose(["train.epochs=many"])


def test_resolved_config_roundtrips_through_yaml(tmp_path):
    cfg = compose(["+paper=bnn", "scale=smoke"])
    OmegaConf.save(cfg, tmp_path / "c.yaml", resolve=True)
    again = OmegaConf.load(tmp_path / "c.yaml")
    validate(again)
    assert again.model.hidden == cfg.model.hidden
