"""Training throughput of any preset on random data of the dataset's official shape and size.

For measuring epoch time where the dataset itself is not available (CIFAR-10, SVHN here): the real
training loop (`bnnrepro.train.fit`, same model, optimizer, quantizers, evaluation and checkpoints)
runs on uint8 noise with random labels, split exactly as the real files would be. The errors it
prints mean nothing; the epoch times and images/s are what the real data would give.

    python scripts/train_throughput.py +experiment=bnn_cifar10_theano device=cuda scale.epochs=3
    python scripts/train_throughput.py +paper=bnn device=cuda scale.epochs=3 train.compile=true

Prints one JSON line per run: the run directory, the epoch times and images/s of each epoch. The
run's summary.json gets status ``synthetic_data``, so `bnnrepro table` reports it as not completed
and never counts its errors.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import torch

from bnnrepro import cli, train
from bnnrepro.data import splits as data_splits
from bnnrepro import runs as run_records
from bnnrepro.train import loop

# official train / test split sizes (validation comes out of train as configured)
SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000), "cifar10": (50_000, 10_000),
         "svhn": (73_257, 26_032)}


def synthetic(spec):
    if spec.name not in SIZES:
        sys.exit(f"no official sizes known for {spec.name}; known: {', '.join(SIZES)}")
    n_train, n_test = SIZES[spec.name]
    g = torch.Generator().manual_seed(0)

    def part(n):
        x = torch.randint(0, 256, (n, *spec.input_shape), dtype=torch.uint8, generator=g)
        return x, torch.randint(0, spec.num_classes, (n,), generator=g)

    return dataclasses.replace(spec, locate=lambda *a, **k: {},
                               read=lambda located: {"train": part(n_train), "test": part(n_test)})


def main(overrides: list[str]) -> int:
    real_get, real_fit = data_splits.get, train.fit
    data_splits.get = lambda name: synthetic(real_get(name))
    loop.datasets.check = lambda *a, **k: {}
    runs = []

    def fit_and_report(cfg):
        run_dir = real_fit(cfg)
        record = run_records.read_run(run_dir)
        rows, summary = record.metric_rows(), dict(record.summary)
        summary.update(status="synthetic_data", data_note="random pixels and labels: timing only")
        run_records.atomic_write_json(run_dir / run_records.SUMMARY, summary)  # tables never count it
        runs.append({"run": str(run_dir), "data": f"synthetic {cfg.data.name} (random pixels and labels)",
                     "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "epoch_time_s": [round(r["epoch_time_s"], 3) for r in rows],
                     "train_time_s": [round(r["train_time_s"], 3) for r in rows],
                     "images_per_s": [round(r["images_per_s"]) for r in rows]})
        return run_dir

    train.fit = fit_and_report
    status = cli.main(["train", *overrides, "train.progress=false"])
    for run in runs:
        print(json.dumps(run))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
