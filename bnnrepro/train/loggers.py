"""Metrics loggers. metrics.jsonl is always written by the loop; ``logger.name`` adds one more:
``csv`` (metrics.csv beside it), ``tensorboard`` (event files under ``<run>/tensorboard``; needs the
``tensorboard`` package) or ``wandb`` (W&B). ``local`` adds nothing."""
from __future__ import annotations

import csv
import io
import os

from .. import runs

CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


class LocalLogger:
    def __init__(self, cfg=None, run_dir=None):
        pass

    def log(self, row: dict) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class CsvLogger(LocalLogger):
    """``metrics.csv``: the epoch lines of ``metrics.jsonl`` as a table, rewritten atomically after
    every epoch, so a resumed run's file holds its finished epochs once (as metrics.jsonl does)."""

    def __init__(self, cfg, run_dir):
        self.path = run_dir / CSV
        self.rows = [r for r in runs.read_jsonl(run_dir / runs.METRICS) if "epoch" in r]  # a resume's epochs

    def log(self, row: dict) -> None:
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        runs.atomic_write_text(self.path, text.getvalue())


class TensorBoardLogger(LocalLogger):
    """Scalars by epoch under ``<run>/tensorboard`` (``tensorboard --logdir runs``); a resumed run
    purges the events after its last finished epoch."""

    def __init__(self, cfg, run_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("logger.name=tensorboard needs the tensorboard package: pip install tensorboard") from None
        done = [r["epoch"] for r in runs.read_jsonl(run_dir / runs.METRICS) if "epoch" in r]
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                    purge_step=max(done) + 1 if done else None)

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=row["epoch"])
        self.writer.flush()

    def finish(self, summary: dict) -> None:
        for key in ("test_error", "best_val_error", "final_test_error", "wall_time_s"):
            if isinstance(summary.get(key), (int, float)):
                self.writer.add_scalar(f"summary/{key}", summary[key], global_step=summary.get("epochs_done", 0))
        self.writer.close()


class WandbLogger(LocalLogger):
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


# logger.name -> logger; config.CHOICES["logger.name"] lists the same names (tests check it)
LOGGERS = {"local": LocalLogger, "csv": CsvLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def build_logger(cfg, run_dir):
    return LOGGERS[cfg.logger.name](cfg, run_dir)
