"""Build the model, loss and data of a run from its config."""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models


def effective_width_mult(cfg) -> float:
    return float(cfg.model.width_mult) * float(cfg.scale.width_mult)


def effective_dropout_hidden(cfg) -> float:
    cap = cfg.scale.get("max_dropout_hidden")
    return float(cfg.model.dropout_hidden) if cap is None else min(float(cfg.model.dropout_hidden), cap)


def effective_epochs(cfg) -> int:
    return int(min(cfg.train.epochs, cfg.scale.epochs)) if cfg.scale.epochs else int(cfg.train.epochs)


def schedule_epochs(cfg) -> int:
    """The epochs the LR schedule is laid over: the paper's (truncate) or the run's (compress)."""
    return int(cfg.train.epochs) if cfg.scale.schedule == "truncate" else effective_epochs(cfg)


def effective_train_subset(cfg):
    limits = [n for n in (cfg.data.train_subset, cfg.scale.train_subset) if n]
    return min(limits) if limits else None


def model_kwargs(cfg) -> dict:
    """The model section plus the quantizer choices, filtered to what the model's factory accepts."""
    q = cfg.quant
    kwargs = dict(
        hidden=tuple(cfg.model.hidden), channels=tuple(cfg.model.channels), fc=tuple(cfg.model.fc),
        width_mult=effective_width_mult(cfg), dropout_in=cfg.model.dropout_in,
        dropout_hidden=effective_dropout_hidden(cfg), bias=cfg.model.bias, init=cfg.model.init,
        batchnorm=cfg.model.batchnorm, bn_eps=cfg.model.bn_eps, bn_momentum=cfg.model.bn_momentum,
        variant=cfg.model.variant,
        weight_quant=q.weight, w_bits=q.w_bits, weight_kwargs=dict(q.weight_kwargs),
        act_quant=q.activation, a_bits=q.a_bits, act_kwargs=dict(q.activation_kwargs),
        grad_quant=q.gradient, g_bits=q.g_bits,
        first_weight_quant=q.first_weight, last_weight_quant=q.last_weight,
    )
    params = inspect.signature(models.MODELS[cfg.model.name]).parameters
    # options the factory does not take must be at their neutral value, or the config asks for
    # something the model would silently not do
    for key, field, neutral in (("batchnorm", "model.batchnorm", "standard"),
                                ("grad_quant", "quant.gradient", "identity")):
        if key not in params and kwargs[key] != neutral:
            raise ValueError(f"{field}={kwargs[key]!r} is not supported by model {cfg.model.name!r}; "
                             f"allowed: {neutral}")
    # unset (None) fields fall back to the factory's own defaults, e.g. DoReFa's bits
    return {k: v for k, v in kwargs.items() if k in params and v is not None}


def build_model(cfg, input_shape, num_classes) -> nn.Module:
    return models.build(cfg.model.name, input_shape=tuple(input_shape), num_classes=num_classes,
                        **model_kwargs(cfg))


def squared_hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BNN's L2-SVM loss: mean over batch and classes of max(0, 1 - t*y)^2 with t in {-1, +1}."""
    t = F.one_hot(target, output.shape[1]).to(output.dtype) * 2 - 1
    return torch.clamp(1 - t * output, min=0).pow(2).mean()


LOSSES = {"squared_hinge": squared_hinge, "cross_entropy": F.cross_entropy}


def build_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"train.loss={name!r} is unknown; allowed: {', '.join(LOSSES)}") from None
