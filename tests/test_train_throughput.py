"""scripts/train_throughput.py: the real loop on random data of the official shape, never counted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bnnrepro import runs as run_records

REPO = Path(__file__).resolve().parents[1]


def test_throughput_runs_without_the_data_and_tables_never_count_it(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "BNNREPRO_RUNS": str(runs), "BNNREPRO_DATA": str(tmp_path / "no-data-here"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "scripts/train_throughput.py", "+experiment=bnn_mnist_theano",
                          "scale=smoke", "scale.epochs=2", "scale.train_subset=300", "train.num_threads=1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["data"].startswith("synthetic mnist")
    assert len(report["epoch_time_s"]) == len(report["images_per_s"]) == 2
    assert all(t > 0 for t in report["epoch_time_s"]) and all(r > 0 for r in report["images_per_s"])
    run_dir = Path(report["run"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "synthetic_data" and summary["train_examples"] == 300
    scan = run_records.scan(runs)
    assert not scan.completed
    assert any("synthetic_data" in str(p) for p in scan.problems)
