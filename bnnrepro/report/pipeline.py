"""``make_tables``: scan the runs, launch what is missing (unless told not to), rebuild the tables.

Idempotent: completed runs are reused, interrupted ones resumed, and when every runnable row has
all its seeds nothing is launched; the tables are then rewritten byte for byte the same.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import launch, render, tables
from .collect import Problem, scan
from ..compose import hydra_composer
from .plan import RowPlan, cuda_available, data_check, plan_row
from .targets import Targets


BLOCKED = {"preset": "a preset that does not compose", "data": "missing data", "gpu": "no GPU"}


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    launched: list[tuple[launch.Job, int]] = field(default_factory=list)
    results: list[tables.TableResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[launch.Job, int]]:
        return [(job, code) for job, code in self.launched if code != 0]


def _cached(fn: Callable, key: Callable) -> Callable:
    memo: dict = {}

    def call(arg):
        k = key(arg)
        if k not in memo:
            memo[k] = fn(arg)
        return memo[k]

    return call


def _plans(targets: list[Targets], scale: str, seeds: tuple[int, ...], runs_dir: Path, composer,
           check_data, has_cuda) -> tuple[list[list[RowPlan]], object]:
    found = scan(runs_dir)
    plans = [[plan_row(row, scale, seeds, found, composer=composer, check_data=check_data, has_cuda=has_cuda)
              for row in table.rows] for t in targets for table in t.tables]
    return plans, found


def make_tables(targets: list[Targets], *, runs_dir: Path, out_dir: Path, scale: str, seeds: tuple[int, ...],
                train: bool = True, jobs: int = 1, threads: int | None = 1, command: str = "",  # may hold {paper}
                runner: Callable = launch.subprocess_runner, composer: Callable | None = None,
                check_data: Callable = data_check, has_cuda: Callable[[], bool] = cuda_available,
                figures: bool = True, log=None) -> Outcome:
    log = log or sys.stderr
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    composer = _cached(composer or hydra_composer(), key=tuple)
    check_data = _cached(check_data, key=lambda cfg: (cfg.data.name, cfg.data.root, bool(cfg.data.use_extra)))
    outcome = Outcome()
    plans, found = _plans(targets, scale, seeds, runs_dir, composer, check_data, has_cuda)
    if train:
        jobs_todo = launch.plan_jobs([p for table_plans in plans for p in table_plans], scale, runs_dir,
                                     jobs=jobs, threads=threads)
        if jobs_todo:
            total = sum(j.runs for j in jobs_todo)
            print(f"bnnrepro table: {total} run(s) to make or resume at scale={scale}, in {len(jobs_todo)} "
                  f"job(s); runs go to {runs_dir}", file=log, flush=True)
            outcome.launched = launch.run_jobs(jobs_todo, runner, log)
            plans, found = _plans(targets, scale, seeds, runs_dir, composer, check_data, has_cuda)
        else:
            print(f"bnnrepro table: nothing to run at scale={scale}: every row that can run here has its "
                  "seeds", file=log, flush=True)
    outcome.problems = list(found.problems)
    tables_flat = [(t, table) for t in targets for table in t.tables]
    for (t, table), table_plans in zip(tables_flat, plans):
        result = tables.build(table, table_plans, found, out_dir, scale=scale, seeds=seeds,
                              command=command.replace("{paper}", t.paper),
                              paper_title=t.title, figures=figures)
        outcome.results.append(result)
        outcome.written += render.write(result, out_dir)
    return outcome


def report_lines(outcome: Outcome) -> list[str]:
    """What the command prints at the end: one line per table, then the runs not counted."""
    lines = []
    for result in outcome.results:
        df = result.frame
        reproducible = df[df["preset"] != ""]
        with_runs = int((reproducible["n"] > 0).sum())
        kinds = Counter(p.blocked_kind for p in result.plans if p.blocked)
        blocked = [f"{n} for {BLOCKED[k]}" for k, n in sorted(kinds.items())]
        md = next(p for p in outcome.written if p.name == f"{result.table.name}.md")
        lines.append(f"{md} (+ .csv, .tex): {len(df)} rows, {len(reproducible)} reproducible, "
                     f"{with_runs} with results" + (f"; not runnable here: {', '.join(blocked)}" if blocked else ""))
    if outcome.problems:
        lines.append(f"{len(outcome.problems)} run director{'y' if len(outcome.problems) == 1 else 'ies'} "
                     "not counted:")
        lines += [f"  {p}" for p in outcome.problems]
    for job, code in outcome.failed:
        lines.append(f"failed (exit status {code}): {job.what}")
    return lines
