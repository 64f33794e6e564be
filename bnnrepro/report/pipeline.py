"""``make_tables``: scan the runs, launch what is missing (unless told not to), rebuild the tables.

Idempotent: completed runs are reused, interrupted ones resumed, and when every runnable row has
all its seeds nothing is launched; the tables are then rewritten byte for byte the same.
"""
from __future__ import annotations

import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..compose import hydra_composer
from ..runs import Problem, Run, Scan, code_version, export, scan
from . import compact as compact_tables, curves, launch, render, study, tables
from .plan import RowPlan, cuda_available, data_check, link_sources, plan_row
from .tables import RECORDS
from .targets import DEFAULT_SEEDS, Targets


BLOCKED = {"preset": "a preset that does not compose", "data": "missing data", "gpu": "no GPU"}


@dataclass
class Outcome:
    written: list[Path] = field(default_factory=list)
    launched: list[tuple[launch.Job, int]] = field(default_factory=list)
    results: list[tables.TableResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # per (table, row id): what the runs root holds beside the counted runs (resumable, differing,
    # duplicate, dirty runs): printed, not written, since the tables are built from the records alone
    notes: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    study_missing: list[str] = field(default_factory=list)   # sweep records that could not be made

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


def _seeds_of(table, seeds: tuple[int, ...] | None) -> tuple[int, ...]:
    return tuple(seeds) if seeds else (table.seeds or DEFAULT_SEEDS)


def _plans(targets: list[Targets], scale: str, seeds: tuple[int, ...] | None, found: Scan, composer,
           check_data, has_cuda, allow_dirty: bool) -> list[list[RowPlan]]:
    out = [[plan_row(row, row.scale or scale, row.seeds or _seeds_of(table, seeds), found, composer=composer,
                     check_data=check_data,
                     has_cuda=has_cuda, allow_dirty=allow_dirty)
            for row in table.rows] for t in targets for table in t.tables]
    for table_plans in out:
        link_sources(table_plans)
    return out


def _scan_all(runs_dir: Path, records: Path) -> Scan:
    """The runs root's runs, then the committed records of runs no longer (or never) there."""
    found = scan(runs_dir)
    found.extend(scan_records(records))
    return found


def scan_records(records: Path) -> Scan:
    """Runs under ``<out>/runs``: their file times are a checkout's, so they order by run id alone.
    A record without its summary (a copy cut short) is a problem: never counted, never resumed."""
    found = scan(records)
    for run in found.completed:
        run.mtime = 0.0
    found.problems += [Problem(r.path, "a record without summary.json: not counted, never resumed")
                       for r in found.interrupted]
    found.interrupted = []
    return found


def _under(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def export_used(plans: list[list[RowPlan]], records: Path, figures: bool = True, log=None,
                counted: set[str] = frozenset()) -> list[Path]:
    """Each counted run's record (config, metrics, summary; no checkpoints, no machine paths); a run
    directory of the runs root also gets its own ``curves.png``. A record of the same row and seed
    that is not the counted run (an older duplicate) is removed, so the records alone pick the same
    runs as this scan did."""
    written = []
    for plan in (p for table_plans in plans for p in table_plans):
        for run in plan.runs.values():
            written.append(export(run, records))
            if figures and not _under(run.path, records):
                curves.ensure_run_curves(run.path)
        for stale in plan.duplicates:
            if _under(stale.path, records) and stale.id not in counted and stale.path.is_dir():
                shutil.rmtree(stale.path)
                print(f"bnnrepro table: record {stale.id} replaced by the newer run of seed {stale.seed} "
                      "(rebuild the other targets too: `bnnrepro table all`)", file=log or sys.stderr)
    return written


def _live(found: Scan) -> dict[str, Run]:
    """Completed runs by id, preferring run directories (with checkpoints) over records."""
    out: dict[str, Run] = {}
    for run in found.completed:
        out.setdefault(run.id, run)
    return out


def _refuse_dirty_training() -> None:
    """Runs made on a modified tree are not counted: training them would only repeat forever."""
    code = code_version()
    if code.get("git_dirty"):
        raise ValueError("the code has uncommitted changes, so the runs made now would be marked +dirty and "
                         "not counted: commit first, or pass --allow-dirty (or --no-train to rebuild only)")


def make_tables(targets: list[Targets], *, runs_dir: Path, out_dir: Path, scale: str,
                seeds: tuple[int, ...] | None = None, train: bool = True, jobs: int = 1, threads: int | None = 1,
                command: str = "",  # may hold {target} and {seeds}
                runner: Callable = launch.subprocess_runner, composer: Callable | None = None,
                check_data: Callable = data_check, has_cuda: Callable[[], bool] = cuda_available,
                figures: bool = True, allow_dirty: bool = False, compact: bool = False, log=None) -> Outcome:
    """Plan over the runs root and the records under ``<out>/runs``, train what is missing, write the
    counted runs' records under ``<out>/runs``, then build every table from those records alone: a
    table reads the same on any checkout that has them (``--no-train`` rebuilds it byte for byte).
    ``compact``: also each table's paper-ready ``<name>_compact.md`` and ``.tex`` (report/compact.py)."""
    log = log or sys.stderr
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    records = out_dir / RECORDS
    composer = _cached(composer or hydra_composer(), key=tuple)
    check_data = _cached(check_data, key=lambda cfg: (cfg.data.name, cfg.data.root, bool(cfg.data.use_extra)))
    outcome = Outcome()
    found = _scan_all(runs_dir, records)
    plans = _plans(targets, scale, seeds, found, composer, check_data, has_cuda, allow_dirty)
    if train:
        # rows that start from another row's run (init_from_row) launch once that run exists: a
        # second round makes them after the first made their sources
        for round_ in range(2):
            # the second round launches only the init rows whose sources the first made (a run that
            # failed in the first is not tried twice)
            todo = [p for table_plans in plans for p in table_plans if round_ == 0 or p.row.init_from_row]
            jobs_todo = launch.plan_jobs(todo, scale, runs_dir, jobs=jobs, threads=threads)
            if jobs_todo and not allow_dirty:
                _refuse_dirty_training()
            if not jobs_todo:
                if round_ == 0:
                    print(f"bnnrepro table: nothing to run at scale={scale}: every row that can run here has "
                          "its seeds (rows pinned to another scale are run at theirs)", file=log, flush=True)
                break
            total = sum(j.runs for j in jobs_todo)
            print(f"bnnrepro table: {total} run(s) to make or resume, in {len(jobs_todo)} "
                  f"job(s); runs go to {runs_dir}", file=log, flush=True)
            outcome.launched += launch.run_jobs(jobs_todo, runner, log)
            found = _scan_all(runs_dir, records)
            plans = _plans(targets, scale, seeds, found, composer, check_data, has_cuda, allow_dirty)
    outcome.problems = list(found.problems)
    tables_flat = [(t, table) for t in targets for table in t.tables]
    counted = {run.id for table_plans in plans for plan in table_plans for run in plan.runs.values()}
    for (_, table), table_plans in zip(tables_flat, plans):
        for plan in table_plans:
            notes = tables.local_notes(plan, counted)
            if notes:
                outcome.notes[(table.name, plan.row.id)] = notes
    export_used(plans, records, figures, log, counted)
    live = _live(found)
    recorded = scan_records(records)
    plans = _plans(targets, scale, seeds, recorded, composer, check_data, has_cuda, allow_dirty)
    for (t, table), table_plans in zip(tables_flat, plans):
        table_seeds = _seeds_of(table, seeds)
        result = tables.build(table, table_plans, recorded, out_dir, scale=scale, seeds=table_seeds,
                              command=command.replace("{target}", t.name).replace(
                                  "{seeds}", ",".join(map(str, table_seeds))),
                              paper_title=t.title, figures=figures)
        outcome.results.append(result)
        outcome.written += render.write(result, out_dir)
        if compact:
            outcome.written += compact_tables.write(result, out_dir)
    index = 0
    for t in targets:  # a study sweeps the nets its first table counts
        if t.study is not None:
            if train:  # the records' runs, swept where their run directories (checkpoints) are
                made = study.run_sweeps(t.study, plans[index], records, live=live, jobs=jobs,
                                        threads=threads or 1, log=log)
                outcome.study_missing += made.missing
            done = study.write_outputs(t.study, plans[index], records, out_dir,
                                       command=command.replace("{target}", t.name).replace(
                                           "{seeds}", ",".join(map(str, _seeds_of(t.tables[0], seeds)))))
            outcome.written += done.written
        index += len(t.tables)
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
        compact = any(p.name == f"{result.table.name}{compact_tables.SUFFIX}.md" for p in outcome.written)
        also = ".csv, .tex" + (f", {compact_tables.SUFFIX}.md, {compact_tables.SUFFIX}.tex" if compact else "")
        lines.append(f"{md} (+ {also}): {len(df)} rows, {len(reproducible)} reproducible, "
                     f"{with_runs} with results" + (f"; not runnable here: {', '.join(blocked)}" if blocked else ""))
    if outcome.problems:
        lines.append(f"{len(outcome.problems)} run director{'y' if len(outcome.problems) == 1 else 'ies'} "
                     "not counted:")
        lines += [f"  {p}" for p in outcome.problems]
    for (table, row), notes in outcome.notes.items():
        lines.append(f"{table} {row}: {'; '.join(notes)}")
    lines += [f"sweep not made: {m}" for m in outcome.study_missing]
    for job, code in outcome.failed:
        lines.append(f"failed (exit status {code}): {job.what}")
    return lines
