"""Data-parallel training with torch DistributedDataParallel, launched by ``torchrun``.

    torchrun --nproc_per_node=4 -m bnnrepro train +paper=bnn device=cuda      # 4 GPUs, one node
    torchrun --nproc_per_node=2 -m bnnrepro train +paper=bnn scale=smoke      # 2 CPU processes (gloo)

Without torchrun's environment (``WORLD_SIZE`` unset or 1) every method here is the identity and
training is exactly the single-process loop. With it:

- the process group is ``gloo`` on CPU, ``nccl`` for CUDA tensors (``cpu:gloo,cuda:nccl``); each rank
  uses ``cuda:<LOCAL_RANK>``;
- ``train.batch_size`` stays the *global* batch: every global batch (the same ones a single process
  sees, since the epoch order is a function of seed and epoch) is split into ``WORLD_SIZE`` shards
  with ``tensor_split``; each rank's loss is weighted by its shard's share, so the averaged gradient
  is the gradient of the global batch's mean loss even when shards differ in size;
- BatchNorm normalizes over the global batch: torch's ``SyncBatchNorm`` on CUDA, and on CPU (where
  SyncBatchNorm refuses to run) :class:`GlobalBatchNorm`, two autograd-aware all-reduces per layer.
  ``model.batchnorm=shift`` (BNN's shift-based BN) stays per shard;
- only rank 0 creates the run directory and writes metrics, checkpoints and summary.json; the
  others receive the run directory (and, on resume, the checkpoint) from it;
- evaluation is sharded over the ranks and its counts all-reduced, with rank 0's BatchNorm buffers
  (the ones its checkpoint saves) broadcast first.

What is and is not identical to one process: the sums over shards are added in another order, so
results differ from one process by float rounding, and by no more in a smooth float net (tested:
tests/test_distributed.py). Where the training amplifies a last-bit difference -- Adam turns a
near-zero gradient of either sign into a full step that can flip a binary weight; a max-pool's
argmax can move between near-equal values -- the curves agree closely rather than bitwise, as two
single-process runs with differently ordered sums would. Dropout masks and stochastic quantizers draw from each rank's own generator (rank 0
continues the single-process stream, rank r > 0 is reseeded from (seed, r)), so such runs are
statistically, not bitwise, equivalent. Every rank's generator state goes into the checkpoint, so
a resume with the same number of processes is exact.
"""
from __future__ import annotations

import gc
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError
from .batches import batches as _batches
from .batches import gather as _gather
from .batches import evaluate as _evaluate


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum seen by every rank is the sum of their gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across all ranks.

    torch's ``SyncBatchNorm`` runs only on accelerators; this is the CPU/gloo equivalent (used on
    CUDA too if asked, but :func:`Context.wrap` prefers SyncBatchNorm there). Same parameters and
    buffers as ``BatchNorm*d``, so checkpoints load into the plain model. Outside distributed
    training, or in eval mode, it is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))       # autograd-aware: backward all-reduces too
        n = sums[-1].detach()
        if n < 2:
            raise ValueError(f"expected more than 1 value per channel in the global batch, got {int(n)}")
        mean = sums[:-1] / n
        centered = x - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims)) / n   # biased, as BatchNorm normalizes
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (n / (n - 1)), alpha=f)  # unbiased
        return y


