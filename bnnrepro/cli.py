"""``bnnrepro <command> ...``: train is a Hydra app; every command follows the one grammar of
:mod:`bnnrepro.commandline` (positional targets, ``--flag value``, ``key=value`` config overrides).

  bnnrepro train [+paper=bnn] [scale=quick] [key=value ...] [-m ...]   train (Hydra overrides, multirun)
  bnnrepro train resume=<run dir>                                     continue an interrupted run
  bnnrepro eval <run dir|checkpoint> [--engine packed] [--split val] [data.root=...]
  bnnrepro pack | compare | bench | robustness | table | summary ...  see bnnrepro <command> --help
  bnnrepro completion bash|zsh                                        shell completion script
"""
from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from .errors import USER_ERRORS

COMMANDS = {
    "train": "train a model (Hydra overrides; -m for multirun; resume=<run dir> to continue)",
    "eval": "evaluate a run directory or checkpoint: bnnrepro eval <run|ckpt> [--engine packed] [--split val]",
    "pack": "write a bit-packed artifact of a trained BNN or DoReFa net: bnnrepro pack <run|ckpt> [--out model.bnn]",
    "compare": "run torch and the packed engine layer by layer, name the first layer that differs",
    "bench": "benchmark packed binary kernels against torch fp32, bf16 and int8 (--quick, --json FILE, --out DIR)",
    "robustness": "test-time weight distortion sweeps: bnnrepro robustness --noise additive <run> ...",
    "table": "paper-vs-reproduced tables from finished runs: bnnrepro table <paper> [scale=quick]",
    "summary": "bit-aware model summary: bnnrepro summary <run> | bnnrepro summary +paper=bnn",
    "runs": "list runs (status, test error, wall time): bnnrepro runs [PATH...] [--group-by experiment,scale]",
    "plot": "mean-and-band curves of groups of runs: bnnrepro plot PATH... [--metric test_error] [--out FILE]",
    "completion": "print a shell completion script: bnnrepro completion bash|zsh",
}


def _usage() -> str:
    lines = ["usage: bnnrepro <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "examples:", "  bnnrepro train +paper=bnn scale=quick",
              "  bnnrepro train -m +paper=bnn scale=smoke seed=0,1,2",
              "  bnnrepro train resume=runs/<run dir>", "  bnnrepro eval runs/<run dir>",
              "", "configs: conf/ (groups data, model, optim, scale, logger; presets +paper=, +experiment=)",
              "grammar: positional targets, --flag value, key=value config overrides; "
              "bnnrepro <command> --help"]
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
    from . import commandline
    from .compose import check_overrides
    from .errors import UsageError

    if any(a in ("-h", "--help") for a in argv):
        print(commandline.train_help())
        return 0
    if "--hydra-help" in argv:
        return _hydra_main(_train_task, ["--help" if a == "--hydra-help" else a for a in argv], "bnnrepro train")
    if any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in argv):
        raise UsageError("train: Hydra's completion cannot complete `bnnrepro train`; "
                         "use: eval \"$(bnnrepro completion bash)\" (or zsh)")
    overrides = commandline.train_overrides(argv)
    check_overrides(overrides)  # an unknown key fails here, with the nearest valid key
    if _is_cfg_job(argv):
        from .compose import compose
        from .config import validate

        cfg = compose(overrides)
        validate(cfg)
        print(commandline.show_job_config(cfg), end="")
        return 0
    return _hydra_main(_train_task, argv, "bnnrepro train")


def _is_cfg_job(argv: list[str]) -> bool:
    """``--cfg job`` alone (with ``--package``, ``--resolve`` or ``-m`` it is Hydra's to print)."""
    flags = {a for a in argv if a.startswith("-")}
    pairs = list(zip(argv, argv[1:]))
    return any(f in ("--cfg", "-c") and v == "job" for f, v in pairs) and \
        not flags & {"-m", "--multirun", "--package", "-p", "--resolve"}


def cmd_completion(argv: list[str]) -> int:
    from .commandline import completion_main

    return completion_main(argv, [c for c in COMMANDS if c != "completion"])


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
    "runs": _lazy("bnnrepro.report.browse:runs_main"),
    "plot": _lazy("bnnrepro.report.browse:plot_main"),
    "completion": cmd_completion,
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
        import difflib

        near = difflib.get_close_matches(command, list(HANDLERS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        print(f"bnnrepro: error: unknown command {command!r}; {hint}allowed: {', '.join(HANDLERS)} "
              f"(see bnnrepro --help)", file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest) or 0
    except USER_ERRORS as err:
        print(f"bnnrepro: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help (0), Hydra's own exits
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        raise
    except KeyboardInterrupt:
        print("\ninterrupted; a run resumes from its last epoch: bnnrepro train resume=<run dir>",
              file=sys.stderr)
        return 130
