"""The training loop: epochs, BNN's best-validation protocol, checkpoint/resume, summary.json last."""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import data as datasets
from ..config import (Config, effective_dropout_hidden, effective_epochs, effective_train_subset,
                      effective_width_mult, schedule_epochs, validate)
from ..errors import CheckpointError, TrainingDiverged
from ..nn import precision as matmul_precision
from ..optim import LatentWeightClipper, build_optimizer, build_scheduler
from .. import runs
from . import distributed, estimate
from .batches import epoch_order, num_batches
from .factory import build_loss, build_model
from .loggers import LocalLogger, build_logger

from ..runs import CONFIG, METRICS, SUMMARY


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def _load_resume_config(run_dir: Path, overrides: DictConfig | None) -> DictConfig:
    saved, why = runs.read_config(run_dir)
    if saved is None:
        raise FileNotFoundError(f"resume={run_dir}: {why} there; is it a bnnrepro run directory?")
    # merged onto the schema so that fields added since the run started take their defaults
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(saved))
    if overrides is not None and overrides.get("data", {}).get("root"):
        cfg.data.root = overrides.data.root  # the data may live elsewhere on the resuming machine
    return cfg


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


def prepare(cfg: DictConfig) -> tuple[DictConfig, Path, dict | None]:
    """Validate, resolve resume, create or reopen the run directory. Loads no data."""
    if cfg.get("resume"):
        run_dir = Path(cfg.resume).expanduser()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"resume={cfg.resume}: no such run directory")
        cfg = _load_resume_config(run_dir, cfg)
        validate(cfg)
        status = _finished_status(run_dir)
        if status:
            return cfg, run_dir, {"finished": status}
        return cfg, run_dir, runs.load_resumable(run_dir)
    validate(cfg)
    root = runs.runs_root(cfg.runs_dir)
    runs.check_writable(root)
    # missing or corrupt archives fail here, before a run directory exists (md5s are cached)
    datasets.check(cfg.data.name, cfg.data.root, download=cfg.data.download, use_extra=cfg.data.use_extra)
    run_dir = runs.create(root, cfg.run_name, runs.default_name(cfg))
    runs.atomic_write_text(run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    return cfg, run_dir, None


def fit(cfg: DictConfig) -> Path:
    """Train per ``cfg``; returns the run directory. ``cfg.resume`` continues an interrupted run.
    Under torchrun (WORLD_SIZE > 1) this is one rank of a data-parallel job (see distributed.py)."""
    ctx = distributed.setup()
    finished = False
    try:
        run_dir = _fit(cfg, ctx)
        finished = True
        return run_dir
    finally:
        ctx.close(finished)


def _fit(cfg: DictConfig, ctx: distributed.Context) -> Path:
    cfg, run_dir, state = ctx.on_main(prepare, cfg)  # only rank 0 touches the runs root
    if state and state.get("finished"):
        if ctx.is_main:
            print(f"run {run_dir} is already {state['finished']}; nothing to do", file=sys.stderr)
        return run_dir
    t_start = time.time()
    # the code a run started with; with the code it ends with, it decides whether the run is clean
    code_start = (state or {}).get("code_version_start") or runs.code_version()
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    device = ctx.device(cfg.device)
    _seed_everything(int(cfg.seed), cfg.train.deterministic)
    epochs = effective_epochs(cfg)

    splits = datasets.load(cfg.data.name, cfg.data.root, download=cfg.data.download,
                           val_size=cfg.data.val_size, preprocessing=cfg.data.preprocessing,
                           train_subset=effective_train_subset(cfg), use_extra=cfg.data.use_extra,
                           image_size=cfg.data.image_size)
    model = build_model(cfg, splits.input_shape, splits.num_classes).to(device)
    precision = matmul_precision.configure(model, cfg.train.get("precision", "fp32"), device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ctx.wrap(model, device)  # distributed: BatchNorm over the global batch
    ctx.seed(int(cfg.seed))
    loss_fn = build_loss(cfg.train.loss)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, schedule_epochs(cfg),
                                protocol_epochs=int(cfg.train.epochs))
    clip = LatentWeightClipper(model, cfg.optim.clip_latent)
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
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ctx.active:
            ctx.restore_rng(state["rng"], int(cfg.seed), state["epoch"], device)
        else:
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"])
        start_epoch, best, wall_before = state["epoch"], dict(state["best"]), state["wall_time_s"]
        if ctx.is_main:
            print(f"resuming {run_dir} after epoch {start_epoch}", file=sys.stderr)
    history = ctx.on_main(_read_metrics, run_dir / METRICS, start_epoch)
    if ctx.is_main:  # atomically: a kill right here must not lose the finished epochs' lines
        runs.atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    logger = build_logger(cfg, run_dir) if ctx.is_main else LocalLogger()
    if ctx.is_main:
        _print_header(cfg, run_dir, splits, model, epochs, device, ctx.world, precision)
        estimate.warn_paper_on_cpu(cfg, model, splits, device, epochs - start_epoch)
    n_train = train_x.shape[0]
    steps = num_batches(n_train, cfg.train.batch_size)
    sync_every = 1 if device.type == "cpu" else 50
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.time()
        model.train()
        order = epoch_order(n_train, int(cfg.seed), epoch).to(device)
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
                        message = (f"loss is {value} at epoch {epoch}, step {at}; the last good "
                                   f"checkpoint (epoch {epoch - 1}) is kept in {run_dir}")
                        if ctx.is_main:
                            runs.atomic_write_json(run_dir / SUMMARY, {"status": "diverged", "message": message,
                                                                             "epoch": epoch, "step": at})
                        raise TrainingDiverged(message)
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
        val = ctx.evaluate(model, val_x, val_y, splits.preprocess, cfg.train.eval_batch_size, loss_fn, device)
        test = ctx.evaluate(model, test_x, test_y, splits.preprocess, cfg.train.eval_batch_size, loss_fn, device)
        # BNN protocol: the test error reported is the one at the epoch of best validation error
        # (ties go to the later epoch, as in the Theano code's `<=`); no validation set: last epoch.
        improved = not (val["error"] > best["val_error"])
        if improved:
            best = {"val_error": val["error"], "test_error": test["error"], "epoch": epoch}
        row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen, "val_error": val["error"],
               "val_loss": val["loss"], "test_error": test["error"], "test_loss": test["loss"],
               "best_val_error": best["val_error"], "best_test_error": best["test_error"],
               "epoch_time_s": time.time() - t0, "train_time_s": train_time,
               "images_per_s": seen / train_time}
        history.append(row)
        rng = ctx.rng_states(device)  # a collective: every rank, before rank 0 writes
        if not ctx.is_main:
            continue
        runs.append_line(run_dir / METRICS, json.dumps(row))
        logger.log(row)
        wall = wall_before + time.time() - t_start
        try:
            if improved:
                runs.save_checkpoint(run_dir / runs.BEST,
                                     _state(cfg, splits, model, epoch, best, wall, code_start=code_start))
            runs.save_last(run_dir, _state(cfg, splits, model, epoch, best, wall, optimizer, scheduler, device, rng,
                                           code_start=code_start))
        except OSError as err:  # disk full, quota, I/O error: the files written so far stay as they were
            raise CheckpointError(
                f"could not write the checkpoint of epoch {epoch} in {run_dir}: {err.strerror or err}; "
                f"the last complete checkpoint is kept: free space, then bnnrepro train resume={run_dir}") from None
        print(f"epoch {epoch:4d}/{epochs}  loss {row['train_loss']:.4f}  val {val['error']:6.2f}%  "
              f"test {test['error']:6.2f}%  best-val test {best['test_error']:6.2f}%  "
              f"({row['epoch_time_s']:.1f} s)", file=sys.stderr)

    if not ctx.is_main:
        return run_dir
    summary = _summary(cfg, splits, model, history, best, epochs, wall_before + time.time() - t_start)
    summary["precision"] = precision
    summary["code_version_start"] = code_start
    summary["world_size"] = ctx.world
    runs.atomic_write_json(run_dir / SUMMARY, summary)
    runs.draw_curves(run_dir)  # a plotting failure warns; the run stays completed
    logger.finish(summary)
    print(f"test error {summary['test_error']:.2f}% (at best validation epoch {best['epoch']}), "
          f"final {summary['final_test_error']:.2f}%, {summary['wall_time_s']:.0f} s", file=sys.stderr)
    return run_dir


