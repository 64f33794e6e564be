"""The hostile suite: what a careless or malicious user gives each command, tried against a finished
run that must survive every case untouched.

Each case is a command line and the fragment its refusal must contain. A case is *clearly rejected*
when the command exits 2 with that fragment and no traceback; otherwise it is *wrong*. After every
case the finished run's files are compared byte for byte (*runs lost*) and crafted files' markers are
looked for (*code executed*). ``make test-faults`` prints the tally (tests/conftest.py).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["+paper=bnn", "scale=smoke", "scale.train_subset=600", "scale.epochs=2", "data.val_size=1000",
        "train.num_threads=1", "train.progress=false"]
TRAIN = ["train", "+paper=bnn", "scale=smoke"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, request):
    """A completed tiny run (2 epochs of 600 examples), trained once for the module."""
    from conftest import data_root

    if data_root() is None:
        pytest.skip("MNIST archives not found")
    # in a fresh process: an in-process Hydra job leaves logging handlers on this session's streams
    root = tmp_path_factory.mktemp("hostile") / "runs"
    out = subprocess.run([sys.executable, "-m", "bnnrepro", "train", *TINY, f"runs_dir={root}", "run_name=done"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "BNNREPRO_DATA": str(data_root()), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "done"


def _digest(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def _crafted(tmp: Path, marker: Path) -> dict[str, Path]:
    """Files that would run ``touch marker`` if a loader executed them."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files = {}
    files["pickle"] = tmp / "evil.pt"
    files["pickle"].write_bytes(pickle.dumps({"format": "bnnrepro.checkpoint", "x": Evil()}))
    files["npz"] = tmp / "evil.bnn"
    np.savez(files["npz"], header=np.array([Evil()], dtype=object))
    run = tmp / "yaml-run"
    run.mkdir()
    (run / "config.yaml").write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    files["yaml"] = run
    bomb = tmp / "alias-run"
    bomb.mkdir()
    (bomb / "config.yaml").write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 8)}]\n" for p, n in zip("abcdefgh", "bcdefghi")))
    files["bomb"] = bomb
    files["text"] = tmp / "notes.txt"
    files["text"].write_text("not a checkpoint\n")
    return files


