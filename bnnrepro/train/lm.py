"""The language-model loop: truncated BPTT over a token corpus, perplexity on valid and test each
epoch, the best-validation protocol. The run directory, checkpoints, resume, ``metrics.jsonl`` and
``summary.json`` are the classification loop's (:mod:`.loop`: ``prepare`` made the run, and the
helpers below write it), so a language-model run resumes, diverges and is tabled like any other.

Protocol (QNN's PTB experiments give none of it: every choice is [U]):

* the training stream is cut into ``train.batch_size`` contiguous columns (``data.ptb.batchify``)
  and walked in segments of ``train.bptt`` tokens; the hidden state is carried from one segment to
  the next, detached (truncated BPTT), and reset to zeros at the start of every epoch and split;
* ``train.clip_grad_norm`` (null: none) clips the global gradient norm before every step; the QNN
  presets take 0.25, PyTorch's word_language_model example's value;
* validation and test are cut into :data:`EVAL_COLUMNS` = 10 contiguous columns (PyTorch's
  word_language_model example's evaluation batch; fewer for a split under 20 tokens), each read
  from a zero state, the tail that does not fill a column dropped. A fixed number, not
  ``train.eval_batch_size``: it changes the perplexity a little (10 cold starts), so it is part of
  the protocol (recorded as ``effective.eval_columns``). One column would score every token with its
  whole history but, being sequential, costs ~3x the time (~5 min an epoch for PTB on one thread);
* perplexity = exp(mean per-token cross entropy); the next-word error (%, top-1) is recorded too,
  as ``test_error``, the field every run record has;
* the test perplexity reported is the one at the epoch of best validation perplexity (ties go to
  the later epoch, as in the classification loop); ``final_*`` are the last epoch's.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .. import data as datasets
from .. import runs
from ..config import effective_epochs, effective_train_subset, effective_width_mult, schedule_epochs
from ..data.archives import resolve_root_with_source
from ..data.ptb import batchify, bptt_batches
from ..errors import ConfigError
from ..optim import LatentWeightClipper, build_optimizer, build_scheduler
from ..runs import METRICS
from . import distributed
from .checkpoint import init_weights
from .factory import build_model
from .loggers import build_logger
from . import loop as _loop
from .loop import Prepared, _begin, _diverged, _finish, _reopen_metrics, _restore, _run_fields, _save_epoch, _state

EVAL_COLUMNS = 10  # validation and test: contiguous columns, each from a zero state (see above)


def eval_columns(tokens: int) -> int:
    """The columns a split of ``tokens`` is read in: :data:`EVAL_COLUMNS`, fewer for a tiny split."""
    return min(EVAL_COLUMNS, max(1, tokens // 2))


@dataclass
class Corpus:
    """A text dataset as the loop uses it: token streams, and the shape the run's checkpoint records
    (``input_shape`` (bptt,), ``num_classes`` the vocabulary size; :func:`.loop._state` reads them)."""
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]
    info: dict
    input_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.vocab)


def load_corpus(cfg, root=None) -> Corpus:
    """The run's text dataset, through the dataset registry (located, read, recorded); ``root``
    (default ``data.root``) is where the files are."""
    spec = datasets.registry.get(cfg.data.name)
    root, source = resolve_root_with_source(cfg.data.root if root is None else root)
    located = spec.locate(root, False, root_source=source)
    text = spec.read(located)
    subset = effective_train_subset(cfg)
    train = text.train[:subset] if subset else text.train
    info = {"dataset": cfg.data.name, "root": str(root), "root_source": source, "layout": spec.layout,
            "files": {rel: f.record() for rel, f in located.items()},
            "tokens": {"train": train.numel(), "valid": text.valid.numel(), "test": text.test.numel()},
            "vocab_size": len(text.vocab), "train_subset": subset,
            "vocab_from": "the whole training file, by decreasing count then alphabetically"}
    return Corpus(train, text.valid, text.test, text.vocab, info, (int(cfg.train.bptt),))


def detach(state):
    """A recurrent state (a list of per-layer tuples of tensors) cut from the graph that made it."""
    return None if state is None else [tuple(t.detach() for t in layer) for layer in state]


def segment_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state):
    """Mean cross entropy of one (T, B) segment, the state after it."""
    logits, state = model(x, state)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)), logits, state


def train_epoch(model: nn.Module, data: torch.Tensor, bptt: int, optimizer, *, clip_grad_norm=None,
                after_step=None, on_loss=None, progress=None) -> tuple[float, int]:
    """One epoch of truncated BPTT over ``data`` (T, B): each segment starts from the previous
    one's final state, detached. ``on_loss(step, value)`` sees each segment's loss before its step
    is taken (the loop stops a diverged run there); ``after_step()`` runs after each optimizer
    step (latent-weight clipping). Returns (sum of per-token losses, tokens)."""
    model.train()
    state, loss_sum, tokens = None, 0.0, 0
    for step, (x, y) in enumerate(bptt_batches(data, bptt), 1):
        loss, _, state = segment_loss(model, x, y, detach(state))
        value = loss.item()
        if on_loss is not None:
            on_loss(step, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if after_step is not None:
            after_step()
        loss_sum += value * y.numel()
        tokens += y.numel()
        if progress is not None:
            progress(loss_sum / tokens)
    return loss_sum, tokens


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, bptt: int) -> dict:
    """Loss (mean per-token cross entropy), perplexity and next-word error (%) over ``data`` (T, B)."""
    was_training = model.training
    model.eval()
    state, loss_sum, wrong, tokens = None, 0.0, 0, 0
    try:
        for x, y in bptt_batches(data, bptt):
            loss, logits, state = segment_loss(model, x, y, state)
            loss_sum += loss.item() * y.numel()
            wrong += int((logits.argmax(-1) != y).sum())
            tokens += y.numel()
    finally:
        model.train(was_training)
    mean = loss_sum / tokens
    return {"loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf,
            "error": 100.0 * wrong / tokens, "tokens": tokens}


def train_lm(prep: Prepared, ctx: distributed.Context) -> Path:
    cfg, run_dir, state = prep.cfg, prep.run_dir, prep.state
    if ctx.active:
        raise ConfigError(f"model.name={cfg.model.name!r}: the language-model loop runs in one process; "
                          "run it without torchrun")
    t_start, code_start, device, resumes = _begin(prep, ctx)
    epochs, bptt = effective_epochs(cfg), int(cfg.train.bptt)
    clip_norm = None if cfg.train.clip_grad_norm is None else float(cfg.train.clip_grad_norm)

    corpus = load_corpus(cfg)
    train_data = batchify(corpus.train, int(cfg.train.batch_size)).to(device)
    valid_data = batchify(corpus.valid, eval_columns(corpus.valid.numel())).to(device)
    test_data = batchify(corpus.test, eval_columns(corpus.test.numel())).to(device)
    model = build_model(cfg, corpus.input_shape, corpus.num_classes).to(device)
    init = (state or {}).get("init_from")
    if state is None and cfg.train.get("init_from") is not None:
        init = init_weights(model, cfg.train.init_from)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, schedule_epochs(cfg), protocol_epochs=int(cfg.train.epochs))
    clip_latent = LatentWeightClipper(model, cfg.optim.clip_latent, optimizer)

    start_epoch, wall_before = 0, 0.0
    best = {"val_perplexity": math.inf, "test_perplexity": None, "val_error": None, "test_error": None, "epoch": 0}
    if state is not None:
        start_epoch, best, wall_before = _restore(state, cfg, ctx, device, model, optimizer, scheduler, run_dir)
    history = _reopen_metrics(ctx, run_dir, start_epoch)
    logger = build_logger(cfg, run_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"bnnrepro train: {cfg.experiment or cfg.paper or cfg.model.name} on {cfg.data.name} "
          f"[scale={cfg.scale.name}: {cfg.scale.description}]\n"
          f"  language model {cfg.model.name} ({n_params:,} params, width x{effective_width_mult(cfg):g}), "
          f"weights {cfg.quant.weight}, hidden state {cfg.quant.activation}; {epochs} of {cfg.train.epochs} "
          f"epochs, {train_data.shape[1]} columns x bptt {bptt}, gradient-norm clip {clip_norm}; "
          f"{corpus.train.numel():,} train / {corpus.valid.numel():,} valid / {corpus.test.numel():,} test tokens, "
          f"vocabulary {corpus.num_classes:,}; device {device}, {torch.get_num_threads()} threads\n"
          f"  run dir {run_dir}", file=sys.stderr)
    extra = {"config_hash": prep.config_hash, "resumes": resumes, "num_threads": torch.get_num_threads(),
             "torch_device": str(device)}
    if init is not None:
        extra["init_from"] = init
    steps = math.ceil((train_data.shape[0] - 1) / bptt)
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.time()
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, mininterval=0.5,
                   disable=not cfg.train.progress, file=sys.stderr)

        def on_loss(step, value, epoch=epoch):
            if not math.isfinite(value):
                bar.close()
                _diverged(run_dir, value, epoch, step, True)

        def progress(mean_loss):
            bar.update(1)
            if bar.n % 20 == 0:
                bar.set_postfix(ppl=f"{math.exp(min(mean_loss, 700)):.1f}")

        try:
            loss_sum, tokens = train_epoch(model, train_data, bptt, optimizer, clip_grad_norm=clip_norm,
                                           after_step=clip_latent, on_loss=on_loss, progress=progress)
        finally:
            bar.close()
        train_time = time.time() - t0
        lr = optimizer.param_groups[-1]["lr"]
        scheduler.step()
        val = evaluate(model, valid_data, bptt)
        test = evaluate(model, test_data, bptt)
        improved = not (val["perplexity"] > best["val_perplexity"])
        if improved:
            best = {"val_perplexity": val["perplexity"], "test_perplexity": test["perplexity"],
                    "val_error": val["error"], "test_error": test["error"], "epoch": epoch}
        train_loss = loss_sum / tokens
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_perplexity": math.exp(min(train_loss, 700)),
               "val_loss": val["loss"], "val_perplexity": val["perplexity"], "val_error": val["error"],
               "test_loss": test["loss"], "test_perplexity": test["perplexity"], "test_error": test["error"],
               "best_val_perplexity": best["val_perplexity"], "best_test_perplexity": best["test_perplexity"],
               "best_val_error": best["val_error"], "best_test_error": best["test_error"],
               "epoch_time_s": time.time() - t0, "train_time_s": train_time, "tokens_per_s": tokens / train_time}
        history.append(row)
        runs.append_line(run_dir / METRICS, json.dumps(row))
        logger.log(row)
        wall = wall_before + time.time() - t_start
        _save_epoch(run_dir, epoch, improved, lambda **more: _state(cfg, corpus, model, epoch, best, wall, **more,
                                                                    code_start=code_start, **extra),
                    optimizer, scheduler, device, ctx.rng_states(device))
        print(f"epoch {epoch:4d}/{epochs}  train ppl {row['train_perplexity']:8.2f}  val ppl {val['perplexity']:8.2f}  "
              f"test ppl {test['perplexity']:8.2f}  best-val test ppl {best['test_perplexity']:8.2f}  "
              f"({row['epoch_time_s']:.1f} s)", file=sys.stderr)

    summary = _summary(cfg, corpus, model, history, best, epochs, wall_before + time.time() - t_start)
    _finish(prep, summary, logger, precision=None, code_start=code_start, world=1, init=init, resumes=resumes)
    print(f"test perplexity {summary['test_perplexity']:.2f} (at best validation epoch {best['epoch']}), "
          f"final {summary['final_test_perplexity']:.2f}, {summary['wall_time_s']:.0f} s", file=sys.stderr)
    return run_dir


def _summary(cfg, corpus: Corpus, model, history, best, epochs, wall) -> dict:
    last = history[-1]
    return {
        "status": "completed",
        "test_perplexity": best["test_perplexity"], "val_perplexity": best["val_perplexity"],
        "best_epoch": best["epoch"], "test_error": best["test_error"], "best_val_error": best["val_error"],
        "final_test_perplexity": last["test_perplexity"], "final_val_perplexity": last["val_perplexity"],
        "final_test_error": last["test_error"], "final_val_error": last["val_error"],
        "epochs_done": last["epoch"], "epochs": epochs, "wall_time_s": wall,
        "epoch_time_s": sum(r["epoch_time_s"] for r in history) / len(history),
        "tokens_per_s": sum(r["tokens_per_s"] for r in history) / len(history),
        **_run_fields(cfg, model, epochs, corpus.train.numel(), corpus.info, train_tokens=corpus.train.numel(),
                      bptt=int(cfg.train.bptt), clip_grad_norm=cfg.train.clip_grad_norm, eval_columns=EVAL_COLUMNS),
    }


_loop.LANGUAGE_MODEL_LOOP[:] = [train_lm]
