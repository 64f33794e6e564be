"""Rebuild a trained model from a run's checkpoint (the checkpoint files are :mod:`bnnrepro.runs`')."""
from __future__ import annotations

from pathlib import Path

from .. import runs


def load_trained(path_or_run: str | Path, which: str = "best", map_location="cpu"):
    """Rebuild the trained model from one read of its checkpoint: ``(model, cfg, input_shape)``,
    the model in eval mode."""
    from omegaconf import OmegaConf

    from .factory import build_model

    state = runs.load_checkpoint(runs.resolve_checkpoint(path_or_run, which), map_location=map_location)
    cfg = OmegaConf.create(state["config"])
    shape = tuple(state["input_shape"])
    model = build_model(cfg, shape, state["num_classes"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, shape


def load_model(path_or_run: str | Path, which: str = "best", map_location="cpu"):
    """Rebuild the trained model from a checkpoint's config; returns ``(model, cfg)`` in eval mode."""
    model, cfg, _ = load_trained(path_or_run, which, map_location)
    return model, cfg