def convert_batchnorm(module: nn.Module, cls: type = GlobalBatchNorm) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` by ``cls`` (same parameter objects)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (cls, nn.SyncBatchNorm)):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, cls))
    return module


@dataclass
class Context:
    """Where this process stands in a data-parallel job; world 1 means no distribution at all."""
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- setup -----------------------------------------------------------------------------------
    def device(self, name: str) -> torch.device:
        """``cpu``/``cuda``/``auto``; under torchrun a CUDA run uses ``cuda:<LOCAL_RANK>``."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name != "cuda":
            return torch.device(name)
        if not self.active:
            return torch.device("cuda")
        if self.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} CUDA "
                               "devices here: start at most that many processes per node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def on_main(self, fn: Callable, *args):
        """``fn(*args)`` on rank 0; every rank gets its result, or raises the error it raised."""
        if not self.active:
            return fn(*args)
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn(*args))
            except Exception as err:  # sent to the other ranks so they stop too, instead of waiting
                box[0] = ("error", err)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def seed(self, seed: int) -> None:
        """Rank r > 0 draws dropout masks / stochastic quantizers from its own stream."""
        if self.active and self.rank > 0:
            torch.manual_seed((int(seed) + 1_000_000_007 * self.rank) % 2**63)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Global-batch BatchNorm and DDP around ``model`` (which keeps its own parameters)."""
        if not self.active:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_batchnorm(model)
        if self.is_main and any(type(m).__name__ == "ShiftBatchNorm" for m in model.modules()):
            print("note: model.batchnorm=shift normalizes each rank's shard with its own statistics "
                  "(not the global batch's)", file=sys.stderr)
        return model

    def ddp(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.active:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- training ----------------------------------------------------------------------------------
    def batches(self, x, y, batch_size: int, preprocess, order, device) -> Iterator[tuple]:
        """``(x, y, n_global)``: this rank's shard of each global batch, and the global batch size."""
        if not self.active:
            for xb, yb in _batches(x, y, batch_size, preprocess, order, device):
                yield xb, yb, yb.shape[0]
            return
        index = [order[start:start + batch_size] for start in range(0, x.shape[0], batch_size)]
        shards = [idx.tensor_split(self.world)[self.rank] for idx in index]
        for idx, shard, xb in zip(index, shards, _gather(x, shards)):
            yield (preprocess(xb.to(device, non_blocking=True)), y[shard].to(device, non_blocking=True),
                   idx.shape[0])

    def loss(self, loss_fn, out: torch.Tensor, yb: torch.Tensor, n_global: int):
        """``(loss to backpropagate, the global batch's mean loss)``. With DDP's gradient averaging
        over W ranks, weighting shard r's mean loss by ``n_r * W / n_global`` gives exactly the
        gradient of the global batch's mean loss."""
        if not self.active:
            loss = loss_fn(out, yb)
            return loss, loss.detach()
        n = yb.shape[0]
        loss = loss_fn(out, yb) if n else out.sum() * 0.0   # an empty shard still joins the all-reduce
        weighted = loss.detach() * n
        dist.all_reduce(weighted)
        return loss * (n * self.world / n_global), weighted / n_global

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: evaluation then uses the
        statistics the checkpoint saves, also where they are kept per shard (shift BN)."""
        if self.active:
            for buf in model.buffers():
                dist.broadcast(buf, src=0)

    def evaluate(self, model, x, y, preprocess, batch_size: int, loss_fn=None, device="cpu",
                 batch_stats: bool = False) -> dict:
        """Top-1 and top-5 error (percent) and mean loss over a whole split, as :func:`batches.evaluate`,
        each rank evaluating a contiguous part."""
        if not self.active:
            return _evaluate(model, x, y, preprocess, batch_size, loss_fn, device, batch_stats)
        if batch_stats:  # global BN would pool every rank's batch, and ranks' batch counts differ
            raise ConfigError("model.bn_eval_stats=batch is not supported under torchrun (each evaluation batch "
                              "would be normalised with every rank's images); allowed there: running")
        n = x.shape[0]
        if n == 0:
            return {"error": float("nan"), "top5_error": float("nan"), "loss": float("nan")}
        bounds = torch.arange(n).tensor_split(self.world)[self.rank]
        lo, hi = (int(bounds[0]), int(bounds[-1]) + 1) if len(bounds) else (0, 0)
        totals = torch.zeros(3, dtype=torch.float64)
        if hi > lo:
            part = _evaluate(model, x[lo:hi], y[lo:hi], preprocess, batch_size, loss_fn, device, batch_stats)
            totals[0] = round(part["error"] * (hi - lo) / 100.0)
            totals[1] = part["loss"] * (hi - lo)
            # no top-5 (fewer than 5 outputs): NaN, which the sum carries to every rank
            top5 = part["top5_error"]
            totals[2] = math.nan if top5 is None else round(top5 * (hi - lo) / 100.0)
        dist.all_reduce(totals)
        top5 = None if math.isnan(float(totals[2])) else 100.0 * float(totals[2]) / n
        return {"error": 100.0 * float(totals[0]) / n, "top5_error": top5, "loss": float(totals[1]) / n}

    # --- checkpoints ---------------------------------------------------------------------------------
    def rng_states(self, device: torch.device) -> list | None:
        """Every rank's generator states (for the checkpoint), or None without distribution."""
        if not self.active:
            return None
        mine = {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
        states: list = [None] * self.world
        dist.all_gather_object(states, mine)
        return states

    def restore_rng(self, rng: dict, seed: int, epoch: int, device: torch.device) -> None:
        """Each rank's own state when the checkpoint has one per rank of this world size; else rank 0
        takes the saved state and the others reseed from (seed, epoch, rank)."""
        ranks = rng.get("ranks")
        if ranks is not None and len(ranks) == self.world:
            mine = ranks[self.rank]
        elif self.is_main:
            mine = rng
        else:
            torch.manual_seed((int(seed) + 1_000_000_007 * self.rank + 7919 * int(epoch)) % 2**63)
            return
        torch.set_rng_state(mine["torch"])
        if device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"])

    def close(self, finished: bool = True) -> None:
        """Leave the process group. DDP's reducer sits in reference cycles that keep the group
        alive into interpreter teardown, where gloo's threads could abort a rank at exit ("terminate
        called without an active exception", about 1 run in 30 before this collect; 0 in 60 after).
        After a finished run the ranks also meet at a barrier, so none leaves while rank 0 still
        writes; after an error there is none, since the other ranks may never reach it."""
        if not (self.active and dist.is_initialized()):
            return
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def setup() -> Context:
    """The context from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); initializes the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return Context(world=dist.get_world_size(), rank=dist.get_rank(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))
