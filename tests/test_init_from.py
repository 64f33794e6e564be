"""train.init_from: a quantized run starts from a float run's weights (and BatchNorm statistics)."""
import json

import pytest
import torch

from bnnrepro import runs
from bnnrepro.config import validate
from bnnrepro.errors import ConfigError
from bnnrepro.train import fit, loop
from conftest import compose

TINY = ["+paper=bnn", "scale=smoke", "scale.train_subset=300", "scale.epochs=1", "data.val_size=1000",
        "train.num_threads=1", "train.progress=false"]


@pytest.fixture
def float_run(mnist_root, runs_dir):
    return fit(compose(TINY + [f"data.root={mnist_root}", "quant=float", "run_name=float"]))


def test_quantized_run_starts_from_the_float_weights(float_run, mnist_root, runs_dir, monkeypatch):
    started = {}
    build_optimizer = loop.build_optimizer

    def spy(model, optim_cfg):  # the weights the optimizer is built on: those the run starts from
        started.update({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return build_optimizer(model, optim_cfg)

    monkeypatch.setattr(loop, "build_optimizer", spy)
    run = fit(compose(TINY + [f"data.root={mnist_root}", f"train.init_from={float_run}", "run_name=bnn"]))
    source = runs.load_checkpoint(float_run / runs.BEST)
    assert set(started) == set(source["model"])
    assert any("running_mean" in k for k in started)  # BatchNorm statistics loaded too
    for key, value in source["model"].items():
        assert torch.equal(started[key], value), key
    record = json.loads((run / "summary.json").read_text())["init_from"]
    assert record["path"] == str(float_run / runs.BEST)
    assert record["seed"] == 0 and record["config_hash"] == source["config_hash"]
    assert json.loads((run / "summary.json").read_text())["quantizer"]["weight"] != "identity"


def test_shape_mismatch_names_the_layer_and_leaves_no_run(float_run, mnist_root, runs_dir, monkeypatch):
    def no_epoch(*args, **kwargs):
        raise AssertionError("an epoch ran")

    monkeypatch.setattr(loop, "epoch_order", no_epoch)
    with pytest.raises(ConfigError, match=r"train\.init_from: layer \S+ has shape \(256, 784\) there, "
                                          r"\(512, 784\) here"):
        fit(compose(TINY + [f"data.root={mnist_root}", f"train.init_from={float_run}", "scale.width_mult=0.125",
                            "run_name=wide"]))
    assert sorted(p.name for p in runs_dir.iterdir()) == ["float"]


@pytest.mark.parametrize("where", ["missing", "empty_dir"])
def test_a_path_without_a_checkpoint_is_refused_by_validation(tmp_path, where):
    path = tmp_path / where
    if where == "empty_dir":
        path.mkdir()
    with pytest.raises(ConfigError, match=rf"train\.init_from=.*{where}"):
        validate(compose(TINY + [f"train.init_from={path}"]))


def test_init_from_is_refused_beside_resume():
    with pytest.raises(ConfigError, match=r"train\.init_from=x"):
        loop._resume_overrides(["resume=runs/a", "train.init_from=x"])
