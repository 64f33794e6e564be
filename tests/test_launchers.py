"""Hydra launcher presets: hydra/launcher=parallel (joblib, local processes) and hydra/launcher=slurm
(submitit). Composition of both, the sbatch script the slurm preset makes, and a real 4-run joblib
multirun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf


def _compose_with_hydra(overrides):
    from hydra import compose, initialize_config_module

    from bnnrepro.config import register_configs

    register_configs()
    with initialize_config_module(config_module="bnnrepro.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_parallel_preset_composes():
    cfg = _compose_with_hydra(["hydra/launcher=parallel"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2 and launcher.backend == "loky" and launcher.prefer == "processes"
    cfg = _compose_with_hydra(["hydra/launcher=parallel", "hydra.launcher.n_jobs=8"])
    assert cfg.hydra.launcher.n_jobs == 8


def _sbatch_script(launcher: dict, n_jobs: int, fake_bin: Path, monkeypatch) -> str:
    """The sbatch script Hydra's submitit launcher would submit for ``n_jobs`` jobs: its executor is
    built from the launcher config exactly as hydra_submitit_launcher's ``launch`` does."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    srun = fake_bin / "srun"  # submitit refuses to build a SLURM executor where srun is not on PATH
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = dict(launcher)
    params.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    inner = executor._executor
    inner.parameters["map_count"] = n_jobs  # what map_array sets for a job array
    return inner._make_submission_file_text("<command>", "<uid>")


def test_slurm_preset_composes_and_makes_the_expected_sbatch_script(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("BNNREPRO_RUNS", str(tmp_path / "runs"))
    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                               "hydra.launcher.account=lab", "hydra.launcher.timeout_min=90"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1
    assert launcher["array_parallelism"] == 16 and launcher["max_num_timeout"] == 0
    assert launcher["submitit_folder"].startswith(str(tmp_path / "runs" / "multirun"))  # beside runs.txt
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    script = _sbatch_script(launcher, 3, fake_bin, monkeypatch)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --array=0-2%3", "#SBATCH --job-name=bnnrepro"):
        assert line in script, (line, script)
    launcher["array_parallelism"] = 2
    assert "#SBATCH --array=0-4%2" in _sbatch_script(launcher, 5, fake_bin, monkeypatch)


def test_slurm_preset_from_the_cli():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = subprocess.run([sys.executable, "-m", "bnnrepro", "train", "hydra/launcher=slurm",
                          "hydra.launcher.partition=gpu", "--cfg", "hydra", "--package", "hydra.launcher"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "partition: gpu" in out.stdout and "SlurmLauncher" in out.stdout


def test_joblib_multirun_runs_four_jobs_in_parallel_processes(mnist_root, runs_dir):
    """4 smoke runs through hydra/launcher=parallel: 4 completed runs, all in runs.txt, each job in
    worker processes with torch limited to cores // n_jobs threads (no oversubscription)."""
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)  # the launcher, not the environment, sets the workers' threads
    out = subprocess.run(
        [sys.executable, "-m", "bnnrepro", "train", "-m", "hydra/launcher=parallel", "+paper=bnn", "scale=smoke",
         "scale.train_subset=300", "scale.epochs=1", "data.val_size=1000", "train.progress=false",
         f"data.root={mnist_root}", "seed=0,1,2,3"],
        capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(Path(line[5:]) for line in out.stdout.splitlines() if line.startswith("run: "))
    assert len(runs) == 4 and len(set(runs)) == 4
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert all(s["status"] == "completed" for s in summaries)
    assert sorted(s["seed"] for s in summaries) == [0, 1, 2, 3]
    cores = os.cpu_count() or 1
    assert all(s["environment"]["threads"] <= max(1, cores // 2) for s in summaries)
    assert len({s["environment"]["host"] for s in summaries}) == 1
    (sweep,) = (runs_dir / "multirun").iterdir()
    assert sorted((sweep / "runs.txt").read_text().split()) == sorted(str(r.resolve()) for r in runs)
