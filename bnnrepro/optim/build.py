from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..nn import QuantLayer


def _pow2(x: float) -> float:
    return 2.0 ** round(math.log2(x))


def param_groups(model: nn.Module, lr: float, lr_scale: str, layers: str = "clipping") -> list[dict]:
    """One group per scaled layer's weight (lr times its Glorot scale), one for the rest.

    BNN scales the step of binary weights only (Theano ``W_LR_scale="Glorot"``): ``layers=clipping``,
    the layers whose quantizer clips latent weights; ``all`` scales every quantized layer's weight
    (a float net given BNN's optimizer, a controlled baseline for Merolla's claims). ``glorot_pow2``
    rounds the scale to a power of two as BNN's Torch7 code does.
    """
    if layers not in ("clipping", "all"):
        raise ValueError(f"optim.lr_scale_layers={layers!r} is unknown; allowed: clipping, all")
    groups, scaled = [], set()
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer) and lr_scale != "none" and (
                layers == "all" or module.clips_latent_weights):
            scale = module.glorot_lr_scale()
            if lr_scale == "glorot_pow2":
                scale = _pow2(scale)
            groups.append({"params": [module.weight], "lr": lr * scale, "lr_scale": scale, "name": name})
            scaled.add(id(module.weight))
    rest = [p for p in model.parameters() if id(p) not in scaled]
    if rest:
        groups.append({"params": rest, "lr": lr, "lr_scale": 1.0, "name": "rest"})
    return groups


def decay_scope(groups: list[dict], model: nn.Module, scope: str, weight_decay: float) -> list[dict]:
    """``all``: ``groups`` as they are (the optimizer's weight decay applies to every parameter);
    ``fc_weights``: each group split into the weights of fully connected layers, which decay, and the
    rest (convolutions, biases, BatchNorm), which do not -- tensorpack's DoReFa AlexNet regularizes
    ``fc.*/W`` only."""
    if scope == "all":
        return groups
    if scope != "fc_weights":
        raise ValueError(f"optim.weight_decay_on={scope!r} is unknown; allowed: all, fc_weights")
    fc = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    split = []
    for group in groups:
        for decayed in (True, False):
            params = [p for p in group["params"] if (id(p) in fc) == decayed]
            if params:
                split.append({**group, "params": params, "weight_decay": weight_decay if decayed else 0.0})
    return split


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimizer of the ``optim`` section ``cfg`` over :func:`param_groups` of ``model``.
    ``cfg.fused`` (default): one kernel per parameter where torch has one (Adam, SGD; Adamax
    takes the multi-tensor path), ShiftAdaMax's Numba loop; false: the per-tensor references."""
    groups = param_groups(model, cfg.lr, cfg.lr_scale, cfg.get("lr_scale_layers", "clipping"))
    groups = decay_scope(groups, model, cfg.get("weight_decay_on", "all"), cfg.weight_decay)
    fused = bool(cfg.get("fused", False))
    # torch's fused kernels exist on CPU and CUDA for floating-point parameters only
    fused_ok = fused and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, fused=fused_ok or None)
    if cfg.name == "adamax":
        return torch.optim.Adamax(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay, foreach=fused or None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused_ok or None)
    if cfg.name == "shift_adamax":
        from .shift_adamax import ShiftAdaMax

        return ShiftAdaMax(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    raise ValueError(f"optim.name={cfg.name!r} is unknown; allowed: adam, adamax, shift_adamax, sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, epochs: int, protocol_epochs: int | None = None):
    """Stepped once per epoch, laid over ``epochs`` epochs. ``exponential`` decays lr to ``lr_final``
    over them (Theano BNN: ``LR_decay = (LR_fin/LR_start)**(1/epochs)``). ``step`` multiplies lr by
    ``gamma`` every ``step_epochs`` epochs of the ``protocol_epochs``-epoch protocol those constants
    belong to: laid over fewer epochs (``scale.schedule=compress``) the steps shrink in proportion,
    so the run makes the protocol's number of decays (200 epochs halving every 20, compressed into
    20: halving every 2). ``multistep`` multiplies lr by ``gamma`` after each epoch of ``milestones``
    (tensorpack's ``[(60, 4e-5), (75, 8e-6)]`` from 2e-4: milestones 60, 75, gamma 0.2), likewise
    scaled when compressed."""
    if cfg.schedule == "exponential":
        gamma = (cfg.lr_final / cfg.lr) ** (1.0 / epochs) if cfg.lr_final else 1.0
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if cfg.schedule == "step":
        step = cfg.step_epochs * epochs / protocol_epochs if protocol_epochs else float(cfg.step_epochs)
        if float(step).is_integer():
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(step), gamma=cfg.gamma)
        gamma = float(cfg.gamma)
        # several decays per epoch when compressed below one step per epoch (the epsilon absorbs
        # e / step landing a rounding error below an integer)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** math.floor(e / step + 1e-9))
    if cfg.schedule == "multistep":
        scale = epochs / protocol_epochs if protocol_epochs else 1.0
        milestones = [m * scale for m in cfg.get("milestones") or []]
        if all(float(m).is_integer() for m in milestones):
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(m) for m in milestones], gamma=cfg.gamma)
        gamma = float(cfg.gamma)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: gamma ** sum(e + 1e-9 >= m for m in milestones))
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    raise ValueError(f"optim.schedule={cfg.schedule!r} is unknown; allowed: exponential, step, multistep, constant")


class LatentWeightClipper:
    """After each step, clip latent weights of layers whose weight quantizer asks for it to [-1, 1].
    An ``optimizer`` that can clip inside its own step (``fold_latent_clip``: shift-AdaMax) is
    handed the weights it holds, and this clips only the rest."""

    def __init__(self, model: nn.Module, enabled: bool = True, optimizer: torch.optim.Optimizer | None = None):
        self.weights = [m.weight for m in model.modules()
                        if isinstance(m, QuantLayer) and m.clips_latent_weights] if enabled else []
        if self.weights and hasattr(optimizer, "fold_latent_clip"):
            folded = {id(w) for w in optimizer.fold_latent_clip(self.weights)}
            self.weights = [w for w in self.weights if id(w) not in folded]

    @torch.no_grad()
    def __call__(self) -> None:
        for w in self.weights:
            w.clamp_(-1.0, 1.0)
