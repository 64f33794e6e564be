"""``bnnrepro <command> ...``: train and eval are Hydra apps; the rest are argparse commands.

  bnnrepro train [+paper=bnn] [scale=quick] [key=value ...] [-m ...]   train (Hydra overrides, multirun)
  bnnrepro train resume=<run dir>                                     continue an interrupted run
  bnnrepro eval <run dir|checkpoint> [engine=torch|packed] [split=test] [data.root=...]
  bnnrepro pack | compare | bench ...                                 bit-packed inference (see --help)
"""
from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from .errors import USER_ERRORS

COMMANDS = {
    "train": "train a model (Hydra overrides; -m for multirun; resume=<run dir> to continue)",
    "eval": "evaluate a run directory or checkpoint: bnnrepro eval <run|ckpt> [engine=packed] [split=test]",
    "pack": "write a bit-packed artifact of a trained BNN: bnnrepro pack <run|ckpt> -o model.bnn",
    "compare": "run torch and the packed engine layer by layer, name the first layer that differs",
    "bench": "benchmark packed binary kernels against torch float32 (--quick, --json FILE)",
    "robustness": "test-time weight distortion sweeps: bnnrepro robustness --noise additive --runs <dir> ...",
    "table": "paper-vs-reproduced tables from finished runs: bnnrepro table <paper>",
    "summary": "bit-aware model summary: bnnrepro summary <preset|run>",
}


def _usage() -> str:
    lines = ["usage: bnnrepro <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "examples:", "  bnnrepro train +paper=bnn scale=quick",
              "  bnnrepro train -m +paper=bnn scale=smoke seed=0,1,2",
              "  bnnrepro train resume=runs/<run dir>", "  bnnrepro eval runs/<run dir>",
              "", "configs: conf/ (groups data, model, optim, scale, logger; presets +paper=, +experiment=)"]
    return "\n".join(lines)


def _hydra_main(task_function, argv: list[str], prog: str) -> int:
    """Run ``task_function(cfg)`` as a Hydra app over ``argv`` (overrides, -m, --cfg job, ...)."""
    import hydra

    from .config import register_configs

    register_configs()
    main = hydra.main(config_path="pkg://bnnrepro.conf", config_name="config", version_base="1.3")(
        task_function)
    saved = sys.argv
    sys.argv = [prog] + argv
    try:
        main()
    finally:
        sys.argv = saved
    return 0


def _fail(err: BaseException) -> None:
    print(f"bnnrepro: error: {err}", file=sys.stderr)
    raise SystemExit(2)


def _train_task(cfg: DictConfig) -> None:
    from .train import fit

    try:
        run_dir = fit(cfg)
    except USER_ERRORS as err:
        _fail(err)
    if os.environ.get("RANK", "0") != "0":
        return  # torchrun: rank 0 reports the run
    _record_in_sweep(run_dir)
    print(f"run: {run_dir}")


def _record_in_sweep(run_dir) -> None:
    """In a multirun, append the run directory to ``<sweep dir>/runs.txt`` (one short O_APPEND write
    per job, so parallel jobs do not clobber each other)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    from .runs import record_in_sweep

    record_in_sweep(HydraConfig.get().sweep.dir, run_dir)


def cmd_train(argv: list[str]) -> int:
    return _hydra_main(_train_task, argv, "bnnrepro train")


def _lazy(target: str):
    """A handler that imports ``module:function`` only when its command runs (fast --help)."""
    def run(argv: list[str]) -> int:
        import importlib

        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(argv)

    return run


HANDLERS = {
    "train": cmd_train,
    "eval": _lazy("bnnrepro.evaluate:main"),
    "pack": _lazy("bnnrepro.kernels.commands:pack_main"),
    "compare": _lazy("bnnrepro.kernels.commands:compare_main"),
    "bench": _lazy("bnnrepro.kernels.commands:bench_main"),
    "robustness": _lazy("bnnrepro.robustness.commands:main"),
    "table": _lazy("bnnrepro.report.commands:table_main"),
    "summary": _lazy("bnnrepro.report.commands:summary_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"bnnrepro {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"bnnrepro: unknown command {command!r}; allowed: {', '.join(HANDLERS)}\n\n{_usage()}",
              file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest) or 0
    except KeyboardInterrupt:
        print("\ninterrupted; a run resumes from its last epoch: bnnrepro train resume=<run dir>",
              file=sys.stderr)
        return 130
