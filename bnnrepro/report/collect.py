"""Completed runs as a pandas frame: what the tables aggregate (runs are read by :mod:`bnnrepro.runs`)."""
from __future__ import annotations

import pandas as pd

from ..runs import Run


def to_frame(runs: list[Run]) -> pd.DataFrame:
    """One line per completed run: what the tables aggregate."""
    rows = []
    for r in runs:
        s = r.summary
        q = s.get("quantizer") or {}
        rows.append({
            "run_id": r.id, "path": str(r.path), "seed": s["seed"], "scale": s["scale"],
            "test_error": float(s["test_error"]), "best_val_error": s.get("best_val_error"),
            "best_epoch": s.get("best_epoch"), "final_test_error": s.get("final_test_error"),
            "test_perplexity": s.get("test_perplexity"), "test_top5_error": s.get("test_top5_error"),
            "epochs_done": s["epochs_done"], "epochs": s.get("epochs"), "wall_time_s": float(s["wall_time_s"]),
            "code_version": r.code, "experiment": s.get("experiment"), "paper": s.get("paper"),
            "dataset": s.get("dataset"), "model": s.get("model"), "w_bits": q.get("w_bits"),
            "a_bits": q.get("a_bits"), "g_bits": q.get("g_bits"),
        })
    return pd.DataFrame(rows)
