"""Evaluating distorted nets: the test split in memory (loaded once per dataset, preprocessed once),
batched error on all of it, and optional BatchNorm recalibration.

By default BN keeps the running statistics of training: the trained net, distorted. With
``bn_recalibrate=N`` they are re-estimated on the first N training images for every distorted
net, which removes any mismatch between a distorted layer's output scale and those statistics; it
also lets BN absorb part of a distortion's mean shift, a different and more forgiving question.
"""
from __future__ import annotations

import torch

from .. import data as datasets
from ..nn import ShiftBatchNorm

PRECOMPUTE_LIMIT_BYTES = 1 << 30  # preprocess the test set once when it fits in 1 GiB as float32


def _preprocessed(x_uint8: torch.Tensor, preprocess, device: torch.device) -> torch.Tensor:
    return torch.cat([preprocess(x_uint8[i:i + 4096]) for i in range(0, len(x_uint8), 4096)]).to(device)


class TestSet:
    """A run's test split in memory, preprocessed once when it fits (else per batch), and the
    training images BN recalibration uses (``calibration``, preprocessed)."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, preprocess, device: torch.device,
                 calibration: torch.Tensor | None = None):
        self.y = y.to(device)
        self.preprocess, self.device = preprocess, device
        self.x_uint8 = x_uint8
        self.x = _preprocessed(x_uint8, preprocess, device) if x_uint8.numel() * 4 <= PRECOMPUTE_LIMIT_BYTES \
            else None
        self.calibration = None if calibration is None else _preprocessed(calibration, preprocess, device)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @torch.inference_mode()
    def error(self, model: torch.nn.Module, batch_size: int) -> float:
        """Test error (percent) of ``model`` (in eval mode) on the whole split."""
        wrong = 0
        for start in range(0, len(self), batch_size):
            if self.x is not None:
                xb = self.x[start:start + batch_size]
            else:
                xb = self.preprocess(self.x_uint8[start:start + batch_size].to(self.device))
            wrong += int((model(xb).argmax(1) != self.y[start:start + batch_size]).sum())
        return 100.0 * wrong / len(self)


def load_test_set(cfg, data_root: str | None, cache: dict, device: torch.device,
                  calibration: int = 0) -> TestSet:
    """The test split of the run's dataset and preprocessing, loaded once per distinct dataset."""
    root = data_root if data_root is not None else cfg.data.get("root")
    key = (cfg.data.name, str(root), cfg.data.preprocessing, cfg.data.get("val_size"),
           cfg.data.get("image_size"), calibration)
    if key not in cache:
        splits = datasets.load(cfg.data.name, root, download=cfg.data.get("download", "auto"),
                               val_size=cfg.data.get("val_size"), preprocessing=cfg.data.preprocessing,
                               use_extra=False, image_size=cfg.data.get("image_size"))
        calib = splits.train_x[:calibration] if calibration else None
        cache[key] = TestSet(splits.test_x, splits.test_y, splits.preprocess, device, calib)
    return cache[key]


def batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's torch BatchNorm layers; BNN's ShiftBatchNorm cannot be recalibrated here."""
    if any(isinstance(m, ShiftBatchNorm) for m in model.modules()):
        raise ValueError("--bn-recalibrate supports torch BatchNorm only, not ShiftBatchNorm")
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``x``: the plain average of the
    batch statistics (momentum None); everything else stays in eval mode."""
    norms = batch_norms(model)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
        m.eval()
