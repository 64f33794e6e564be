"""Helpers (no tests) for the report tests: fixture run directories with a resolved config.yaml composed
from the real presets, a summary.json as the training loop writes it, and a metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from conftest import compose

CODE = {"package": "0.1.0", "git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False}


def data_here(cfg) -> str | None:
    """A fake data check: MNIST is here, nothing else is."""
    return None if cfg.data.name == "mnist" else f"{cfg.data.name}: 1 required file(s) not found"


def no_cuda() -> bool:
    return False


def write_config(run: Path, overrides: list[str], seed: int, scale: str = "smoke") -> dict:
    cfg = compose(list(overrides) + [f"scale={scale}", f"seed={seed}"])
    run.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    return OmegaConf.to_container(cfg, resolve=True)


def write_run(root: Path, name: str, overrides: list[str], seed: int, test_error: float | None,
              scale: str = "smoke", epochs: int = 2, wall: float = 12.0, **summary_extra) -> Path:
    """A completed run (``test_error`` given) or an interrupted one (``test_error=None``)."""
    run = root / name
    cfg = write_config(run, overrides, seed, scale)
    rows = [{"epoch": e, "lr": 1e-3, "train_loss": 1.0 / e, "val_error": 20.0 / e, "val_loss": 0.5 / e,
             "test_error": 21.0 / e, "test_loss": 0.6 / e, "best_val_error": 20.0 / e,
             "best_test_error": 21.0 / e, "epoch_time_s": wall / epochs, "images_per_s": 1000.0}
            for e in range(1, epochs + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if test_error is None:
        return run
    summary = {"status": "completed", "test_error": test_error, "best_val_error": test_error - 0.1,
               "best_epoch": epochs, "final_test_error": test_error, "epochs_done": epochs, "epochs": epochs,
               "wall_time_s": wall, "epoch_time_s": wall / epochs, "dataset": cfg["data"]["name"],
               "model": cfg["model"]["name"], "quantizer": {}, "scale": scale, "width_mult": 0.0625,
               "seed": seed, "paper": cfg.get("paper"), "experiment": cfg.get("experiment"), "n_params": 1,
               "code_version": CODE, "environment": {}, "data": {}}
    summary.update(summary_extra)
    (run / "summary.json").write_text(json.dumps(summary))
    return run
