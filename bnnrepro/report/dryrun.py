"""``bnnrepro table <target> --dry-run``: what the command would train or resume, with an estimated
duration per run and in total (:mod:`bnnrepro.train.estimate`: from finished runs of the same config
where there are any, else a rough estimate from the model's size), and nothing trained or written."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

from .. import runs
from ..compose import hydra_composer
from ..config import effective_epochs, effective_train_subset
from ..data import DATASETS
from ..train import estimate
from ..train.factory import build_model
from . import launch, pipeline
from .plan import RowPlan, cuda_available, data_check
from .tables import RECORDS
from .targets import Targets


def _row_estimate(plan: RowPlan, found: runs.Scan, gpu: bool, threads: int | None, epochs: int):
    cfg = plan.config
    known = estimate.from_runs(cfg, found.completed, epochs, gpu=gpu)
    if known is not None:
        return known
    spec = DATASETS[cfg.data.name]
    train, test, extra = spec.sizes
    if not train:
        return None
    shape = spec.input_shape
    if cfg.data.image_size:
        shape = (shape[0], int(cfg.data.image_size), int(cfg.data.image_size))
    val = spec.default_val_size if cfg.data.val_size is None else int(cfg.data.val_size)
    examples = train - val + (extra if cfg.data.use_extra else 0)
    subset = effective_train_subset(cfg)
    model = build_model(cfg, shape, spec.num_classes)
    return estimate.rough(model, shape, min(examples, subset) if subset else examples, val + test, epochs,
                          gpu=gpu, threads=threads)


def _describe(est) -> str:
    return est.text() if est is not None else "no estimate (the dataset's size is not known)"


def dry_run_lines(targets: list[Targets], *, runs_dir: Path, out_dir: Path, scale: str,
                  seeds: tuple[int, ...] | None = None, jobs: int = 1, threads: int | None = 1,
                  composer: Callable | None = None, check_data: Callable = data_check,
                  has_cuda: Callable[[], bool] = cuda_available, allow_dirty: bool = False) -> list[str]:
    """The lines ``--dry-run`` prints: one per row with runs to make (its overrides, seeds, scale and
    the estimate per run), one per run to resume, the total, and the commands it would launch."""
    composer = pipeline._cached(composer or hydra_composer(), key=tuple)
    found = pipeline._scan_all(Path(runs_dir), Path(out_dir) / RECORDS)
    plans = [p for table_plans in pipeline._plans(targets, scale, seeds, found, composer, check_data, has_cuda,
                                                  allow_dirty) for p in table_plans]
    gpu = has_cuda()
    lines = [f"bnnrepro table --dry-run (scale={scale}): nothing is trained or written; runs would go to {runs_dir}"]
    total, count, seen, complete, skipped = 0.0, 0, set(), 0, []
    for plan in plans:
        key = (tuple(plan.row.overrides), plan.scale, plan.row.init_from_row)
        if not plan.reproduced or key in seen:
            continue
        seen.add(key)
        if plan.blocked or plan.config is None or (plan.row.scale and plan.row.scale != scale):
            skipped.append(f"{plan.row.id} ({plan.blocked or f'pinned to scale={plan.row.scale}'})")
            continue
        if not plan.missing and not plan.interrupted:
            complete += 1
            continue
        epochs = effective_epochs(plan.config)
        est = _row_estimate(plan, found, gpu, threads, epochs)
        if plan.missing:
            lines.append(f"  {plan.row.id}: {' '.join(plan.row.overrides)} scale={plan.scale} seeds "
                         f"{','.join(map(str, plan.missing))}: {_describe(est)} per run")
            total += (est.seconds if est else 0.0) * len(plan.missing)
            count += len(plan.missing)
        for seed, run in sorted(plan.interrupted.items()):
            left = max(epochs - len(run.metric_rows()), 0)
            if est is not None:
                est = estimate.Estimate(est.seconds_per_epoch, left, est.source)
            if runs.lock_holder(run.path) is not None:
                lines.append(f"  {plan.row.id}: {run.id} (seed {seed}) is being trained now by another process; "
                             "not resumed")
                continue
            lines.append(f"  {plan.row.id}: resume {run.id} (seed {seed}, {left} of {epochs} epochs left): "
                         f"{_describe(est)}")
            total += est.seconds if est else 0.0
            count += 1
    per_job = f"; with --jobs {jobs}, about {runs.format_duration(total / jobs)} if the cores allow" if jobs > 1 else ""
    lines.append(f"total: {count} run(s), about {runs.format_duration(total)} of training{per_job}" if count
                 else "total: nothing to train")
    if complete:
        lines.append(f"{complete} row(s) already have all their seeds")
    if skipped:
        lines.append(f"not launched at scale={scale}: " + "; ".join(skipped))
    jobs_todo = launch.plan_jobs(plans, scale, Path(runs_dir), jobs=jobs, threads=threads)
    lines += [f"would run: bnnrepro {shlex.join(job.argv)}" for job in jobs_todo]
    if jobs_todo and not allow_dirty:
        try:
            pipeline._refuse_dirty_training()
        except ValueError as err:
            lines.append(f"note: {err}")
    return lines
