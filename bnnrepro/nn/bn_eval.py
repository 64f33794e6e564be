"""Evaluation with each batch's own BatchNorm statistics (``model.bn_eval_stats=batch``).

The Torch7 BNN code evaluates with ``-runningVal false`` by default: at test time its BatchNorm
layers (shift-based and plain) normalise every test batch with that batch's mean and variance, not
the running averages kept during training, so a test error depends on the test batch size (Torch7
uses the training batch, 100). ``batch_statistics(model)`` does that in eval mode: every BatchNorm
layer computes in training mode while the rest of the model (dropout, stochastic neurons) stays in
eval mode, and the running statistics it would update are put back afterwards, so the model leaves
the block unchanged. The packed engine folds running statistics into thresholds; it cannot evaluate
this way.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn

from .shift_bn import ShiftBatchNorm

BATCHNORMS = (nn.modules.batchnorm._BatchNorm, ShiftBatchNorm)


@contextmanager
def batch_statistics(model: nn.Module, enabled: bool = True):
    """Inside the block, ``model``'s BatchNorm layers normalise with batch statistics (call it after
    ``model.eval()``); their buffers and training flags are restored on exit."""
    if not enabled:
        yield model
        return
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
    saved = [(m, m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in norms]
    try:
        for m in norms:
            m.train(True)
        yield model
    finally:
        for m, training, buffers in saved:
            m.train(training)
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
