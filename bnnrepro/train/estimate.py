"""How long a training will take, said before it runs (``bnnrepro table --dry-run``, and the warning a
``scale=paper`` training on a CPU prints at its start).

Two sources, the first that applies:

1. **finished runs of the same config**: its fingerprint (``runs.fingerprint``) with the scale's own
   fields and ``train.epochs`` aside, the same effective width and training subset, and not a GPU
   run for a CPU estimate (or the reverse). Their ``wall_time_s / epochs_done``, times the epochs to
   run: a ``scale=medium`` run times an epoch of ``scale=paper`` (the same net, the same data);
2. else **a rough estimate from the model's size**: its MACs per example (one forward pass of a
   zero input, counted on the Linear and Conv2d layers) x (6 per training example, forward and
   backward, + 2 per validation and test example) per epoch, at :data:`CPU_FLOPS_PER_THREAD` per
   torch thread (:data:`GPU_FLOPS` on a GPU). The CPU rate is the one BNN's MNIST MLPs train at
   on 2 AMD EPYC Zen 4 cores with the fused binarization, int8 +-1 forward and seeded dropout
   (about 1.1e11 FLOP/s at fp32 at quick scale, 1.7e11 for the Torch7 3x2048 MLP with
   ``train.precision=bf16``); expect 2-3x either way for other nets (conv nets are slower) and
   machines.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from .. import runs
from ..config import effective_train_subset, effective_width_mult
from ..runs.fingerprint import _same, as_trained, fingerprint

CPU_FLOPS_PER_THREAD = 5e10
GPU_FLOPS = 2e12  # small nets on a GPU are bound by kernel launches, far below the chip's peak
SCALE_FIELDS = ("scale", "train.epochs")  # differ between the scales of one net and one dataset


@dataclass(frozen=True)
class Estimate:
    seconds_per_epoch: float
    epochs: int
    source: str

    @property
    def seconds(self) -> float:
        return self.seconds_per_epoch * self.epochs

    def text(self) -> str:
        """``about 5.2 h (1000 epochs x 19 s, from 2 finished runs of this config)``."""
        return (f"about {runs.format_duration(self.seconds)} ({self.epochs} epochs x "
                f"{runs.format_duration(self.seconds_per_epoch)}, {self.source})")


def _as_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def _timing_key(config: dict, summary: dict | None = None) -> dict:
    """What decides an epoch's time: the fingerprint, the scale's fields aside, with the effective
    width and training subset the scale makes."""
    key = {k: v for k, v in fingerprint(as_trained(config, summary)).items()
           if not any(k == p or k.startswith(p + ".") for p in SCALE_FIELDS)}
    cfg = OmegaConf.create(config)
    key["effective.width_mult"] = effective_width_mult(cfg)
    key["effective.train_subset"] = effective_train_subset(cfg)
    return key


def _device_matches(config: dict, gpu: bool) -> bool:
    device = config.get("device")
    return device == "auto" or (device == "cuda") == gpu


def from_runs(cfg, finished: Iterable[runs.Run], epochs: int, gpu: bool = False) -> Estimate | None:
    """From the completed runs of ``cfg``'s net and data in ``finished`` (any scale, any seed)."""
    want = _timing_key(_as_dict(cfg))
    wall, done, n = 0.0, 0, 0
    for run in finished:
        summary = run.summary or {}
        if summary.get("status") != "completed" or not summary.get("epochs_done") or not _device_matches(run.config, gpu):
            continue
        have = _timing_key(run.config, summary)
        if all(_same(want[k], have[k]) for k in want.keys() & have.keys()):
            wall, done, n = wall + float(summary["wall_time_s"]), done + int(summary["epochs_done"]), n + 1
    if not n:
        return None
    return Estimate(wall / done, epochs, f"from {n} finished run{'s' if n > 1 else ''} of this config")


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates per example of the Linear and Conv2d layers, from one forward pass of a
    zero input (the model's mode and the random generators are left as they were)."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        per_weight = output[0].numel() // module.weight.shape[0]  # outputs per output channel / unit
        total += module.weight.numel() * per_weight

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            param = next(model.parameters(), None)
            model(torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def rough(model: nn.Module, input_shape, train_examples: int, eval_examples: int, epochs: int,
          gpu: bool = False, threads: int | None = None) -> Estimate:
    """From the model's size (see the module's docstring)."""
    macs = count_macs(model, input_shape)
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * (threads or torch.get_num_threads())
    flops = macs * (6 * train_examples + 2 * eval_examples)
    return Estimate(flops / rate, epochs,
                    f"rough, from the model's size: {macs / 1e6:.3g}M MACs per example, {train_examples:,} "
                    f"training and {eval_examples:,} evaluation examples an epoch at ~{rate:.1e} FLOP/s")


def warn_paper_on_cpu(cfg, model: nn.Module, splits, device: torch.device, epochs: int, log=None) -> None:
    """One stderr line with the duration a ``scale=paper`` training on a CPU will take; nothing (and
    no cost) for any other scale or device."""
    if cfg.scale.name != "paper" or device.type != "cpu":
        return
    finished = runs.scan(runs.runs_root(cfg.runs_dir)).completed
    estimate = from_runs(cfg, finished, epochs) or rough(
        model, splits.input_shape, int(splits.train_x.shape[0]),
        int(splits.val_x.shape[0] + splits.test_x.shape[0]), epochs)
    print(f"scale=paper on CPU: {estimate.text()}; scale=quick or scale=medium run in minutes to hours",
          file=log or sys.stderr)
