"""Which runs reproduce a table row, and whether the row can run on this machine.

A row's runs are found by config, not by name: the row's overrides plus ``scale=<scale>`` are
composed with Hydra (exactly what ``bnnrepro train`` would run), and a run counts for the row when
its resolved ``config.yaml`` agrees with that composition on every field both have, except those
that do not change the result (:data:`IGNORED`: paths, seed, device, threads, logging). So a float
baseline trained from the same preset (``quant.activation=identity``) never counts for the binary
row; it is listed as a run that differs.

A row *can run here* when its preset composes and validates, its dataset's files are present
(``bnnrepro.data.check(..., download=False)``: nothing is downloaded to decide) and, at a scale in
its ``needs_gpu_at``, a CUDA device is available.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from omegaconf import OmegaConf

from ..runs import Run, Scan
from ..runs.fingerprint import (IGNORED, INITIALISED, as_trained, differences, fingerprint,  # noqa: F401 (re-exported)
                                flatten)
from .targets import Row


# ------------------------------------------------------------------------------------ checking a row

def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def compose_row(row: Row, scale: str, composer) -> tuple[Any, str | None]:
    """The row's config at ``scale`` (an OmegaConf DictConfig), or None and why not."""
    from ..config import ConfigError, validate

    try:
        cfg = composer(list(row.overrides) + [f"scale={scale}"])
    except Exception as err:  # Hydra's composition errors have no common base
        return None, f"preset does not compose ({_first_line(err)})"
    try:
        validate(cfg)
    except (ConfigError, ValueError) as err:
        return None, f"preset is invalid ({err})"
    return cfg, None


def data_check(cfg) -> str | None:
    """None when the dataset's files are present and intact; else the first line of the error."""
    from ..data import DataError, check, resolve_root

    try:
        check(cfg.data.name, cfg.data.root, download=False, use_extra=bool(cfg.data.use_extra))
    except (DataError, ValueError, OSError) as err:
        # the data root is a path of this machine: keep it out of tables meant to be committed
        line = str(err).strip().splitlines()[0].split(" under the data root")[0]
        root = resolve_root(cfg.data.root)
        for form in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
            line = line.replace(form, "<data root>")
        return line
    return None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------ planning

@dataclass
class RowPlan:
    row: Row
    scale: str
    seeds: tuple[int, ...]
    config: Any = None                      # composed DictConfig (None: does not compose)
    blocked: str | None = None              # why it cannot run here; None: it can
    blocked_kind: str | None = None         # preset | data | gpu
    runs: dict[int, Run] = field(default_factory=dict)          # seed -> completed run used
    duplicates: list[Run] = field(default_factory=list)         # completed, same seed, not used
    interrupted: dict[int, Run] = field(default_factory=dict)   # seed -> run to resume
    differing: list[tuple[Run, list[str]]] = field(default_factory=list)
    other_seeds: list[Run] = field(default_factory=list)        # completed, seed not requested
    dirty: list[Run] = field(default_factory=list)              # made on a modified tree: not counted
    allow_dirty: bool = False                                   # counted after all (and marked)
    # init_from_row: the source row's completed runs by seed (``link_sources``)
    sources: dict[int, Run] = field(default_factory=dict)

    @property
    def missing(self) -> list[int]:
        """Requested seeds with neither a completed nor an interrupted run."""
        return [s for s in self.seeds if s not in self.runs and s not in self.interrupted]

    @property
    def reproduced(self) -> bool:
        return not self.row.not_reproduced


def _label(cfg_dict: dict) -> str | None:
    return cfg_dict.get("experiment") or cfg_dict.get("paper")


def plan_row(row: Row, scale: str, seeds: Iterable[int], found: Scan, *, composer,
             check_data: Callable = data_check, has_cuda: Callable[[], bool] = cuda_available,
             allow_dirty: bool = False) -> RowPlan:
    """The row's runs among ``found``: newest first (by summary time, then run id, so a scan of
    committed records, whose file times mean nothing, picks the same runs on every checkout)."""
    plan = RowPlan(row, scale, tuple(seeds), allow_dirty=allow_dirty)
    if row.not_reproduced:
        return plan
    cfg, why = compose_row(row, scale, composer)
    if cfg is None:
        plan.blocked, plan.blocked_kind = why, "preset"
        return plan
    plan.config = cfg
    expected_dict = OmegaConf.to_container(cfg, resolve=True)
    expected = fingerprint(expected_dict)
    if row.init_from_row is not None:  # its runs start from a trained run (train.init_from set)
        expected["train.init_from"] = INITIALISED
    label = _label(expected_dict)
    for run in sorted(found.completed + found.interrupted, key=lambda r: (r.mtime, r.id), reverse=True):
        if run.scale != scale:
            continue
        diff = differences(expected, as_trained(run.config, run.summary))
        if diff:
            if label and _label(run.config) == label and run.summary is not None:
                plan.differing.append((run, diff))
            continue
        if run.summary is not None and run.dirty and not allow_dirty:
            plan.dirty.append(run)
            continue
        if run.summary is None:
            if run.seed in plan.seeds and run.seed not in plan.interrupted:
                plan.interrupted[run.seed] = run  # newest interrupted run of that seed
        elif run.seed not in plan.seeds:
            plan.other_seeds.append(run)
        elif run.seed in plan.runs:
            plan.duplicates.append(run)
        else:
            plan.runs[run.seed] = run  # newest completed run of that seed
    for seed in list(plan.interrupted):
        if seed in plan.runs:
            del plan.interrupted[seed]  # a completed run of that seed exists: nothing to resume
    missing_data = check_data(cfg)
    if missing_data:
        plan.blocked, plan.blocked_kind = f"data not available here: {missing_data}", "data"
    elif scale in row.needs_gpu_at and not has_cuda():
        plan.blocked, plan.blocked_kind = f"needs a GPU at scale={scale} (no CUDA device here)", "gpu"
    return plan


def link_sources(plans: list[RowPlan]) -> None:
    """Give each ``init_from_row`` plan of one table its source row's completed runs (same scale and
    seeds); a seed whose source run is missing waits for it (launch makes the source first)."""
    by_id = {p.row.id: p for p in plans}
    for plan in plans:
        source = by_id.get(plan.row.init_from_row) if plan.row.init_from_row else None
        if source is not None and source.scale == plan.scale:
            # a committed record has no checkpoint to start from: only runs of this machine's runs root
            plan.sources = {seed: run for seed, run in source.runs.items() if _has_checkpoint(run)}


def _has_checkpoint(run: Run) -> bool:
    from ..errors import CheckpointError

    try:
        run.checkpoint("best")
    except (CheckpointError, OSError):
        return False
    return True


def waiting_for_source(plan: RowPlan) -> list[int]:
    """Missing seeds of an ``init_from_row`` plan whose source run does not exist yet."""
    if plan.row.init_from_row is None:
        return []
    return [s for s in plan.missing if s not in plan.sources]