# (id, argv with {run} / {pickle} / {npz} / {yaml} / {text} / {tmp} placeholders, refusal fragment)
CASES = [
    # train: every value torch or a model would reject later, refused before anything is created
    ("lr-inf", [*TRAIN, "optim.lr=inf"], "optim.lr=inf must be a positive (finite) number"),
    ("lr-nan", [*TRAIN, "optim.lr=nan"], "optim.lr=nan must be a positive (finite) number"),
    ("lr-final-inf", [*TRAIN, "optim.lr_final=inf"], "optim.lr_final=inf must be a positive (finite)"),
    ("betas-one", [*TRAIN, "optim.betas=[0.9]"], "optim.betas=[0.9] must be two numbers in [0, 1)"),
    ("betas-range", [*TRAIN, "optim.betas=[1.5,0.9]"], "optim.betas=[1.5, 0.9] must be two numbers"),
    ("eps-zero", [*TRAIN, "optim.eps=0"], "optim.eps=0.0 must be a positive (finite) number"),
    ("eps-nan", [*TRAIN, "optim.eps=nan"], "optim.eps=nan must be a positive"),
    ("momentum", [*TRAIN, "optim.momentum=-1"], "optim.momentum=-1.0 must be in [0, 1)"),
    ("weight-decay", [*TRAIN, "optim.weight_decay=-1"], "optim.weight_decay=-1.0 must be a finite number >= 0"),
    ("weight-decay-inf", [*TRAIN, "optim.weight_decay=inf"], "optim.weight_decay=inf must be a finite number"),
    ("seed-negative", [*TRAIN, "seed=-1"], "seed=-1 must be in [0, 2**63 - 1]"),
    ("seed-huge", [*TRAIN, "seed=99999999999999999999"], "seed=99999999999999999999 must be in [0, 2**63 - 1]"),
    ("bn-eps-inf", [*TRAIN, "model.bn_eps=inf"], "model.bn_eps=inf must be a positive (finite) number"),
    ("threads-huge", [*TRAIN, "train.num_threads=100000"], "train.num_threads=100000 must be at most 1024"),
    ("width-inf", [*TRAIN, "scale.width_mult=inf"], "scale.width_mult=inf must be a positive (finite)"),
    ("width-nan", [*TRAIN, "model.width_mult=nan"], "model.width_mult=nan must be a positive (finite)"),
    ("val-all", [*TRAIN, "data.val_size=60000"], "data.val_size=60000 leaves no training examples"),
    ("batch-vs-split", [*TRAIN, "train.batch_size=100000"],
     "train.batch_size=100000 is larger than the 5000 training examples"),
    ("image-size", [*TRAIN, "data.image_size=0"], "data.image_size=0 must be a positive (finite) number"),
    ("extra-not-svhn", [*TRAIN, "data.use_extra=true"], "data.use_extra=true is only for svhn, not mnist"),
    ("model-too-big", [*TRAIN, "model.hidden=[100000000]"], "parameters: about"),
    ("run-name-long", [*TRAIN, "run_name=" + "a" * 300], "run_name is 300 bytes long; allowed: at most 200"),
    ("logger-mode", [*TRAIN, "logger.mode=bogus"], "logger.mode='bogus' is not allowed; allowed: online"),
    ("model-cannot-take-input", ["train", "+experiment=dorefa_svhn_A", "data=mnist", "data.image_size=null",
                                 "scale=smoke"], "cannot be built for mnist input (1, 28, 28)"),
    ("resume-crafted-yaml", ["train", "resume={yaml}"], "config.yaml"),
    ("resume-empty", ["train", "resume="], "resume= is empty"),
    ("resume-blank", ["train", "resume=' '"], "resume= is empty"),
    ("resume-missing", ["train", "resume={tmp}/nope"], "no such run directory"),
    ("resume-override", ["train", "resume={run}", "optim.lr=0.5"], "would change what it computes: optim.lr=0.5"),
    ("resume-group", ["train", "resume={run}", "model=bnn_convnet"], "would change what it computes: model="),
    ("resume-alias-bomb", ["train", "resume={bomb}"], "anchor or alias"),
    # eval, pack, compare: numbers that used to mean "all" or crash inside torch
    ("eval-batch-zero", ["eval", "{run}", "train.eval_batch_size=0"], "train.eval_batch_size=0 must be a positive"),
    ("eval-text-file", ["eval", "{text}"], "cannot be loaded safely"),
    ("eval-pickle", ["eval", "{pickle}"], "cannot be loaded safely"),
    ("eval-split", ["eval", "{run}", "--split", "holdout"], "invalid choice: 'holdout'"),
    ("compare-n-zero", ["compare", "{run}", "-n", "0"], "argument -n: '0' must be a positive integer"),
    ("compare-n-negative", ["compare", "{run}", "-n", "-3"], "must be a positive integer"),
    ("compare-random-zero", ["compare", "{run}", "--random", "0"], "argument --random: '0' must be a positive"),
    ("compare-crafted-artifact", ["compare", "{run}", "--artifact", "{npz}"], "evil.bnn"),
    ("pack-shape-values", ["pack", "{run}", "--input-shape", "1,2", "--out", "{tmp}/x.bnn"],
     "--input-shape 1,2 has 2 values; the model was trained on 1,28,28"),
    ("pack-shape-text", ["pack", "{run}", "--input-shape", "a,b", "--out", "{tmp}/x.bnn"],
     "argument --input-shape: 'a,b' must be positive integers"),
    ("pack-pickle", ["pack", "{pickle}"], "cannot be loaded safely"),
    ("bench-repeats", ["bench", "--repeats", "0"], "argument --repeats: '0' must be a positive integer"),
    ("bench-threads", ["bench", "--threads", "0"], "argument --threads: '0' must be a positive integer"),
    ("bench-protocol", ["bench", "--train", "--protocols", "bogus"], "unknown protocol(s) bogus; allowed:"),
    # robustness, table, summary
    ("robustness-level-nan", ["robustness", "--noise", "additive", "--levels", "nan", "{run}"],
     "additive needs sigma >= 0, got nan"),
    ("robustness-draws", ["robustness", "--noise", "additive", "--draws", "0", "{run}"], "--draws 0 must be"),
    ("robustness-noise", ["robustness", "--noise", "bogus", "{run}"], "--noise 'bogus' is unknown; allowed:"),
    ("robustness-pickle", ["robustness", "--noise", "additive", "{pickle}"], "cannot be loaded safely"),
    ("table-target", ["table", "nosuch"], "unknown target 'nosuch'; allowed:"),
    ("table-seed", ["table", "bnn", "seed=abc", "--no-train"], "seed='abc' must be comma-separated integers"),
    ("table-scale", ["table", "bnn", "scale=nosuch", "--no-train"], "no such option in group `scale`"),
    ("table-jobs", ["table", "bnn", "--jobs", "0", "--no-train"], "must be positive integers"),
    ("summary-text", ["summary", "{text}"], "cannot be loaded safely"),
    ("summary-pickle", ["summary", "{pickle}"], "cannot be loaded safely"),
    ("runs-missing", ["runs", "{tmp}/nope"], "no such run directory, sweep folder or runs.txt"),
    ("runs-status", ["runs", "--status", "bogus", "{run}"], "--status 'bogus' is unknown; allowed:"),
    ("runs-group-key", ["runs", "--group-by", "nosuch.key", "{run}"], "no run has the key 'nosuch.key'"),
    ("plot-metric", ["plot", "{run}", "--metric", "bogus", "--out", "{tmp}/p.png"],
     "--metric 'bogus' is not a metrics.jsonl field; allowed:"),
    ("plot-checkpoint", ["plot", "{pickle}", "--out", "{tmp}/p.png"], "not a run directory, sweep folder or runs.txt"),
    ("command", ["trian"], "unknown command 'trian'"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input(argv, fragment, finished, tmp_path, monkeypatch, capsys, record_property):
    from bnnrepro import cli

    marker = tmp_path / "code-ran"
    places = {"run": str(finished), "tmp": str(tmp_path),
              **{k: str(v) for k, v in _crafted(tmp_path, marker).items()}}
    args = [a.format(**places) for a in argv]
    monkeypatch.setenv("BNNREPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    before = _digest(finished)
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as err:  # noqa: BLE001 - an escaped exception is a traceback shown to a user
        code, escaped = 1, err
    else:
        escaped = None
    err = capsys.readouterr().err
    rejected = code == 2 and fragment in err and "Traceback" not in err and escaped is None
    lost = _digest(finished) != before
    made = [p for p in (tmp_path / "runs").rglob("*")] if (tmp_path / "runs").exists() else []
    record_property("bad_inputs", 1)
    record_property("wrong", 0 if rejected and not made else 1)
    record_property("runs_lost", int(lost))
    record_property("code_executed", int(marker.exists()))
    assert not marker.exists(), "a crafted file ran code"
    assert not lost, "the finished run's files changed"
    assert rejected, f"exit {code}, escaped {escaped!r}, stderr: {err[-600:]}"
    assert not made, f"a refusal left files behind: {made}"


def test_suite_covers_every_command():
    """Every command of the CLI but completion has hostile cases (a new command must get some)."""
    from bnnrepro.cli import COMMANDS

    covered = {c[1][0] for c in CASES}
    assert set(COMMANDS) - {"completion"} <= covered | {"trian"}, set(COMMANDS) - covered
