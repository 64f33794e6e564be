"""One writer per run directory, strict resume, and runs that never started.

A real run (trained once per module, in a subprocess) is copied for each test; each case runs the
real command line in a subprocess and checks its exit code, its one-line message (no traceback)
and that the run's files are as they were. Part of `make test-faults` (bad inputs and faults tallied).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bnnrepro import runs
from bnnrepro.report import launch
from conftest import compose, data_root

TINY = ["+paper=bnn", "scale=smoke", "scale.train_subset=600", "scale.epochs=2", "data.val_size=1000",
        "train.num_threads=1", "train.progress=false"]


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bnnrepro", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _refused(out: subprocess.CompletedProcess, *phrases: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "bnnrepro: error:" in out.stderr
    for phrase in phrases:
        assert phrase in out.stderr, out.stderr


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != runs.LOCK}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch run, its summary removed: an interrupted run at its last epoch (resuming
    it trains nothing and writes the summary)."""
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found")
    runs_root = tmp_path_factory.mktemp("lock-runs")
    out = _cli("train", *TINY, f"data.root={root}", f"runs_dir={runs_root}", "run_name=base")
    assert out.returncode == 0, out.stderr
    (runs_root / "base" / "summary.json").unlink()
    return runs_root / "base"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "runs" / "r"
    shutil.copytree(trained, copy)
    return copy


