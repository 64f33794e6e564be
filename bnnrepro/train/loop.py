"""The training loop: epochs, BNN's best-validation protocol, checkpoint/resume, summary.json last."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import data as datasets
from ..config import (Config, effective_dropout_hidden, effective_epochs, effective_train_subset,
                      effective_width_mult, is_language_model, schedule_epochs, validate)
from ..errors import CheckpointError, ConfigError, RunError, StorageError, TrainingDiverged
from ..nn import precision as matmul_precision
from .allocator import keep_freed_memory
from ..optim import LatentWeightClipper, build_optimizer, build_scheduler
from .. import runs
from . import distributed, estimate
from .batches import TOP_K, epoch_order, eval_batching, num_batches
from .checkpoint import init_weights
from .factory import build_loss, build_model
from .loggers import LocalLogger, build_logger

from ..runs import CONFIG, METRICS, SUMMARY
from ..runs.fingerprint import flatten

# the fields a resume may change: where things are and how they are shown, not what is computed
# (threads and device do change the float sums; they are allowed, warned about and recorded)
RESUME_SAFE = ("data.root", "data.download", "data.workers", "train.progress", "train.eval_batch_size", "logger",
               "train.num_threads", "device")
# ... and those that name the run (a copied or moved run keeps its checkpoint's config)
NOT_COMPUTED = RESUME_SAFE + ("run_name", "runs_dir", "resume")


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def _is_safe(key: str, fields=RESUME_SAFE) -> bool:
    return any(key == p or key.startswith(p + ".") for p in fields)


def config_hash(config: dict) -> str:
    """sha256 of a run's config without the fields that do not change what it computes
    (:data:`NOT_COMPUTED`)."""
    kept = {k: v for k, v in flatten(config).items() if not _is_safe(k, NOT_COMPUTED)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _resume_overrides(overrides: list[str] | None) -> list[str]:
    """The dotted keys overridden beside ``resume=``; refuses, naming them, any that would change
    what the run computes."""
    keys, refused = [], []
    for item in overrides or []:
        key = item.split("=", 1)[0].lstrip("+")
        if key == "resume":
            continue
        if _is_safe(key) and not key.startswith("~"):  # deleting a field is not setting it
            keys.append(key)
        else:
            refused.append(item)
    if refused:
        raise ConfigError(
            f"resume= continues a run as it was configured; these overrides would change what it computes: "
            f"{' '.join(refused)}. Drop them, or start a new run without resume=. A resume may only set: "
            f"{', '.join(RESUME_SAFE)}")
    return keys


def _load_resume_config(run_dir: Path, cfg: DictConfig, keys: list[str]) -> tuple[DictConfig, dict, dict]:
    """The run's stored config (read safely, checked against the schema) with the safe overrides
    ``keys`` applied from ``cfg``; the stored config as read; and as merged on the schema."""
    saved, why = runs.read_config(run_dir)
    if saved is None:
        raise RunError(f"resume={run_dir}: {why}; it cannot be resumed")
    try:
        # merged onto the schema so that fields added since the run started take their defaults
        resumed = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(saved))
    except Exception as err:  # omegaconf's ValidationError / KeyError names the key
        raise ConfigError(f"resume={run_dir}: its {CONFIG} does not fit the config schema: "
                          f"{str(err).splitlines()[0]}") from None
    merged = OmegaConf.to_container(resumed, resolve=False)
    for key in keys:  # the data may live elsewhere on the resuming machine, ...
        OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), merge=False)
    resumed.resume = str(run_dir)
    return resumed, saved, merged


def _check_against_checkpoint(run_dir: Path, saved: dict, merged: dict, state: dict) -> None:
    """The stored config must be the one the checkpoint was trained with (an edited ``config.yaml``
    would silently train something else from then on). The recorded hash settles it when it
    matches; otherwise the fields are compared (the hash also moves when this code's list of
    fields that compute nothing changes, or the schema gains a field: those differ in no value)."""
    if state.get("config_hash") == config_hash(saved):
        return
    trained, now = flatten(state.get("config") or {}), flatten(merged)
    changed = [f"{k}: {trained[k]!r} -> {now[k]!r}" for k in sorted(trained)
               if not _is_safe(k, NOT_COMPUTED) and k in now and trained[k] != now[k]]
    if changed:
        raise CheckpointError(f"resume={run_dir}: its {CONFIG} no longer matches the config its checkpoint "
                              f"was trained with ({'; '.join(changed[:5])}); restore {CONFIG}, or start a new run")


def _read_metrics(path: Path, epochs_done: int) -> list[dict]:
    """Lines of finished epochs only: a crash after the metrics line but before the checkpoint
    leaves one extra line, which the resumed epoch rewrites."""
    return [r for r in runs.read_jsonl(path) if r.get("epoch", math.inf) <= epochs_done]


def _overrides() -> list[str] | None:
    """The Hydra overrides of this job (None outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - provenance must never stop a run
        return None


def _finished_status(run_dir: Path) -> str | None:
    """'completed' or 'diverged' when the run has ended for good (resuming it changes nothing)."""
    status = (runs.read_summary(run_dir) or {}).get("status")
    return status if status in ("completed", "diverged") else None


@dataclass
class Prepared:
    cfg: DictConfig
    run_dir: Path
    state: dict | None               # the checkpoint resumed from; {"finished": status}; None: from scratch
    config_hash: str
    created: bool = False            # a new run directory (removed again if the run fails before a checkpoint)
    applied: list[str] = field(default_factory=list)  # safe overrides applied on resume


def prepare(cfg: DictConfig, held: list | None = None) -> Prepared:
    """Validate, resolve resume, create or reopen the run directory and take its lock (appended to
    ``held``; the caller releases it). Loads no data."""
    held = [] if held is None else held
    if cfg.get("resume") is not None:
        return _prepare_resume(cfg, held)
    validate(cfg)
    root = runs.runs_root(cfg.runs_dir)
    runs.check_writable(root)
    # missing or corrupt archives fail here, before a run directory exists (md5s are cached)
    datasets.check(cfg.data.name, cfg.data.root, download=cfg.data.download, use_extra=cfg.data.use_extra)
    run_dir = runs.create(root, cfg.run_name, runs.default_name(cfg))
    try:
        held.append(runs.lock_run(run_dir, "start it"))
        text = OmegaConf.to_yaml(cfg, resolve=True)
        saved, why = runs.load_config_text(text)
        if saved is None:  # it could never be resumed or read back
            raise ConfigError(f"this config cannot be stored as a run's {CONFIG}: {why}")
        runs.atomic_write_text(run_dir / CONFIG, text)
    except BaseException:
        if not held or held[-1].run_dir != run_dir:
            raise  # another process holds it: not ours to remove
        _remove(run_dir)
        raise
    return Prepared(cfg, run_dir, None, config_hash(saved), created=True)


def _remove(run_dir: Path) -> None:
    """Remove a run directory this process made: renamed aside first, so that no other process
    sees it half-removed (empty, lock file gone) and takes it for a directory to reuse."""
    aside = run_dir.with_name(f".removing-{run_dir.name}-{os.getpid()}")
    try:
        os.rename(run_dir, aside)
    except OSError:
        aside = run_dir
    shutil.rmtree(aside, ignore_errors=True)


def _prepare_resume(cfg: DictConfig, held: list) -> Prepared:
    if not str(cfg.resume).strip():
        raise ConfigError("resume= is empty: give the run directory to continue (resume=runs/<name>), "
                          "or leave resume out to start a new run")
    run_dir = Path(str(cfg.resume).strip()).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"resume={cfg.resume}: no such run directory")
    overrides = _overrides()
    # outside a Hydra app (fit(cfg) from Python) there are no overrides to read: the data root given
    # is taken, as the data may live elsewhere on the resuming machine
    keys = _resume_overrides(overrides) if overrides is not None else (
        ["data.root"] if OmegaConf.select(cfg, "data.root") else [])
    if not (run_dir / CONFIG).is_file():  # checked before the lock file is made in a folder not ours
        if not any((run_dir / m).exists() for m in runs.MARKERS) and not (set(os.listdir(run_dir)) - {runs.LOCK}):
            raise RunError(f"resume={run_dir}: the run was created but never started (stopped before its "
                           f"{CONFIG} was written); start it again with run_name={run_dir.name} "
                           f"runs_dir={run_dir.parent} (the empty directory is reused), or delete it")
        raise RunError(f"resume={run_dir}: no {CONFIG} there; is it a bnnrepro run directory?")
    status = _finished_status(run_dir)  # before the lock: a finished run may sit on a read-only disk
    if status:
        resumed, saved, _ = _load_resume_config(run_dir, cfg, keys)
        return Prepared(resumed, run_dir, {"finished": status}, config_hash(saved))
    held.append(runs.lock_run(run_dir, "resume it"))
    resumed, saved, merged = _load_resume_config(run_dir, cfg, keys)
    validate(resumed)
    applied = [f"{k}={OmegaConf.select(resumed, k)}" for k in keys]
    if _finished_status(run_dir):  # it ended while we waited for the lock
        return Prepared(resumed, run_dir, {"finished": _finished_status(run_dir)}, config_hash(saved))
    state = runs.load_resumable(run_dir)
    if state is not None:
        _check_against_checkpoint(run_dir, saved, merged, state)
    return Prepared(resumed, run_dir, state, config_hash(saved), applied=applied)


