"""A study target: test-time distortion sweeps of the nets its first table counts, as records.

Each counted run's sweep is kept beside its record: ``<out>/runs/<run id>/sweeps/<sweep id>.csv``
(one line per noise x level x draw) and ``.json`` (the options and the code that made it). A sweep
runs only when its record is missing or was made with other options, and only where the run's
checkpoint is (the runs root); the outputs -- ``<out>/<study output>/<sweep out>/robustness_<noise>
.{csv,md,png}`` and ``claims.md`` -- are then rebuilt from the records alone, so ``--no-train``
rewrites them byte for byte on any checkout that has the records.
"""
from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from .. import runs
from .plan import RowPlan
from .targets import Study, Sweep

SWEEPS = "sweeps"


@dataclass
class StudyOutcome:
    swept: list[str] = field(default_factory=list)       # "<run id> <sweep id>" made now
    missing: list[str] = field(default_factory=list)     # records that could not be made here
    written: list[Path] = field(default_factory=list)


def _options(study: Study, sweep: Sweep) -> dict:
    options = {"noises": list(sweep.noises), "weights": sweep.weights, "bn_recalibrate": sweep.bn_recalibrate,
               "draws": study.draws, "seed": 0, "which": "best"}
    if sweep.engine != "torch":
        options["engine"] = sweep.engine
    if sweep.levels:
        options["levels"] = {noise: list(levels) for noise, levels in sweep.levels}
    return options


def _sweep_options(options: dict):
    from ..robustness import SweepOptions

    return SweepOptions(draws=options["draws"], seed=options["seed"], weights=options["weights"],
                        bn_recalibrate=options["bn_recalibrate"], which=options["which"], progress=False,
                        engine=options.get("engine", "torch"),
                        levels={k: tuple(v) for k, v in options["levels"].items()} if options.get("levels") else None)


def record_paths(records: Path, run_id: str, sweep_id: str) -> tuple[Path, Path]:
    base = Path(records) / run_id / SWEEPS / sweep_id
    return base.with_suffix(".csv"), base.with_suffix(".json")


def _current(records: Path, run_id: str, sweep_id: str, options: dict) -> bool:
    csv, meta = record_paths(records, run_id, sweep_id)
    try:
        return csv.is_file() and json.loads(meta.read_text()).get("options") == options
    except (OSError, ValueError):
        return False


def _sweep_one(task: tuple[str, str, dict, int]) -> list[dict]:
    """In a worker process: one run's sweep, its rows without machine paths."""
    import torch

    from ..robustness import sweep_run

    path, run_id, options, threads = task
    torch.set_num_threads(threads)
    rows = sweep_run(Path(path), list(options["noises"]), _sweep_options(options))
    code = runs.code_label(runs.code_version())
    return [{**row, "run": run_id, "code": code} for row in rows]


def run_sweeps(study: Study, plans: list[RowPlan], records: Path, *, live: dict | None = None, jobs: int = 1,
               threads: int = 1, log=None) -> StudyOutcome:
    """Make every missing or outdated sweep record of the counted runs (``plans`` from the records);
    ``live`` maps run ids to their run directories, where the checkpoints are."""
    log = log or sys.stderr
    outcome = StudyOutcome()
    tasks, keys = [], []
    for sweep in study.sweeps:
        options = _options(study, sweep)
        for plan in plans:
            for counted in plan.runs.values():
                if _current(records, counted.id, sweep.id, options):
                    continue
                run = (live or {}).get(counted.id, counted)
                try:
                    run.checkpoint("best")
                except Exception:  # noqa: BLE001 - a record without its run directory here
                    outcome.missing.append(f"{run.id} {sweep.id}: no checkpoint here (train or copy the run)")
                    continue
                tasks.append((str(run.path), run.id, options, threads))
                keys.append((run.id, sweep, options))
    if not tasks:
        return outcome
    print(f"bnnrepro table: {len(tasks)} sweep(s) to make, {jobs} at a time", file=log, flush=True)

    def record(i: int, rows: list[dict]) -> None:  # each sweep's record as soon as it is made
        run_id, sweep, options = keys[i]
        csv, meta = record_paths(records, run_id, sweep.id)
        runs.atomic_write_text(csv, pd.DataFrame(rows).to_csv(index=False))
        runs.atomic_write_json(meta, {"options": options, "code": rows[0]["code"] if rows else None})
        outcome.swept.append(f"{run_id} {sweep.id}")
        print(f"  [{len(outcome.swept)}/{len(tasks)}] swept {run_id}: {sweep.id} ({len(rows)} draws)",
              file=log, flush=True)

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_sweep_one, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                record(futures[future], future.result())
    else:
        for i, task in enumerate(tasks):
            record(i, _sweep_one(task))
    return outcome


def write_outputs(study: Study, plans: list[RowPlan], records: Path, out_dir: Path, command: str,
                  outcome: StudyOutcome | None = None) -> StudyOutcome:
    """The study's files from the sweep records of the counted runs (``plans`` from the records)."""
    from ..robustness.claims import write_claims
    from ..robustness.outputs import write_outputs as write_noise_outputs

    outcome = outcome or StudyOutcome()
    root = Path(out_dir) / study.output
    every: dict[str, list[pd.DataFrame]] = {}  # folder -> the draws of all its sweeps, for the claims
    for sweep in study.sweeps:
        options = _options(study, sweep)
        frames = []
        for plan in plans:
            for seed in sorted(plan.runs):
                run = plan.runs[seed]
                if _current(records, run.id, sweep.id, options):
                    frames.append(pd.read_csv(record_paths(records, run.id, sweep.id)[0]))
        if not frames:
            continue
        draws = pd.concat(frames, ignore_index=True)
        groups = draws.groupby("dataset", sort=True) if study.split_by == "dataset" else [(None, draws)]
        for dataset, part in groups:
            base = root / dataset if dataset is not None else root
            outcome.written += write_noise_outputs(part.to_dict("records"), list(sweep.noises), base / sweep.out,
                                                   _sweep_options(options), command=command)
            files = part["noise"].map(lambda n: (Path(sweep.out) / f"robustness_{n}_draws.csv").as_posix())
            every.setdefault(str(base), []).append(part.assign(source=files))
    if study.claims:
        for base, parts in every.items():
            outcome.written.append(write_claims([], Path(base), draws=pd.concat(parts, ignore_index=True)))
    return outcome
