"""Build the model and loss of a run from its config."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..config import model_kwargs


def build_model(cfg, input_shape, num_classes) -> nn.Module:
    """The model a run's config describes (its model section and quantizer scheme), untrained."""
    return models.build(cfg.model.name, input_shape=tuple(input_shape), num_classes=num_classes,
                        **model_kwargs(cfg))


def squared_hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BNN's L2-SVM loss: mean over batch and classes of max(0, 1 - t*y)^2 with t in {-1, +1}."""
    t = F.one_hot(target, output.shape[1]).to(output.dtype) * 2 - 1
    return torch.clamp(1 - t * output, min=0).pow(2).mean()


LOSSES = {"squared_hinge": squared_hinge, "cross_entropy": F.cross_entropy}


def build_loss(name: str):
    """The loss function ``train.loss`` names (``squared_hinge`` or ``cross_entropy``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"train.loss={name!r} is unknown; allowed: {', '.join(LOSSES)}") from None