def fit(cfg: DictConfig) -> Path:
    """Train per ``cfg``; returns the run directory. ``cfg.resume`` continues an interrupted run.
    Under torchrun (WORLD_SIZE > 1) this is one rank of a data-parallel job (see distributed.py)."""
    ctx = distributed.setup()
    finished = False
    held: list[runs.RunLock] = []  # rank 0's lock on the run directory, held until the run ends
    try:
        run_dir = _fit(cfg, ctx, held)
        finished = True
        return run_dir
    finally:
        for lock in held:
            lock.release()
        ctx.close(finished)


# the language-model loop (train/lm.py) builds on this module's run machinery, so this module does not
# import it: lm.py puts its entry point here when the package loads (train/__init__.py imports it)
LANGUAGE_MODEL_LOOP: list = []


def _fit(cfg: DictConfig, ctx: distributed.Context, held: list) -> Path:
    prep = ctx.on_main(prepare, cfg, held)  # only rank 0 touches the runs root
    if prep.state and prep.state.get("finished"):
        if ctx.is_main:
            print(f"run {prep.run_dir} is already {prep.state['finished']}; nothing to do", file=sys.stderr)
        return prep.run_dir
    try:
        if is_language_model(prep.cfg):
            return LANGUAGE_MODEL_LOOP[0](prep, ctx)
        return _train(prep, ctx)
    except BaseException as err:
        # a run that never wrote a checkpoint holds nothing worth keeping (a diverged one keeps its summary)
        if (ctx.is_main and prep.created and not isinstance(err, TrainingDiverged)
                and not any((prep.run_dir / name).exists() for name in (runs.LAST, runs.BEST))):
            _remove(prep.run_dir)
            print(f"note: removed {prep.run_dir}: the run stopped before its first checkpoint", file=sys.stderr)
        raise


