"""Batches are slices of whole-split tensors already in memory (no per-sample pipeline)."""
from __future__ import annotations

from typing import Callable, Iterator

import torch


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a pure function of (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one without saving any data-loader state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, preprocess: Callable,
            order: torch.Tensor | None = None, device: torch.device | str = "cpu",
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = x.shape[0]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
        yield preprocess(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


@torch.no_grad()
def evaluate(model, x, y, preprocess, batch_size: int, loss_fn=None, device="cpu") -> dict:
    """Error (percent) and mean loss of ``model`` in eval mode over a whole split."""
    if x.shape[0] == 0:
        return {"error": float("nan"), "loss": float("nan")}
    was_training = model.training
    model.eval()
    wrong, loss_sum = 0, 0.0
    for xb, yb in batches(x, y, batch_size, preprocess, device=device):
        out = model(xb)
        wrong += int((out.argmax(1) != yb).sum())
        if loss_fn is not None:
            loss_sum += float(loss_fn(out, yb)) * yb.shape[0]
    model.train(was_training)
    return {"error": 100.0 * wrong / x.shape[0], "loss": loss_sum / x.shape[0]}
