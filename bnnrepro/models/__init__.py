"""Model registry. Every model is an ``nn.Sequential`` of plain, inspectable stages
(Flatten, Dropout, QuantLinear/QuantConv2d, BatchNorm, MaxPool2d, activation quantizer), so that
the packed engine and the bit-aware summary can walk it layer by layer.

Every factory takes the model section's fields it uses as keywords and one ``quant=``, a
:class:`bnnrepro.quant.QuantScheme` (default: BNN's sign weights and activations)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .alexnet import binary_alexnet, dorefa_alexnet
from .bnn_convnet import bnn_convnet
from .dorefa_svhn import dorefa_svhn
from .googlenet import Inception, googlenet
from .language_model import gru_lm, lstm_lm, rnn_lm
from .mlp import mlp

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "bnn_convnet": bnn_convnet, "dorefa_svhn": dorefa_svhn, "dorefa_alexnet": dorefa_alexnet,
    "binary_alexnet": binary_alexnet, "googlenet": googlenet,
    # language models: not Sequential, (T, B) tokens in; trained by train/lm.py on a text dataset
    "lstm_lm": lstm_lm, "gru_lm": gru_lm, "rnn_lm": rnn_lm,
}
LANGUAGE_MODELS = ("lstm_lm", "gru_lm", "rnn_lm")

# models whose layers have no gradient quantizer: their scheme's gradient role must be the identity
NO_GRADIENT_QUANT = LANGUAGE_MODELS


def names() -> list[str]:
    """Every model name ``model.name`` may take, sorted."""
    return sorted(MODELS)


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """The model registered as ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes``
    outputs; ``kwargs`` are the factory's (the model section's fields, ``quant=`` a QuantScheme)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"model.name={name!r} is unknown; allowed: {', '.join(names())}") from None
    return factory(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)


def stages(model: nn.Module, prefix: str = "", branches: bool = False) -> list[tuple[str, nn.Module]]:
    """The model's stages in order, nested Sequential containers flattened; ``(name, module)``.
    The packed engine and the bit-aware summary both walk a model through this.

    An :class:`Inception` block (parallel branches) is one stage, unless ``branches``: then its
    branches' stages follow one another, branch by branch (names ``<block>.branches.<i>.<j>``, as
    in ``named_modules``). Only a walker that knows they are parallel (the summary) asks for that;
    the packed engine, which reads the list as a chain, sees the block and refuses it."""
    if isinstance(model, nn.Sequential):
        out = []
        for name, child in model.named_children():
            out += stages(child, f"{prefix}{name}.", branches)
        return out
    if branches and isinstance(model, Inception):
        out = []
        for i, branch in enumerate(model.branches):
            out += stages(branch, f"{prefix}branches.{i}.", branches)
        return out
    return [(prefix[:-1] or type(model).__name__, model)]
