"""Input preprocessing, applied batch-wise to the stored uint8 tensors (uint8 [N, C, H, W] -> float32).

- ``scale``: pixels * 2/255 - 1, the BNN/QNN papers' input scaling (:func:`scale_pm1`).
- ``gcn``: global contrast normalisation per image: subtract the image's mean, divide by its
  standard deviation (an all-constant image becomes zeros).
- ``zca``: GCN, then ZCA whitening fitted on the training split with a filter bias of 0.1 added
  to the covariance eigenvalues -- the default of the ``dp`` library's ZCA that BNN's Torch7
  CIFAR-10 code used (``-whiten true``).
"""
from __future__ import annotations

from typing import Callable

import torch

PREPROCESSING = ("scale", "gcn", "zca")
GCN_MIN_DIVISOR = 1e-8
ZCA_FILTER_BIAS = 0.1
ZCA_MAX_DIM = 12288  # 64x64x3: the D x D covariance and its eigendecomposition stay tractable


def scale_pm1(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to [-1, 1]: ``x * (2/255) - 1``. The single definition; the packed engine relies on it."""
    return x_uint8.to(torch.float32).mul(2.0 / 255.0).sub(1.0)


def gcn(x_uint8: torch.Tensor) -> torch.Tensor:
    f = x_uint8.to(torch.float32).flatten(1)
    f = f - f.mean(dim=1, keepdim=True)
    std = f.pow(2).mean(dim=1, keepdim=True).sqrt()
    std = torch.where(std < GCN_MIN_DIVISOR, torch.ones_like(std), std)
    return (f / std).view(x_uint8.shape)


class ZCA:
    """GCN + ZCA whitening: ``(gcn(x) - mean) @ W`` with ``W = U diag(1/sqrt(l + bias)) U^T``."""

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, filter_bias: float, n_fit: int):
        self.mean, self.matrix = mean, matrix  # float32 [D], [D, D]; kept on the CPU
        self.filter_bias, self.n_fit = filter_bias, n_fit
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def fit(cls, train_x: torch.Tensor, filter_bias: float = ZCA_FILTER_BIAS, chunk: int = 4096) -> "ZCA":
        n, dim = len(train_x), train_x[0].numel()
        if n < 2:
            raise ValueError("zca needs at least 2 training examples to fit")
        if dim > ZCA_MAX_DIM:
            raise ValueError(f"zca on {dim}-dimensional inputs needs a {dim}x{dim} covariance; the limit is "
                             f"{ZCA_MAX_DIM} (64x64x3). Use a smaller image_size or preprocessing=scale|gcn")
        total = torch.zeros(dim, dtype=torch.float64)
        gram = torch.zeros(dim, dim, dtype=torch.float64)
        for start in range(0, n, chunk):
            f = gcn(train_x[start:start + chunk]).flatten(1)
            total += f.sum(0, dtype=torch.float64)
            gram += (f.T @ f).double()  # float32 products per chunk, accumulated in float64
        mean = total / n
        cov = gram / n - torch.outer(mean, mean)
        evals, evecs = torch.linalg.eigh(cov)
        matrix = (evecs * (evals.clamp_min(0) + filter_bias).rsqrt()) @ evecs.T
        return cls(mean.float(), matrix.float(), filter_bias, n)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        if x_uint8.device not in self._on:
            self._on[x_uint8.device] = (self.mean.to(x_uint8.device), self.matrix.to(x_uint8.device))
        mean, matrix = self._on[x_uint8.device]
        return ((gcn(x_uint8).flatten(1) - mean) @ matrix).view(x_uint8.shape)

    def __getstate__(self) -> dict:  # picklable without the per-device copies
        return {**self.__dict__, "_on": {}}


def check_name(name: str) -> None:
    if name not in PREPROCESSING:
        raise ValueError(f"preprocessing={name!r} is unknown; allowed: {', '.join(PREPROCESSING)}")


def build(name: str, train_x: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """The batch-wise preprocess callable and its description for the run record."""
    check_name(name)
    if name == "scale":
        return scale_pm1, {"name": "scale", "formula": "x * 2/255 - 1"}
    if name == "gcn":
        return gcn, {"name": "gcn", "formula": "per image: (x - mean) / std", "min_divisor": GCN_MIN_DIVISOR}
    zca = ZCA.fit(train_x)
    return zca, {"name": "zca", "formula": "(gcn(x) - mean) @ U diag(1/sqrt(l + bias)) U^T",
                 "filter_bias": zca.filter_bias, "fitted_on": f"train split ({zca.n_fit} examples)"}
