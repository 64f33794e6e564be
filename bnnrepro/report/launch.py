"""Launch what the tables miss: one Hydra multirun per row over its missing seeds (joblib launcher
for parallel jobs), and one multirun resuming the interrupted runs. Rows shared by several tables
(QNN's Table 1 repeats BNN's presets) are launched once. Rows that are a bare preset
(``+experiment=X``) missing the same seeds share one multirun (``+experiment=X,Y seed=...``), so
that rows missing a single seed still keep ``--jobs`` processes busy.

Runs go through ``python -m bnnrepro train`` in a subprocess: each Hydra app gets a fresh process,
and its progress prints to the terminal as it runs.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .. import runs as run_records
from ..runs.lock import describe as describe_holder
from .plan import RowPlan


@dataclass(frozen=True)
class Job:
    what: str                 # one line for the log: "bnn_mnist_theano seeds 0,1,2"
    argv: tuple[str, ...]     # arguments of `bnnrepro` (train -m ...)
    runs: int                 # how many runs it makes or resumes


def _quote(value: str) -> str:
    """A Hydra override value, quoted so paths with ',', ' ' or '=' stay one value."""
    if "'" in value:
        raise ValueError(f"path {value!r} contains a single quote, which a Hydra override cannot carry")
    return f"'{value}'"


def _launcher(jobs: int) -> list[str]:
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []


def plan_jobs(plans: Iterable[RowPlan], scale: str, runs_dir: Path, *, jobs: int = 1,
              threads: int | None = 1) -> list[Job]:
    """New runs for every runnable row's missing seeds, and one resume sweep over interrupted runs.
    A row pinned to a scale other than the command's ``scale`` is never launched here (its runs take
    hours: the Torch7 protocol in full, say); ``bnnrepro table <paper> scale=<its scale>`` or its
    ``bnnrepro train`` command makes them, and its status says so."""
    new: dict[tuple[tuple[str, ...], str], set[int]] = {}  # (overrides, scale) -> seeds
    resume: dict[str, int] = {}
    initialised: list[tuple[RowPlan, int]] = []  # init_from_row runs: one per seed, from its source
    for plan in plans:
        if not plan.reproduced or plan.blocked or plan.config is None:
            continue
        if plan.row.scale and plan.row.scale != scale:
            continue
        if plan.row.init_from_row is not None:
            initialised += [(plan, s) for s in plan.missing if s in plan.sources]
        elif plan.missing:
            new.setdefault((tuple(plan.row.overrides), plan.scale), set()).update(plan.missing)
        for run in plan.interrupted.values():
            live = run_records.lock_holder(run.path)
            if live is not None:  # a second writer would duplicate its epochs
                print(f"note: not resuming {run.path}: it is being trained by {describe_holder(live)}",
                      file=sys.stderr)
                continue
            resume[str(Path(run.path).resolve())] = 1
    common = ["train.progress=false", "device=auto"]
    if threads:
        common.append(f"train.num_threads={threads}")
    sweeps: dict[tuple, int] = {}                                    # (overrides, scale, seeds) -> runs
    presets: dict[tuple[str, tuple[int, ...]], list[str]] = {}       # (scale, seeds) -> bare presets
    for (overrides, row_scale), seeds in new.items():
        ordered = tuple(sorted(seeds))
        if len(overrides) == 1 and overrides[0].startswith("+experiment=") and "," not in overrides[0]:
            presets.setdefault((row_scale, ordered), []).append(overrides[0].split("=", 1)[1])
        else:
            sweeps[(overrides, row_scale, ordered)] = len(ordered)
    for (row_scale, ordered), names in presets.items():
        sweeps[(("+experiment=" + ",".join(names),), row_scale, ordered)] = len(names) * len(ordered)
    out = []
    for (overrides, row_scale, ordered), runs in sweeps.items():
        seeds = ",".join(map(str, ordered))
        argv = ("train", "-m", *overrides, f"scale={row_scale}", f"seed={seeds}",
                f"runs_dir={_quote(str(Path(runs_dir).resolve()))}", *common, *_launcher(jobs))
        out.append(Job(f"{' '.join(overrides)} scale={row_scale} seeds {seeds}", argv, runs))
    for plan, seed in initialised:
        source = str(Path(plan.sources[seed].path).resolve())
        argv = ("train", "-m", *plan.row.overrides, f"scale={plan.scale}", f"seed={seed}",
                f"train.init_from={_quote(source)}", f"runs_dir={_quote(str(Path(runs_dir).resolve()))}",
                *common)
        out.append(Job(f"{' '.join(plan.row.overrides)} scale={plan.scale} seed {seed} from "
                       f"{plan.sources[seed].id}", argv, 1))
    if resume:
        paths = sorted(resume)
        argv = ("train", "-m", "resume=" + ",".join(_quote(p) for p in paths), *_launcher(jobs))
        out.append(Job(f"resume {len(paths)} interrupted run(s)", argv, len(paths)))
    return out


def subprocess_runner(argv: tuple[str, ...]) -> int:
    return subprocess.run([sys.executable, "-m", "bnnrepro", *argv]).returncode


def run_jobs(jobs: list[Job], runner: Callable[[tuple[str, ...]], int] = subprocess_runner,
             log=None) -> list[tuple[Job, int]]:
    """Run each job (the next one even when one fails); returns each job's exit status."""
    log = log or sys.stderr
    results = []
    for i, job in enumerate(jobs, 1):
        print(f"bnnrepro table: [{i}/{len(jobs)}] {job.what}: bnnrepro {shlex.join(job.argv)}", file=log,
              flush=True)
        code = runner(job.argv)
        if code != 0:
            print(f"bnnrepro table: [{i}/{len(jobs)}] exited with status {code}", file=log, flush=True)
        results.append((job, code))
    return results
