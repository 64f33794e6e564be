"""A real full disk: a small tmpfs mounted for the test (skipped where mounting is not permitted),
filled by the package's own writes. Whatever the OS or torch raises (``OSError: No space left on
device``, torch's ``RuntimeError: [enforce fail at inline_container.cc] ... file write failed``)
reaches the user as one :class:`StorageError`, and the previous file is kept.
Part of `make test-faults`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnrepro import runs
from bnnrepro.errors import StorageError
from conftest import data_root

MiB = 1 << 20
TINY = ["+paper=bnn", "scale=smoke", "scale.train_subset=600", "data.val_size=1000", "train.num_threads=1",
        "train.progress=false"]


class Tmpfs:
    def __init__(self, path: Path):
        self.path = path

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)

    def fill(self) -> None:
        """Leave no free byte: one filler file as big as the space left."""
        with open(self.path / "filler", "wb", buffering=0) as f:
            for size in (65536, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={4 * MiB}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield Tmpfs(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _state(n_floats: int, epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((n_floats,), float(epoch))}}


def _no_temp_files(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


def test_torch_checkpoint_on_a_full_disk_keeps_the_previous(tmpfs, record_property):
    record_property("faults", 1)
    run = tmpfs.path / "run"
    runs.save_last(run, _state(64 * 1024, 1))          # 256 KiB
    with pytest.raises(StorageError, match=r"could not write .*last\.pt.*MiB free there"):
        runs.save_last(run, _state(2 * MiB, 2))        # 8 MiB on a 4 MiB disk
    assert runs.load_resumable(run)["epoch"] == 1      # the previous one, kept as previous.pt
    assert _no_temp_files(run)
    runs.save_checkpoint(run / runs.BEST, _state(64 * 1024, 1))
    with pytest.raises(StorageError):
        runs.save_checkpoint(run / runs.BEST, _state(2 * MiB, 2))
    assert runs.load_checkpoint(run / runs.BEST)["epoch"] == 1
    assert _no_temp_files(run)


def test_json_and_metric_lines_on_a_full_disk(tmpfs, record_property):
    record_property("faults", 2)
    summary = tmpfs.path / "summary.json"
    runs.atomic_write_json(summary, {"status": "completed", "n": 1})
    tmpfs.fill()
    with pytest.raises(StorageError, match="No space left on device"):
        runs.atomic_write_json(summary, {"status": "completed", "n": 2, "pad": "x" * 100_000})
    assert json.loads(summary.read_text())["n"] == 1
    with pytest.raises(StorageError, match="No space left on device"):
        runs.append_line(tmpfs.path / "metrics.jsonl", json.dumps({"epoch": 1, "pad": "x" * 100_000}))
    assert _no_temp_files(tmpfs.path)


def _train(*args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnnrepro", "train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


def test_training_run_on_a_disk_that_fills_up_then_resumed(tmpfs, tmp_path, record_property):
    """The disk holds epoch 1's checkpoints but not epoch 2's: a clear message, epoch 1 kept, and
    after space is freed the resumed run completes with every epoch once."""
    record_property("faults", 2)
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found")
    common = [*TINY, f"data.root={root}"]
    ref = _train(*common, "scale.epochs=1", f"runs_dir={tmp_path / 'ref'}", "run_name=ref")
    assert ref.returncode == 0, ref.stderr
    best, last = ((tmp_path / "ref" / "ref" / name).stat().st_size for name in (runs.BEST, runs.LAST))
    # room for best + last and a new best, not for a second last beside the first
    tmpfs.resize(best + last + max(best, last // 2) + 128 * 1024)
    out = _train(*common, "scale.epochs=3", f"runs_dir={tmpfs.path}", "run_name=full")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "could not write the checkpoint of epoch 2" in out.stderr
    assert "the last complete checkpoint is kept" in out.stderr and "resume=" in out.stderr
    run = tmpfs.path / "full"
    assert runs.load_resumable(run)["epoch"] == 1 and not (run / "summary.json").exists()
    assert _no_temp_files(run)
    tmpfs.resize(64 * MiB)
    done = _train(f"resume={run}")
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in runs.read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_disk_too_small_for_the_first_checkpoint_leaves_no_half_run(tmpfs, record_property):
    record_property("faults", 1)
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found")
    tmpfs.resize(256 * 1024)
    out = _train(*TINY, f"data.root={root}", "scale.epochs=2", f"runs_dir={tmpfs.path}", "run_name=tiny")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "could not write the checkpoint of epoch 1" in out.stderr
    assert not (tmpfs.path / "tiny").exists()  # nothing worth keeping, so nothing left behind
