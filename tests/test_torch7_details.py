"""The Torch7 protocol details as knobs: the output layer's BN kind, BatchNorm statistics at
evaluation (running or per batch), and the Torch7 MNIST preset that sets them."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bnnrepro import models
from bnnrepro.compose import compose
from bnnrepro.config import ConfigError, model_kwargs, validate
from bnnrepro.nn import ShiftBatchNorm
from bnnrepro.nn.bn_eval import batch_statistics
from bnnrepro.optim import param_groups
from bnnrepro.train.batches import eval_batching, evaluate
from bnnrepro.train.factory import build_model


def _norms(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, ShiftBatchNorm))]


@pytest.mark.parametrize("name,kw", [("mlp", {"hidden": (16, 16)}),
                                     ("bnn_convnet", {"channels": (4, 4, 4, 4, 4, 4), "fc": (8, 8)})])
def test_output_batchnorm_changes_only_the_last_norm(name, kw):
    shape = (1, 8, 8) if name == "mlp" else (3, 8, 8)
    same = _norms(models.build(name, input_shape=shape, num_classes=10, batchnorm="shift", **kw))
    plain = _norms(models.build(name, input_shape=shape, num_classes=10, batchnorm="shift",
                                output_batchnorm="standard", **kw))
    assert all(isinstance(m, ShiftBatchNorm) for m in same)
    assert all(isinstance(m, ShiftBatchNorm) for m in plain[:-1])
    assert type(plain[-1]) is nn.BatchNorm1d and plain[-1].num_features == 10


def test_torch7_mnist_preset_follows_the_code():
    cfg = compose(["+experiment=bnn_mnist_torch7", "scale=smoke"])
    validate(cfg)
    model = build_model(cfg, (1, 28, 28), 10)
    norms = _norms(model)
    assert all(isinstance(m, ShiftBatchNorm) for m in norms[:-1]) and type(norms[-1]) is nn.BatchNorm1d
    # Glorot scale unrounded on MNIST: some hidden layer's scale is not a power of two
    groups = param_groups(model, cfg.optim.lr, cfg.optim.lr_scale)
    scales = [g["lr_scale"] for g in groups if g["name"] != "rest"]
    assert scales and not all(math.log2(s).is_integer() for s in scales)
    assert cfg.model.bn_eval_stats == "running"


def test_knobs_are_validated_naming_the_field():
    for key, bad in (("model.output_batchnorm", "plain"), ("model.bn_eval_stats", "test")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(compose(["+paper=bnn", "scale=smoke", f"{key}={bad}"]))
    # a model without the knob refuses a non-neutral value instead of ignoring it
    cfg = compose(["+experiment=dorefa_svhn_A", "scale=smoke", "model.output_batchnorm=standard"])
    with pytest.raises((ConfigError, ValueError), match="output_batchnorm"):
        validate(cfg)
        model_kwargs(cfg)


def _trained_mlp(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = models.build("mlp", input_shape=(1, 4, 4), num_classes=10, hidden=(32,), batchnorm="shift",
                         output_batchnorm="standard")
    model.train()
    for _ in range(5):  # running statistics away from their initial values
        model(torch.randn(50, 1, 4, 4, generator=g) * 3 + 1)
    return model.eval()


def test_batch_statistics_normalise_each_batch_and_restore_the_model():
    model = _trained_mlp()
    x = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        running = model(x)
        with batch_statistics(model):
            per_batch = model(x)
            # the same as each BN layer in training mode on this batch (the rest in eval mode)
            assert all(m.training for m in _norms(model))
            assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in _norms(model))
    assert not torch.allclose(running, per_batch)
    # batch statistics: the output BN's output has zero mean over the batch (per class)
    assert per_batch.mean(0).abs().max() < 1e-4 < running.mean(0).abs().max()


def test_evaluation_with_batch_statistics_depends_on_the_batch_and_uses_train_batch_size():
    model = _trained_mlp()
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(200, 1, 4, 4, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (200,), generator=g)
    pre = lambda t: t.float() / 127.5 - 1  # noqa: E731
    running = [evaluate(model, x, y, pre, b)["error"] for b in (20, 200)]
    assert running[0] == running[1]  # running statistics: the batching does not matter
    losses = [evaluate(model, x, y, pre, b, loss_fn=nn.functional.cross_entropy, batch_stats=True)["loss"]
              for b in (20, 200)]
    assert losses[0] != losses[1]
    cfg = compose(["+experiment=bnn_mnist_torch7", "scale=smoke", "model.bn_eval_stats=batch"])
    assert eval_batching(cfg) == (int(cfg.train.batch_size), True)
    cfg = compose(["+experiment=bnn_mnist_torch7", "scale=smoke"])
    assert eval_batching(cfg) == (int(cfg.train.eval_batch_size), False)
    assert eval_batching(cfg, 77) == (77, False)


def test_the_packed_engine_refuses_a_batch_statistics_run():
    from bnnrepro.errors import PackError
    from bnnrepro.kernels.commands import check_preprocessing

    check_preprocessing(compose(["+experiment=bnn_mnist_torch7", "scale=smoke"]))  # running: packs
    with pytest.raises(PackError, match=r"model\.bn_eval_stats=batch"):
        check_preprocessing(compose(["+experiment=bnn_mnist_torch7", "scale=smoke", "model.bn_eval_stats=batch"]))