class _Holder:
    """Another process holding a run's lock, as a training process would."""

    def __init__(self, run: Path):
        code = textwrap.dedent(f"""
            import sys, time
            from bnnrepro import runs
            lock = runs.lock_run({str(run)!r})
            print("locked", flush=True)
            time.sleep(120)
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


# --- the lock ------------------------------------------------------------------------------------------

def test_second_writer_is_refused_naming_the_live_process(run, record_property):
    record_property("bad_inputs", 1)
    before = _snapshot(run)
    holder = _Holder(run)
    try:
        assert runs.lock_holder(run)["pid"] == holder.proc.pid
        out = _cli("train", f"resume={run}")
        _refused(out, f"pid {holder.proc.pid}", "being written by", "python")
        assert _snapshot(run) == before  # no epoch appended, no summary
    finally:
        holder.kill()


def test_lock_left_by_a_killed_process_is_taken_over(run, record_property):
    record_property("faults", 1)
    holder = _Holder(run)
    holder.kill()  # SIGKILL: the kernel drops the lock; the file still names the dead holder
    assert json.loads((run / runs.LOCK).read_text())["pid"] == holder.proc.pid
    assert runs.lock_holder(run) is None
    out = _cli("train", f"resume={run}")
    assert out.returncode == 0, out.stderr
    assert f"left locked by pid {holder.proc.pid}" in out.stderr and "taking the lock over" in out.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    epochs = [r["epoch"] for r in runs.read_jsonl(run / "metrics.jsonl")]
    assert epochs == [1, 2]
    assert runs.lock_holder(run) is None and (run / runs.LOCK).read_text() == ""  # released on exit


def test_a_lock_in_this_process_blocks_a_second_one(run):
    with runs.lock_run(run):
        with pytest.raises(runs.lock.RunLocked, match=f"pid {os.getpid()}"):
            runs.lock_run(run)
    runs.lock_run(run).release()  # free again


def test_a_run_being_trained_is_listed_running_and_not_resumed_by_table(run, capsys):
    interrupted = SimpleNamespace(path=run)
    plan = SimpleNamespace(reproduced=True, blocked=None, config=object(), row=SimpleNamespace(scale=None, init_from_row=None),
                           missing=[], interrupted={0: interrupted})
    assert [j.what for j in launch.plan_jobs([plan], "quick", run.parent)] == ["resume 1 interrupted run(s)"]
    assert runs.frame([run])["status"].tolist() == ["interrupted"]
    holder = _Holder(run)
    try:
        assert runs.frame([run])["status"].tolist() == ["running"]  # what `bnnrepro runs` shows
        assert launch.plan_jobs([plan], "quick", run.parent) == []
        assert f"not resuming {run}: it is being trained by pid {holder.proc.pid}" in capsys.readouterr().err
    finally:
        holder.kill()


# --- strict resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "' '"])
def test_empty_resume_is_refused(value, tmp_path, record_property):
    record_property("bad_inputs", 1)
    out = _cli("train", f"resume={value}", f"runs_dir={tmp_path}")
    _refused(out, "resume= is empty")
    assert list(tmp_path.iterdir()) == []  # no run started


@pytest.mark.parametrize("override", ["optim.lr=0.5", "seed=3", "scale=quick", "train.epochs=5",
                                      "train.batch_size=50", "model=bnn_convnet"])
def test_resume_refuses_overrides_that_change_the_computation(run, override, record_property):
    record_property("bad_inputs", 1)
    before = _snapshot(run)
    out = _cli("train", f"resume={run}", override)
    _refused(out, "would change what it computes", override)
    assert _snapshot(run) == before


def test_resume_applies_and_records_safe_overrides_and_warns_on_threads(run):
    root = data_root()
    out = _cli("train", f"resume={run}", f"data.root={root}", "train.num_threads=2")
    assert out.returncode == 0, out.stderr
    assert "warning: resuming with num_threads 2 where the run so far used 1" in out.stderr
    summary = json.loads((run / "summary.json").read_text())
    [record] = summary["resumes"]
    assert record["after_epoch"] == 2 and record["changed"] == ["num_threads: 1 -> 2"]
    assert sorted(record["applied"]) == sorted([f"data.root={root}", "train.num_threads=2"])


def _edit_config(run: Path, edit) -> None:
    path = run / "config.yaml"
    path.write_text(edit(path.read_text()))


@pytest.mark.parametrize("edit, phrase", [
    (lambda t: re.sub(r"(?m)^seed: 0$", "seed: 7", t), "seed: 0 -> 7"),
    (lambda t: t.replace("  lr: ", "  lr: 1", 1), "optim.lr"),
    (lambda t: t + "bogus: 1\n", "does not fit the config schema: Key 'bogus'"),
    (lambda t: re.sub(r"(?m)^seed: 0$", "seed: ${oc.env:HOME}", t), "interpolation at seed"),
    (lambda t: "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
               "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n" + t,
     "anchor or alias"),
    (lambda t: t + "# " + "x" * (1 << 20) + "\n", "over the"),
    (lambda t: "- a list\n", "not a mapping"),
    (lambda t: "seed: [unclosed\n", "not valid YAML"),
    (lambda t: "a: " + "[" * 5000 + "\n", "nested too deeply"),
], ids=["seed", "lr", "unknown-key", "interpolation", "alias-bomb", "huge", "list", "invalid", "deep"])
def test_resume_refuses_an_edited_or_hostile_config(run, edit, phrase, record_property):
    record_property("bad_inputs", 1)
    _edit_config(run, edit)
    before = _snapshot(run)
    t0 = time.time()
    out = _cli("train", f"resume={run}", timeout=60)
    _refused(out, phrase)
    assert time.time() - t0 < 30
    assert _snapshot(run) == before


# --- runs that never started -------------------------------------------------------------------------------

def test_a_directory_killed_before_its_config_is_resumable_by_name(tmp_path, record_property):
    record_property("faults", 1)
    root = data_root()
    if root is None:
        pytest.skip("MNIST archives not found")
    half = tmp_path / "half"
    half.mkdir()  # what a kill between mkdir and config.yaml leaves
    _refused(_cli("train", f"resume={half}"), "created but never started", "run_name=half")
    out = _cli("train", *TINY, "scale.epochs=1", f"data.root={root}", f"runs_dir={tmp_path}", "run_name=half")
    assert out.returncode == 0, out.stderr
    assert "reusing" in out.stderr
    assert json.loads((half / "summary.json").read_text())["status"] == "completed"


def test_a_started_run_name_is_never_reused(run, record_property):
    record_property("bad_inputs", 1)
    out = _cli("train", *TINY, f"data.root={data_root()}", f"runs_dir={run.parent}", f"run_name={run.name}")
    _refused(out, "exists; resume it with resume=")


def test_an_error_before_the_first_checkpoint_removes_the_new_run(runs_dir, mnist_root, monkeypatch):
    from bnnrepro.train import fit, loop

    def broken(*args, **kwargs):
        raise ValueError("the model factory refused")

    monkeypatch.setattr(loop, "build_model", broken)
    with pytest.raises(ValueError, match="model factory refused"):
        fit(compose(TINY + [f"data.root={mnist_root}", "run_name=gone"]))
    assert not (runs_dir / "gone").exists()


def test_a_readers_momentary_check_does_not_refuse_a_writer(run):
    """`bnnrepro runs` (runs.lock_holder) takes a shared lock for an instant: a writer starting in
    that instant waits for it instead of refusing."""
    import fcntl
    import threading

    fd = os.open(run / runs.LOCK, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.3, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd))).start()
    with runs.lock_run(run):
        assert runs.lock_holder(run)["pid"] == os.getpid()


def test_python_api_resume_keeps_the_data_root_given(run, tmp_path):
    """fit(cfg) outside Hydra has no overrides to read: the data root given is taken (and recorded)."""
    from bnnrepro.train import loop

    root = tmp_path / "elsewhere"
    shutil.copytree(data_root(), root)
    cfg = compose([f"resume={run}", f"data.root={root}"])
    prep = loop.prepare(cfg, held := [])
    try:
        assert prep.cfg.data.root == str(root) and prep.applied == [f"data.root={root}"]
    finally:
        for lock in held:
            lock.release()
