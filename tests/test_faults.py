"""Faults injected into real runs: SIGKILL at random points then resume, a full disk before and during
training, concurrent multiruns on one runs root, two runs racing for one run name.

Part of `make test-faults`, which also runs tests/test_bad_inputs.py (bad CLI/config values, a flipped
byte in an archive, an unwritable runs root, a crafted pickle checkpoint) and the truncated-checkpoint
and NaN-loss tests of tests/test_train.py. At the end pytest prints the tally: faults injected /
survived, bad inputs tried / clearly rejected, runs lost (must be 0).

Every run is tiny (smoke scale, 300-600 examples, 1 torch thread).
"""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnnrepro import runs as run_files
from bnnrepro.errors import StorageError
from bnnrepro.train import fit
from conftest import compose

TINY = ["+paper=bnn", "scale=smoke", "scale.train_subset=600", "scale.epochs=3", "data.val_size=1000",
        "train.num_threads=1", "train.progress=false"]
KILL_TRIALS = 10


# --- helpers -------------------------------------------------------------------------------------------

def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _train_cmd(args) -> list[str]:
    return [sys.executable, "-m", "bnnrepro", "train", *args]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


def _completed(run: Path) -> bool:
    try:
        return json.loads((run / "summary.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError):
        return False


RESULT_KEYS = ("test_error", "best_val_error", "best_epoch", "final_test_error", "final_val_error",
               "epochs_done", "train_examples", "seed", "n_params")


def _same_result(a: Path, b: Path) -> None:
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert {k: sa[k] for k in RESULT_KEYS} == {k: sb[k] for k in RESULT_KEYS}
    assert _without_times(_rows(a)) == _without_times(_rows(b))
    ma, mb = (run_files.load_checkpoint(r / "last.pt")["model"] for r in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def _inode(path: Path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _quiet_fit(cfg) -> None:
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a killed process leaks it
    sys.stdout = sys.stderr = open(os.devnull, "w")
    fit(cfg)


_FORKSERVER = None


def _process(cfg):
    """A separate process running ``fit(cfg)``, forked from a server that has already imported torch
    and bnnrepro (a fresh interpreter per trial would spend seconds importing before each kill)."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["torch", "torch._dynamo", "bnnrepro.train", "hydra", "omegaconf", "test_faults"])
    return _FORKSERVER.Process(target=_quiet_fit, args=(cfg,))


def _epochs_checkpointed(run: Path) -> int:
    for name in ("last.pt", "previous.pt"):
        try:
            return int(torch.load(run / name, weights_only=True)["epoch"])
        except Exception:
            continue
    return 0


def _timed_run(cfg, run: Path) -> float:
    """Seconds from the run's config being written to the end of its process (where kills land)."""
    proc = _process(cfg)
    proc.start()
    while not (run / "config.yaml").is_file() and proc.is_alive():
        time.sleep(0.002)
    t0 = time.time()
    proc.join()
    return time.time() - t0


def _kill_during(cfg, run: Path, delay: float) -> bool:
    """Run ``cfg`` (a new run or a resume of ``run``) in another process and SIGKILL it ``delay`` s
    after it has started on the run (a new run: its config is written; a resume: it has rewritten
    metrics.jsonl). True if the kill interrupted the run (a fault was injected), False if the run had
    already completed."""
    before = _inode(run / "metrics.jsonl")
    started = ((lambda: (run / "config.yaml").is_file()) if not run.exists()
               else (lambda: _inode(run / "metrics.jsonl") not in (None, before)))
    proc = _process(cfg)
    proc.start()
    try:
        deadline = time.time() + 120
        while not started() and proc.is_alive() and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        if not proc.is_alive():
            return False
        proc.kill()  # SIGKILL; a process that ended since is_alive() is no error (os.kill raised there)
    finally:
        proc.join()
    return not _completed(run)


# --- SIGKILL at random points, then resume ---------------------------------------------------------------

def test_sigkill_at_random_points_then_resume_gives_identical_results(mnist_root, runs_dir, record_property):
    """>= 10 runs killed at random instants (some twice: the resume is killed too); each resumed run
    ends with exactly the metrics, summary and weights of an uninterrupted run (dropout on: the RNG
    state is part of the checkpoint)."""
    common = TINY + [f"data.root={mnist_root}"]
    reference = runs_dir / "reference"
    span = _timed_run(compose(common + ["run_name=reference"]), reference)
    assert _completed(reference)
    rng = random.Random(int(os.environ.get("BNNREPRO_FAULT_SEED", "0")))
    injected = survived = lost = trials = 0
    landed: dict[int, int] = {}  # runs by the epochs checkpointed when the last kill struck
    while injected < KILL_TRIALS and trials < 3 * KILL_TRIALS:
        trials += 1
        run = runs_dir / f"killed-{trials}"
        hits = _kill_during(compose(common + [f"run_name={run.name}"]), run, rng.uniform(0, span))
        if hits and rng.random() < 0.3:  # kill the resume as well
            hits += _kill_during(compose([f"resume={run}"]), run, rng.uniform(0, span * 0.7))
        if not hits:
            continue  # finished before the kill: no fault injected
        epochs_saved = _epochs_checkpointed(run)
        landed[epochs_saved] = landed.get(epochs_saved, 0) + 1
        injected += hits
        record_property("faults", hits)
        fit(compose([f"resume={run}"]))
        if not _completed(run):
            lost += 1
            record_property("runs_lost", 1)
        _same_result(reference, run)
        survived += hits
        record_property("faults_survived", hits)
    print(f"\nSIGKILL: {injected} kills over {trials} runs, {survived} survived, {lost} runs lost; "
          f"runs by epochs checkpointed at the kill: {dict(sorted(landed.items()))}")
    assert injected >= KILL_TRIALS and survived == injected and lost == 0


# --- full disk -----------------------------------------------------------------------------------------

def _no_file_growth():
    """preexec: writing any byte fails with EFBIG, as on a full disk (SIGXFSZ ignored, so the write
    returns an error instead of killing the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_full_runs_dir_fails_before_training(mnist_root, runs_dir, record_property):
    record_property("faults", 1)
    out = subprocess.run(_train_cmd(TINY + [f"data.root={mnist_root}"]), capture_output=True, text=True,
                         env=_env(), timeout=120, preexec_fn=_no_file_growth)
    assert out.returncode == 2, out.stderr
    assert f"runs directory {runs_dir} is not writable (File too large)" in out.stderr
    assert "Traceback" not in out.stderr and "epoch" not in out.stderr  # nothing trained
    assert not [p for p in runs_dir.iterdir() if p.is_dir()]  # no run directory was created


def test_disk_full_while_checkpointing_keeps_last_good_checkpoint(mnist_root, runs_dir, monkeypatch,
                                                                  record_property):
    """ENOSPC in the middle of epoch 2's checkpoint: a clear error naming the epoch and the run, the
    epoch-1 checkpoint intact, and the resumed run identical to an uninterrupted one."""
    record_property("faults", 1)
    common = TINY + [f"data.root={mnist_root}"]
    reference = fit(compose(common + ["run_name=reference"]))
    real_save, calls = torch.save, {"n": 0}

    def save_then_disk_full(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
            f.write(b"PK\x03\x04 partial")  # some bytes reach the disk, then it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        calls["n"] += 1
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_disk_full)
    with pytest.raises(StorageError, match=r"checkpoint of epoch 2 .*full.*No space left on device"):
        fit(compose(common + ["run_name=full"]))
    monkeypatch.setattr(torch, "save", real_save)
    run = runs_dir / "full"
    assert run_files.load_resumable(run)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))  # the partial temp file was removed
    assert not (run / "summary.json").exists()
    fit(compose([f"resume={run}"]))
    _same_result(reference, run)


# --- concurrency on one runs root ----------------------------------------------------------------------

def test_two_multiruns_on_one_runs_root_lose_and_clobber_nothing(mnist_root, runs_dir, tmp_path,
                                                                 record_property):
    """Two multiruns started together with the same seeds and the same sweep directory: 4 distinct
    completed runs, each with its own config and metrics, all 4 listed in the shared runs.txt."""
    record_property("faults", 1)
    sweep = tmp_path / "sweep"
    args = TINY + ["scale.epochs=1", "scale.train_subset=300", f"data.root={mnist_root}",
                   f"hydra.sweep.dir={sweep}", "seed=0,1"]
    procs = [subprocess.Popen(_train_cmd(["-m", *args]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    printed = [Path(line[5:]) for out, _ in outs for line in out.splitlines() if line.startswith("run: ")]
    runs = [p for p in runs_dir.iterdir() if p.is_dir()]
    lost = 4 - sum(_completed(r) for r in runs)
    record_property("runs_lost", max(lost, 0))
    assert len(printed) == 4 and len(set(printed)) == 4 and sorted(printed) == sorted(runs)
    assert lost == 0
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert f"seed: {summary['seed']}" in (run / "config.yaml").read_text()
        assert [r["epoch"] for r in _rows(run)] == [1]
    assert sorted(seed for run in runs for seed in [json.loads((run / "summary.json").read_text())["seed"]]) \
        == [0, 0, 1, 1]
    listed = (sweep / "runs.txt").read_text().split()
    assert sorted(listed) == sorted(str(r.resolve()) for r in runs)


def test_two_runs_racing_for_one_run_name(mnist_root, runs_dir, record_property):
    """The run directory is created exclusively: one run wins, the other stops at once naming the
    directory, and the winner's run is complete and untouched."""
    record_property("faults", 1)
    args = TINY + ["scale.epochs=1", "scale.train_subset=300", f"data.root={mnist_root}", "run_name=same"]
    procs = [subprocess.Popen(_train_cmd(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert f"run directory {runs_dir / 'same'} exists; resume it with resume=" in loser
    assert _completed(runs_dir / "same") and [r["epoch"] for r in _rows(runs_dir / "same")] == [1]
    record_property("runs_lost", 0 if _completed(runs_dir / "same") else 1)