def _begin(prep: Prepared, ctx: distributed.Context) -> tuple[float, dict, torch.device, list]:
    """What every run does first: threads, device, the record of this resume, seeds. Returns the
    start time, the code version the run started with, the device and the resume records."""
    cfg, state = prep.cfg, prep.state
    t_start = time.time()
    # the code a run started with; with the code it ends with, it decides whether the run is clean
    code_start = (state or {}).get("code_version_start") or runs.code_version()
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    device = ctx.device(cfg.device)
    resumes = list((state or {}).get("resumes") or [])
    if state is not None:
        resumes.append(_resume_record(state, prep.applied, device, ctx.is_main))
    _seed_everything(int(cfg.seed), cfg.train.deterministic)
    return t_start, code_start, device, resumes


def _train(prep: Prepared, ctx: distributed.Context) -> Path:
    cfg, run_dir, state = prep.cfg, prep.run_dir, prep.state
    t_start, code_start, device, resumes = _begin(prep, ctx)
    epochs = effective_epochs(cfg)

    splits = datasets.load(cfg.data.name, cfg.data.root, download=cfg.data.download,
                           val_size=cfg.data.val_size, preprocessing=cfg.data.preprocessing,
                           train_subset=effective_train_subset(cfg), use_extra=cfg.data.use_extra,
                           image_size=cfg.data.image_size, loader=cfg.data.loader, workers=cfg.data.workers,
                           augment=cfg.data.augment, seed=int(cfg.seed))
    model = build_model(cfg, splits.input_shape, splits.num_classes).to(device)
    # a resumed run continues from its own checkpoint; its source's record is in that checkpoint
    init = (state or {}).get("init_from")
    if state is None and cfg.train.get("init_from") is not None:
        init = init_weights(model, cfg.train.init_from)
    precision = matmul_precision.configure(model, cfg.train.get("precision", "fp32"), device)
    keep_freed_memory()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ctx.wrap(model, device)  # distributed: BatchNorm over the global batch
    ctx.seed(int(cfg.seed))
    loss_fn = build_loss(cfg.train.loss)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, schedule_epochs(cfg),
                                protocol_epochs=int(cfg.train.epochs))
    clip = LatentWeightClipper(model, cfg.optim.clip_latent, optimizer)
    eval_bs, batch_stats = eval_batching(cfg)
    train_model = ctx.ddp(model, device)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp == "bf16")
    # every split lives on the device (uint8): batches are slices, no host-to-device copy per step
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    val_x, val_y = splits.val_x.to(device), splits.val_y.to(device)
    test_x, test_y = splits.test_x.to(device), splits.test_y.to(device)

    start_epoch, best, wall_before = 0, {"val_error": math.inf, "test_error": None, "epoch": 0}, 0.0
    if state is not None:
        start_epoch, best, wall_before = _restore(state, cfg, ctx, device, model, optimizer, scheduler, run_dir)
    history = _reopen_metrics(ctx, run_dir, start_epoch)

    logger = build_logger(cfg, run_dir) if ctx.is_main else LocalLogger()
    if ctx.is_main:
        _print_header(cfg, run_dir, splits, model, epochs, device, ctx.world, precision)
        estimate.warn_paper_on_cpu(cfg, model, splits, device, epochs - start_epoch)
    extra = {"config_hash": prep.config_hash, "resumes": resumes, "num_threads": torch.get_num_threads(),
             "torch_device": str(device)}
    if init is not None:
        extra["init_from"] = init
    top5 = splits.num_classes >= TOP_K
    n_train = train_x.shape[0]
    steps = num_batches(n_train, cfg.train.batch_size)
    sync_every = 1 if device.type == "cpu" else 50
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.time()
        model.train()
        order = epoch_order(n_train, int(cfg.seed), epoch).to(device)
        if isinstance(train_x, datasets.ImageStream):  # its augmentation is drawn from (seed, epoch, image)
            train_x.set_epoch(epoch)
        loss_sum, seen = 0.0, 0
        bar = tqdm(ctx.batches(train_x, train_y, cfg.train.batch_size, splits.preprocess, order, device),
                   total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, mininterval=0.5,
                   disable=not cfg.train.progress or not ctx.is_main, file=sys.stderr)
        pending: list[tuple[int, torch.Tensor, int]] = []  # steps whose loss the host has not read
        for step, (xb, yb, n_global) in enumerate(bar, 1):
            if cfg.train.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast:  # bf16 matmuls/convs; parameters, quantized weights' source and loss stay fp32
                out = train_model(xb)
            loss, global_loss = ctx.loss(loss_fn, out.float(), yb, n_global)
            pending.append((step, global_loss.detach(), n_global))
            # the host reads the losses every `sync_every` steps (1 on CPU, where reading is free: a
            # non-finite loss stops the run before its step is taken); on a GPU, reading each one
            # would stall the queue of kernels
            if len(pending) >= sync_every or step == steps:
                values = torch.stack([v for _, v, _ in pending]).cpu().tolist()
                for (at, _, n), value in zip(pending, values):
                    if not math.isfinite(value):
                        _diverged(run_dir, value, epoch, at, ctx.is_main)
                    loss_sum += value * n
                    seen += n
                pending.clear()
                if step % 20 == 0 or sync_every > 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clip()
        train_time = time.time() - t0
        lr = optimizer.param_groups[-1]["lr"]
        scheduler.step()
        # evaluated on the plain model (no autocast; bf16 +-1 layers are exact), as `bnnrepro eval` would
        ctx.sync_buffers(model)
        val = ctx.evaluate(model, val_x, val_y, splits.preprocess, eval_bs, loss_fn, device, batch_stats)
        test = ctx.evaluate(model, test_x, test_y, splits.preprocess, eval_bs, loss_fn, device, batch_stats)
        # BNN protocol: the test error reported is the one at the epoch of best validation error
        # (ties go to the later epoch, as in the Theano code's `<=`); no validation set: last epoch.
        improved = not (val["error"] > best["val_error"])
        if improved:
            best = {"val_error": val["error"], "test_error": test["error"], "test_top5_error": test["top5_error"],
                    "epoch": epoch}
        row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen, "val_error": val["error"],
               "val_loss": val["loss"], "test_error": test["error"], "test_loss": test["loss"],
               "best_val_error": best["val_error"], "best_test_error": best["test_error"],
               "epoch_time_s": time.time() - t0, "train_time_s": train_time,
               "images_per_s": seen / train_time}
        if top5:
            row.update(val_top5_error=val["top5_error"], test_top5_error=test["top5_error"])
        history.append(row)
        rng = ctx.rng_states(device)  # a collective: every rank, before rank 0 writes
        if not ctx.is_main:
            continue
        runs.append_line(run_dir / METRICS, json.dumps(row))
        logger.log(row)
        wall = wall_before + time.time() - t_start
        _save_epoch(run_dir, epoch, improved, lambda **more: _state(cfg, splits, model, epoch, best, wall, **more,
                                                                    code_start=code_start, **extra),
                    optimizer, scheduler, device, rng)
        print(f"epoch {epoch:4d}/{epochs}  loss {row['train_loss']:.4f}  val {val['error']:6.2f}%  "
              f"test {test['error']:6.2f}%  best-val test {best['test_error']:6.2f}%  "
              f"({row['epoch_time_s']:.1f} s)", file=sys.stderr)

    if not ctx.is_main:
        return run_dir
    summary = _summary(cfg, splits, model, history, best, epochs, wall_before + time.time() - t_start)
    _finish(prep, summary, logger, precision=precision, code_start=code_start, world=ctx.world, init=init,
            resumes=resumes)
    print(f"test error {summary['test_error']:.2f}% (at best validation epoch {best['epoch']}), "
          f"final {summary['final_test_error']:.2f}%, {summary['wall_time_s']:.0f} s", file=sys.stderr)
    return run_dir


