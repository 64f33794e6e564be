"""Batches are slices of whole-split tensors already in memory (no per-sample pipeline), or, for a
split that streams (``data.loader=stream``), the same index batches decoded ahead by worker processes."""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..data.stream import ImageStream
from ..nn.bn_eval import batch_statistics


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
    if order is None:
        index = [slice(start, start + batch_size) for start in range(0, stop, batch_size)]
    else:
        index = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
    for idx, xb in zip(index, gather(x, index)):
        yield preprocess(xb.to(device, non_blocking=True)), y[idx].to(device, non_blocking=True)


def gather(x, index: list) -> Iterator[torch.Tensor]:
    """``x[idx]`` for each ``idx`` in ``index`` (slices or index tensors); a stream decodes them ahead
    in its worker processes."""
    if isinstance(x, ImageStream):
        yield from x.batches(torch.arange(x.shape[0])[i] if isinstance(i, slice) else i.cpu() for i in index)
    else:
        for idx in index:
            yield x[idx]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


TOP_K = 5


def top5_wrong(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: whether the true class is outside the top 5, i.e. 5 classes score strictly higher.
    Ties count for the true class (unlike ``topk``'s arbitrary pick among equal logits), so an
    example right at top-1 (``argmax``) is right at top-5 too, and top-5 error <= top-1 error."""
    return (logits > logits.gather(1, y.long()[:, None])).sum(1) >= TOP_K


def eval_batching(cfg, batch_size: int | None = None) -> tuple[int, bool]:
    """How a run is evaluated: (batch size, BatchNorm batch statistics). With running statistics
    (``model.bn_eval_stats=running``) any batch size gives the same result: ``batch_size``, else
    ``train.eval_batch_size``; with ``batch`` the batch size decides the statistics, so it is the
    training batch (``train.batch_size``), as Torch7 tests."""
    if cfg.model.get("bn_eval_stats", "running") == "batch":
        return int(cfg.train.batch_size), True
    return int(batch_size or cfg.train.eval_batch_size), False


@torch.no_grad()
def evaluate(model, x, y, preprocess, batch_size: int, loss_fn=None, device="cpu", batch_stats: bool = False) -> dict:
    """Top-1 error, top-5 error (percent; None for a model with fewer than 5 outputs) and mean loss
    of ``model`` in eval mode over a whole split (an empty split: NaN). ``batch_stats``: BatchNorm
    normalises each batch with its own statistics (``model.bn_eval_stats=batch``, Torch7's default)."""
    if x.shape[0] == 0:
        return {"error": float("nan"), "top5_error": float("nan"), "loss": float("nan")}
    was_training = model.training
    model.eval()
    wrong, loss_sum = 0, 0.0
    wrong5 = torch.zeros((), dtype=torch.int64, device=device)  # read once at the end: no sync per batch
    with batch_statistics(model, batch_stats):
        for xb, yb in batches(x, y, batch_size, preprocess, device=device):
            out = model(xb)
            wrong += int((out.argmax(1) != yb).sum())
            wrong5 += top5_wrong(out, yb).sum()
            if loss_fn is not None:
                loss_sum += float(loss_fn(out, yb)) * yb.shape[0]
    model.train(was_training)
    top5 = 100.0 * int(wrong5) / x.shape[0] if out.shape[1] >= TOP_K else None
    return {"error": 100.0 * wrong / x.shape[0], "top5_error": top5, "loss": loss_sum / x.shape[0]}
