"""``bnnrepro eval <run dir|checkpoint> [--engine torch|packed] [--split test|val|train] [--which best|last]
[data.root=DIR] [train.eval_batch_size=N]``: the top-1 (and top-5) error of a trained model on a split,
with torch or packed."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import USER_ERRORS, CheckpointError, ConfigError


def parse(argv: list[str]) -> tuple[str, dict]:
    """The command line -> (target, options for :func:`run`); raises UsageError/ConfigError."""
    from . import commandline

    args = commandline.parse(commandline.eval_parser(), argv)
    batch = args.overrides.get("train.eval_batch_size", 1000)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"eval: train.eval_batch_size={batch!r} must be a positive integer")
    return args.target, {"engine": args.engine, "split": args.split, "which": args.which,
                         "data.root": args.overrides.get("data.root"),
                         "batch_size": batch}


DEFAULTS = {"engine": "torch", "split": "test", "which": "best", "data.root": None, "batch_size": 1000}


def run(target: str, opts: dict | None = None) -> dict:
    """The top-1 and top-5 error (%) of the trained model of ``target`` (a run directory or checkpoint)
    on a split: ``{"error", "top5_error", "n", "seconds", "dataset", **opts}``; ``top5_error`` is None
    for a model with fewer than 5 outputs. ``opts`` override :data:`DEFAULTS` (engine
    torch|packed, split test|val|train, which best|last, data.root, batch_size)."""
    import torch

    from . import data as datasets
    from .config import is_language_model
    from .train.batches import TOP_K, eval_batching, evaluate, top5_wrong
    from .train import load_model

    opts = {**DEFAULTS, **(opts or {})}
    _refuse_artifact(target)
    model, cfg = load_model(target, which=opts["which"])
    root = opts["data.root"] or cfg.data.root
    if is_language_model(cfg):
        return _run_language_model(model, cfg, root, opts)
    splits = datasets.load(cfg.data.name, root, download=cfg.data.download, val_size=cfg.data.val_size,
                           preprocessing=cfg.data.preprocessing, use_extra=False,
                           image_size=cfg.data.image_size, workers=int(cfg.data.get("workers") or 0),
                           # a streamed run is evaluated streaming (no augmentation, any split);
                           # the packed engine takes a tensor
                           loader="memory" if opts["engine"] == "packed" else cfg.data.get("loader", "memory"))
    x, y = getattr(splits, f"{opts['split']}_x"), getattr(splits, f"{opts['split']}_y")
    batch_size, batch_stats = eval_batching(cfg, opts["batch_size"])
    if batch_stats and opts["engine"] == "packed":
        raise ConfigError(f"eval: {target} was trained with model.bn_eval_stats=batch (BatchNorm normalises each "
                          "test batch with its own statistics); the packed engine folds running statistics, "
                          "so only --engine torch evaluates it as trained")
    t0 = time.perf_counter()
    if opts["engine"] == "packed":
        from .kernels.commands import predict_packed

        logits = torch.as_tensor(predict_packed(model, x, return_logits=True,
                                                preprocessing=cfg.data.preprocessing)).reshape(x.shape[0], -1)
        error = 100.0 * float((logits.argmax(1) != y).float().mean())
        top5 = 100.0 * float(top5_wrong(logits, y).float().mean()) if logits.shape[1] >= TOP_K else None
    else:
        result = evaluate(model, x, y, splits.preprocess, batch_size, batch_stats=batch_stats)
        error, top5 = result["error"], result["top5_error"]
    return {"error": error, "top5_error": top5, "n": int(x.shape[0]), "seconds": time.perf_counter() - t0,
            **opts, "dataset": cfg.data.name}


def _run_language_model(model, cfg, root, opts: dict) -> dict:
    """A language model's next-word error and perplexity on a split, as its training loop measured
    them (``lm.eval_columns`` columns, truncated-BPTT segments; ``batch_size`` is not used)."""
    from .data.ptb import batchify
    from .train import lm

    if opts["engine"] == "packed":
        raise ConfigError(f"eval: --engine packed runs bit-packed feed-forward nets; {cfg.model.name} is a "
                          "language model; allowed: --engine torch")
    corpus = lm.load_corpus(cfg, root=root)
    stream = {"test": corpus.test, "val": corpus.valid, "train": corpus.train}[opts["split"]]
    t0 = time.perf_counter()
    result = lm.evaluate(model, batchify(stream, lm.eval_columns(stream.numel())), int(cfg.train.bptt))
    return {"error": result["error"], "top5_error": None, "perplexity": result["perplexity"],
            "n": result["tokens"], "seconds": time.perf_counter() - t0, **opts, "dataset": cfg.data.name}


def _refuse_artifact(target: str) -> None:
    """A ``.bnn`` holds no config (no dataset, no split), so eval cannot run it; say what can."""
    if Path(target).is_file():
        from .kernels.artifact import is_artifact

        if is_artifact(target):
            raise CheckpointError(f"eval: {target} is a packed artifact (.bnn), not a run directory or checkpoint; "
                                  f"compare it with the run it was packed from: bnnrepro compare <run> "
                                  f"--artifact {target} (or evaluate the run: bnnrepro eval <run> --engine packed)")


def main(argv: list[str]) -> int:
    try:
        target, opts = parse(argv)
        result = run(target, opts)
    except USER_ERRORS as err:
        print(f"bnnrepro: error: {err}", file=sys.stderr)
        return 2
    top5 = "" if result["top5_error"] is None else f" (top-5 {result['top5_error']:.2f}%)"
    if "perplexity" in result:
        print(f"{result['dataset']} {result['split']} perplexity {result['perplexity']:.2f}, next-word error "
              f"{result['error']:.2f}% on {result['n']} tokens ({result['seconds']:.2f} s)")
        return 0
    print(f"{result['dataset']} {result['split']} error {result['error']:.2f}%{top5} on {result['n']} images "
          f"({result['engine']} engine, {result['seconds']:.2f} s)")
    return 0