# ------------------------------------------------------------------ shared with the language-model loop (lm.py)

def _restore(state, cfg, ctx, device, model, optimizer, scheduler, run_dir) -> tuple[int, dict, float]:
    """Load a resumed run's weights, optimizer, schedule and generators; its (epoch, best, wall time)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ctx.active:
        ctx.restore_rng(state["rng"], int(cfg.seed), state["epoch"], device)
    else:
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
    if ctx.is_main:
        print(f"resuming {run_dir} after epoch {state['epoch']}", file=sys.stderr)
    return state["epoch"], dict(state["best"]), state["wall_time_s"]


def _reopen_metrics(ctx, run_dir: Path, start_epoch: int) -> list[dict]:
    """The metric lines of the epochs done (none for a new run), ``metrics.jsonl`` rewritten to them."""
    history = ctx.on_main(_read_metrics, run_dir / METRICS, start_epoch)
    if ctx.is_main:  # atomically: a kill right here must not lose the finished epochs' lines
        runs.atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))
    return history


def _diverged(run_dir: Path, value: float, epoch: int, step: int, is_main: bool) -> None:
    """A non-finite loss: the summary says so (the last good checkpoint is kept), and the run stops."""
    message = (f"loss is {value} at epoch {epoch}, step {step}; the last good "
               f"checkpoint (epoch {epoch - 1}) is kept in {run_dir}")
    if is_main:
        runs.atomic_write_json(run_dir / SUMMARY, {"status": "diverged", "message": message,
                                                   "epoch": epoch, "step": step})
    raise TrainingDiverged(message)


def _save_epoch(run_dir: Path, epoch: int, improved: bool, make_state, optimizer, scheduler, device, rng) -> None:
    """``best.pt`` when the epoch improved, then ``last.pt``; ``make_state(**more)`` builds a
    checkpoint (``more``: the optimizer, schedule and generators, for ``last.pt`` only). A failed
    write is a StorageError that says what was kept."""
    try:
        if improved:
            runs.save_checkpoint(run_dir / runs.BEST, make_state())
        runs.save_last(run_dir, make_state(optimizer=optimizer, scheduler=scheduler, device=device, rng_ranks=rng))
    except (StorageError, OSError) as err:  # disk full, quota, I/O error: the files so far stay as they were
        why = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)
        kept = any((run_dir / name).exists() for name in (runs.LAST, runs.PREVIOUS, runs.BEST))
        then = (f"the last complete checkpoint is kept: free space, then bnnrepro train resume={run_dir}"
                if kept else "no checkpoint was written, so the run is removed: free space, then start it again")
        raise StorageError(f"could not write the checkpoint of epoch {epoch} in {run_dir} ({why}); {then}") from None


def _finish(prep: Prepared, summary: dict, logger, *, precision, code_start, world, init, resumes) -> None:
    """Complete ``summary`` with the run's provenance, write it (atomically, last), draw the curves."""
    summary["precision"] = precision
    summary["code_version_start"] = code_start
    summary["world_size"] = world
    summary["config_hash"] = prep.config_hash
    if init is not None:
        summary["init_from"] = init
    if resumes:
        summary["resumes"] = resumes
    runs.atomic_write_json(prep.run_dir / SUMMARY, summary)
    runs.draw_curves(prep.run_dir)  # a plotting failure warns; the run stays completed
    logger.finish(summary)


