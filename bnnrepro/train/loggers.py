"""Metrics loggers. metrics.jsonl is always written by the loop; ``logger.name=wandb`` adds W&B."""
from __future__ import annotations

import os


class LocalLogger:
    def log(self, row: dict) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class WandbLogger:
    """Weights & Biases; offline mode when no API key is configured (or ``logger.mode`` says so)."""

    def __init__(self, cfg, run_dir):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("logger.name=wandb needs the wandb package: pip install wandb") from None
        from omegaconf import OmegaConf

        mode = cfg.logger.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=cfg.logger.project, name=run_dir.name, dir=str(run_dir), mode=mode,
                              config=OmegaConf.to_container(cfg, resolve=True), resume="allow",
                              id=run_dir.name.replace("/", "-")[-64:])

    def log(self, row: dict) -> None:
        self.run.log(row, step=row["epoch"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish()


def build_logger(cfg, run_dir):
    return WandbLogger(cfg, run_dir) if cfg.logger.name == "wandb" else LocalLogger()