def _state(cfg, splits, model, epoch, best, wall, optimizer=None, scheduler=None, device=None,
           rng_ranks=None, code_start=None) -> dict:
    state = {"epoch": epoch, "best": best, "wall_time_s": wall, "code_version_start": code_start,
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


def _summary(cfg, splits, model, history, best, epochs, wall) -> dict:
    last = history[-1]
    return {
        "status": "completed",
        "test_error": best["test_error"], "best_val_error": best["val_error"], "best_epoch": best["epoch"],
        "final_test_error": last["test_error"], "final_val_error": last["val_error"],
        "epochs_done": last["epoch"], "epochs": epochs, "wall_time_s": wall,
        "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history])),
        "images_per_s": float(np.mean([r["images_per_s"] for r in history])),
        "dataset": cfg.data.name, "model": cfg.model.name,
        "quantizer": {"weight": cfg.quant.weight, "w_bits": cfg.quant.w_bits,
                      "activation": cfg.quant.activation, "a_bits": cfg.quant.a_bits,
                      "gradient": cfg.quant.gradient, "g_bits": cfg.quant.g_bits},
        "scale": cfg.scale.name, "width_mult": effective_width_mult(cfg),
        "effective": {"epochs": epochs, "width_mult": effective_width_mult(cfg),
                      "dropout_hidden": effective_dropout_hidden(cfg), "lr_schedule_epochs": schedule_epochs(cfg),
                      "train_examples": int(splits.train_x.shape[0])},
        "train_examples": int(splits.train_x.shape[0]), "seed": int(cfg.seed),
        "paper": cfg.paper, "experiment": cfg.experiment,
        "n_params": sum(p.numel() for p in model.parameters()),
        "code_version": runs.code_version(), "environment": runs.environment(),
        "invocation": runs.invocation(_overrides()),
        "data": splits.info,
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