def _state(cfg, splits, model, epoch, best, wall, optimizer=None, scheduler=None, device=None,
           rng_ranks=None, code_start=None, **extra) -> dict:
    state = {"epoch": epoch, "best": best, "wall_time_s": wall, "code_version_start": code_start, **extra,
             "config": OmegaConf.to_container(cfg, resolve=True),
             "input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
        state["rng"] = {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
        if rng_ranks is not None:  # distributed: every rank's generators, so a resume is exact
            state["rng"]["ranks"] = rng_ranks
    return state


def _resume_record(state: dict, applied: list[str], device, is_main: bool) -> dict:
    """What this resume changed: the safe overrides applied, and a thread count or device other than
    the checkpoint's (warned: float sums in another order give other bits from here on)."""
    record = {"after_epoch": state["epoch"], "time": time.time(), "applied": applied,
              "num_threads": torch.get_num_threads(), "device": str(device)}
    for key, now in (("num_threads", torch.get_num_threads()), ("torch_device", str(device))):
        before = state.get(key)
        if before is not None and before != now:
            record.setdefault("changed", []).append(f"{key}: {before} -> {now}")
            if is_main:
                print(f"warning: resuming with {key} {now} where the run so far used {before}: the result "
                      "will not be bit-identical to an uninterrupted run (recorded in summary.json 'resumes')",
                      file=sys.stderr)
    return record


def _summary(cfg, splits, model, history, best, epochs, wall) -> dict:
    last = history[-1]
    # top-5 at the best-validation epoch, as test_error (a checkpoint from before top-5 has none)
    top5 = ({"test_top5_error": best.get("test_top5_error"), "final_test_top5_error": last.get("test_top5_error")}
            if splits.num_classes >= TOP_K else {})
    return {
        "status": "completed",
        "test_error": best["test_error"], "best_val_error": best["val_error"], "best_epoch": best["epoch"],
        "final_test_error": last["test_error"], "final_val_error": last["val_error"], **top5,
        "epochs_done": last["epoch"], "epochs": epochs, "wall_time_s": wall,
        "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history])),
        "images_per_s": float(np.mean([r["images_per_s"] for r in history])),
        **_run_fields(cfg, model, epochs, int(splits.train_x.shape[0]), splits.info,
                      train_examples=int(splits.train_x.shape[0])),
    }


def _run_fields(cfg, model, epochs: int, n_train: int, data_info: dict, /, **effective) -> dict:
    """The part of ``summary.json`` every run has: what was trained (dataset, model, quantizers,
    scale, the effective settings, ``effective`` added to them), on what, and by which code."""
    return {
        "dataset": cfg.data.name, "model": cfg.model.name,
        "quantizer": {"weight": cfg.quant.weight, "w_bits": cfg.quant.w_bits,
                      "activation": cfg.quant.activation, "a_bits": cfg.quant.a_bits,
                      "gradient": cfg.quant.gradient, "g_bits": cfg.quant.g_bits},
        "scale": cfg.scale.name, "width_mult": effective_width_mult(cfg),
        "effective": {"epochs": epochs, "width_mult": effective_width_mult(cfg),
                      "dropout_hidden": effective_dropout_hidden(cfg), "lr_schedule_epochs": schedule_epochs(cfg),
                      **effective},
        "train_examples": n_train, "seed": int(cfg.seed),
        "paper": cfg.paper, "experiment": cfg.experiment,
        "n_params": sum(p.numel() for p in model.parameters()),
        "code_version": runs.code_version(), "environment": runs.environment(),
        "invocation": runs.invocation(_overrides()),
        "data": data_info,
    }


def _print_header(cfg, run_dir, splits, model, epochs, device, world=1, precision=None) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    matmuls = ""
    if precision:
        layers = precision["bf16_layers"]
        matmuls = (f"; +-1 layers' matmuls {precision['used']}"
                   f"{f' ({len(layers)} layers)' if layers else ''} [{precision['reason']}]")
    print(f"bnnrepro train: {cfg.experiment or cfg.paper or cfg.model.name} on {cfg.data.name} "
          f"[scale={cfg.scale.name}: {cfg.scale.description}]\n"
          f"  model {cfg.model.name} ({n_params:,} params, width x{effective_width_mult(cfg):g}), "
          f"weights {cfg.quant.weight}, activations {cfg.quant.activation}; {epochs} of "
          f"{cfg.train.epochs} epochs (LR schedule: {cfg.optim.schedule} over {schedule_epochs(cfg)} epochs), "
          f"batch {cfg.train.batch_size}, {splits.train_x.shape[0]} train / {splits.val_x.shape[0]} val / "
          f"{splits.test_x.shape[0]} test; device {device}, {torch.get_num_threads()} threads"
          f"{f', {world} processes (DDP, global batch)' if world > 1 else ''}"
          f"{matmuls}\n"
          f"  run dir {run_dir}", file=sys.stderr)
