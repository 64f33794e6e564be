"""Bad input fails fast from the real CLI with a message naming the problem, and leaves no run that
claims to be completed.

Refusals that only re-check validation call ``bnnrepro.cli.main`` in this process (same code path
as the console script, without a fresh interpreter per case); the refusals that need a real
process -- data missing or corrupt, an unwritable runs root, one config error end to end -- run
``python -m bnnrepro``."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

TIMES: dict[str, float] = {}


def _cli(args, env=None, cwd=None):
    """``python -m bnnrepro args`` in a fresh process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bnnrepro", *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=120, cwd=cwd)
    TIMES[" ".join(args)] = time.perf_counter() - t0
    return out


@pytest.fixture
def cli(monkeypatch, capsys):
    """``bnnrepro args`` in this process: ``cli(args, env)`` -> returncode, stdout, stderr."""
    from bnnrepro import cli as cli_module

    def run(args, env=None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        t0 = time.perf_counter()
        try:
            code = cli_module.main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        TIMES[" ".join(args)] = time.perf_counter() - t0
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def _completed_runs(root: Path) -> list[Path]:
    return [p for p in root.rglob("summary.json") if json.loads(p.read_text()).get("status") == "completed"]


CONFIG_CASES = [
    (["data.name=cifar100"], "data.name='cifar100' is unknown; allowed:"),
    (["model.name=resnet"], "model.name='resnet' is unknown; allowed:"),
    (["quant.weight=sgn"], "quant.weight='sgn' is unknown; allowed:"),
    (["quant.activation=tanh"], "quant.activation='tanh' is unknown; allowed:"),
    (["optim.name=lamb"], "optim.name='lamb' is not allowed; allowed: adam"),
    (["train.epochs=0"], "train.epochs=0 must be a positive"),
    (["train.batch_size=-5"], "train.batch_size=-5 must be a positive"),
    (["quant.w_bits=3"], "quant.w_bits=3 is not valid for quantizer 'sign'; allowed: 1"),
    (["model.dropout_hidden=1.5"], "model.dropout_hidden=1.5 must be in [0, 1)"),
    (["train.loss=hinge3"], "train.loss='hinge3' is not allowed"),
    (["device=cuda"], "device='cuda'"),
    (["train.epochs=abc"], "train.epochs"),            # Hydra's typed schema
    (["data=nosuch"], "nosuch"),                       # unknown config group option
    (["+paper=qnn9"], "qnn9"),                         # unknown preset
    # scale-out and GPU knobs, run names, more ranges and types
    (["train.amp=fp16"], "train.amp='fp16' is not allowed; allowed: none, bf16"),
    (["train.channels_last=maybe"], "train.channels_last"),
    (["train.compile=maybe"], "train.compile"),
    (["hydra/launcher=nosuch"], "hydra/launcher/nosuch"),
    (["run_name=../escape"], "run_name='../escape' must be a plain directory name"),
    (["seed=abc"], "seed"),
    (["train.batch_size=1.5"], "train.batch_size"),
    (["model.width_mult=0"], "model.width_mult=0.0 must be a positive (finite) number"),
    (["data.download=maybe"], "data.download='maybe' is not allowed; allowed: auto, true, false"),
    (["device=tpu"], "device='tpu' is not allowed; allowed: cpu, cuda, auto"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be a positive (finite) number"),
    (["model.hidden=[0]"], "model widths must be positive, got 0"),
    (["optim.gamma=2"], "optim.gamma=2.0 must be in (0, 1]"),
    (["data.val_size=-1"], "data.val_size=-1 must be >= 0"),
    (["model.name=lstm_lm"], "data.name='mnist' is not a text corpus, and model lstm_lm is a language model"),
    (["nosuchkey=1"], "unknown config key `nosuchkey`"),
    (["optim.lrr=1"], "unknown config key `optim.lrr`; did you mean `optim.lr`?"),
    (["+model.hiden=[10]"], "unknown config key `model.hiden` (added with +); did you mean `model.hidden`?"),
    (["model.variant=A"], "model.variant='A' is not used by model 'mlp'"),
]
# "Fast" is asserted by what happens, not by a stopwatch (a timed test flakes on a loaded machine):
# the config error comes before any data is read -- the data root is empty, so reading it would
# fail with a data error instead -- and before a run directory exists. The times are printed.


@pytest.mark.parametrize("overrides,message", CONFIG_CASES, ids=[c[0][0] for c in CONFIG_CASES])
def test_bad_config_values(overrides, message, runs_dir, record_property, cli):
    if overrides == ["device=cuda"]:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is available")
    record_property("bad_inputs", 1)
    args = ["train", "+paper=bnn", "scale=smoke", *overrides]
    out = cli(args, env={"BNNREPRO_DATA": str(runs_dir.parent / "empty-data-root")})
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert "required file(s) not found" not in out.stderr  # refused before the data was looked at
    assert "Traceback" not in out.stderr or "train.epochs=abc" in " ".join(overrides)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # no run directory was even created


def test_bad_config_value_from_a_fresh_process(runs_dir, record_property):
    """One refusal end to end through `python -m bnnrepro` (the in-process cases share its code)."""
    record_property("bad_inputs", 1)
    out = _cli(["train", "+paper=bnn", "scale=smoke", "+model.hiden=[10]"],
               env={"BNNREPRO_DATA": str(runs_dir.parent / "empty-data-root")})
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "unknown config key `model.hiden` (added with +); did you mean `model.hidden`?" in out.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_missing_data_offline_lists_files(tmp_path, runs_dir, record_property):
    record_property("bad_inputs", 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _cli(["train", "+paper=bnn", "scale=smoke", f"data.root={empty}", "data.download=false"])
    assert out.returncode == 2
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        assert name in out.stderr
    assert str(empty / "MNIST" / "raw") in out.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_corrupt_archive_names_file_and_checksum(tmp_path, mnist_root, runs_dir, record_property):
    record_property("faults", 1)
    root = tmp_path / "data"
    shutil.copytree(mnist_root / "MNIST", root / "MNIST")
    victim = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    out = _cli(["train", "+paper=bnn", "scale=smoke", f"data.root={root}"])
    assert out.returncode == 2
    assert "t10k-labels-idx1-ubyte.gz" in out.stderr and "ec29112dd5afa0611ce80d1b7f02629c" in out.stderr
    assert not _completed_runs(runs_dir) if runs_dir.exists() else True


def test_unwritable_runs_dir(tmp_path, mnist_root, record_property):
    record_property("faults", 1)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _cli(["train", "+paper=bnn", "scale=smoke", f"data.root={mnist_root}"],
               env={"BNNREPRO_RUNS": str(blocker / "runs")})
    assert out.returncode == 2
    assert "is not writable" in out.stderr and str(blocker / "runs") in out.stderr


def test_resume_of_missing_run(tmp_path, runs_dir, record_property, cli):
    record_property("bad_inputs", 3)
    out = cli(["train", f"resume={tmp_path / 'nope'}"])
    assert out.returncode == 2 and "no such run directory" in out.stderr
    a_file = tmp_path / "last.pt"
    a_file.write_bytes(b"not a run")
    out = cli(["train", f"resume={a_file}"])
    assert out.returncode == 2 and "no such run directory" in out.stderr
    out = cli(["train", f"resume={tmp_path}"])  # a directory, but not a run's
    assert out.returncode == 2 and "no config.yaml there; is it a bnnrepro run directory?" in out.stderr


def test_eval_of_dir_without_checkpoint(tmp_path, record_property, cli):
    record_property("bad_inputs", 2)
    out = cli(["eval", str(tmp_path)])
    assert out.returncode == 2 and "has no checkpoint" in out.stderr
    out = cli(["eval", str(tmp_path / "nope.pt")])
    assert out.returncode == 2 and "is neither a run directory nor a checkpoint file" in out.stderr


def test_eval_rejects_crafted_pickle(tmp_path, record_property, cli):
    """A checkpoint that would run code when unpickled is refused, and the code does not run."""
    record_property("faults", 1)
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"format": "bnnrepro.checkpoint", "x": Evil()}))
    out = cli(["eval", str(bad)])
    assert out.returncode == 2 and "cannot be loaded safely" in out.stderr
    assert not marker.exists()


def test_unknown_command_and_eval_option(tmp_path, record_property, cli):
    record_property("bad_inputs", 2)
    out = cli(["trian"])
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr
    out = cli(["eval", str(tmp_path), "--engine", "gpu"])
    assert out.returncode == 2 and "invalid choice: 'gpu' (choose from 'torch', 'packed')" in out.stderr


def teardown_module(module):
    if TIMES:
        worst = max(TIMES.values())
        print(f"\nbad inputs: {len(TIMES)} CLI calls, slowest {worst:.2f} s (torch import included)")
