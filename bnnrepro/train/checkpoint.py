"""Rebuild a trained model from a run's checkpoint (the checkpoint files are :mod:`bnnrepro.runs`')."""
from __future__ import annotations

from pathlib import Path

from .. import runs
from ..errors import CheckpointError, ConfigError


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


def init_weights(model, source: str | Path) -> dict:
    """``train.init_from``: load the model weights of ``source`` (a run directory: its best checkpoint,
    else its last; or a checkpoint file) into ``model``, every parameter and buffer matched by name and
    shape. Returns the record of the source for summary.json."""
    path = runs.resolve_checkpoint(Path(str(source)).expanduser(), "best")
    state = runs.load_checkpoint(path)
    theirs = state.get("model")
    if not isinstance(theirs, dict):
        raise CheckpointError(f"train.init_from: checkpoint {path} has no model weights")
    mine = model.state_dict()
    for key, value in mine.items():  # in the model's order: the first layer that differs is named
        if key not in theirs:
            raise ConfigError(f"train.init_from: layer {key} of this model is not in {path}")
        if tuple(theirs[key].shape) != tuple(value.shape):
            raise ConfigError(f"train.init_from: layer {key} has shape {tuple(theirs[key].shape)} there, "
                              f"{tuple(value.shape)} here")
    extra = [key for key in theirs if key not in mine]
    if extra:
        raise ConfigError(f"train.init_from: layer {extra[0]} of {path} is not in this model")
    # BatchNorm's running statistics come too: they belong to the weights loaded, so the model starts
    # as the source model exactly (evaluated before any step it has the source's error), not
    # normalizing trained weights' outputs with mean 0 and variance 1. The optimizer starts fresh.
    model.load_state_dict(theirs)
    config = state.get("config") or {}
    return {"path": str(path), "epoch": state.get("epoch"), "config_hash": state.get("config_hash"),
            "seed": config.get("seed")}
