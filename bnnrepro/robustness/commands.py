"""``bnnrepro robustness``: test-time weight distortion sweeps of trained runs (Merolla et al. 2016).

  bnnrepro robustness --noise additive <run dir | checkpoint | sweep dir | runs.txt> ... [--out DIR]
  bnnrepro robustness --noise additive,multiplicative,binarize,power runs/multirun/<stamp>
  bnnrepro robustness --noise power --levels 1,0.5,0.25,0 --draws 1 <run dir>
  bnnrepro robustness --noise bitflip --weights effective --engine packed <W1A1 run dir>
  bnnrepro robustness --claims results/merolla/mnist results/merolla/mnist/bn_recalibrated

The grammar (flags, ``key=value`` overrides, the default output folder) is
:func:`bnnrepro.commandline.robustness_parser`'s.
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from ..errors import USER_ERRORS, UsageError
from .distortions import BINARY_SCALE_STATS, DISTORTIONS, SCALE_STATS, DistortionOptions, get_distortion
from .effective_bits import SIGNALS
from .weights import WEIGHT_MODES


def build_parser():
    from .. import commandline

    return commandline.robustness_parser(DISTORTIONS, WEIGHT_MODES, SCALE_STATS, BINARY_SCALE_STATS, SIGNALS)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--levels {text!r} must be numbers, e.g. --levels 0,0.5,1") from None


def _device(name: str) -> str:
    import torch

    if name not in ("cpu", "cuda", "auto"):
        raise UsageError(f"device={name!r} is unknown; allowed: cpu, cuda, auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but no CUDA device is available here; allowed: cpu, auto")
    return name


def _check_writable(out: Path) -> None:
    """``--out`` can be made and written (checked on its nearest existing folder: nothing is created
    before the sweep, so a refusal later leaves no empty folders behind)."""
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "not a folder" if not existing.is_dir() else "permission denied"
        raise PermissionError(f"--out {out} is not writable ({existing}: {why}); choose another folder")


def parse(argv: list[str]):
    """Arguments -> (args, run paths, SweepOptions); every bad value fails here, before any load."""
    from .. import commandline
    from ..runs import discover
    from .sweep import SweepOptions

    args = commandline.parse(build_parser(), argv, lists={"--noise": DISTORTIONS, "--levels": None})
    args.out_given = args.out is not None
    args.out = str(commandline.report_dir("robustness", args.out, args.overrides))
    if args.claims:
        if args.noise or not args.targets:
            raise UsageError("--claims reads finished sweeps: bnnrepro robustness --claims DIR... (no --noise)")
        args.claims = args.targets
        return args, [], None
    noises = list(dict.fromkeys(n for n in (args.noise or "").split(",") if n))
    if not noises:
        raise UsageError(f"--noise is required: one or more of {', '.join(DISTORTIONS)}")
    for noise in noises:
        if noise not in DISTORTIONS and Path(noise).exists():
            raise UsageError(f"--noise {noise!r} is unknown; allowed: {', '.join(DISTORTIONS)} "
                             f"(is it a run? runs are positional arguments)")
        get_distortion(noise)
    for target in args.targets:  # `--noise additive multiplicatve RUN`: the typo ended the noise list
        near = difflib.get_close_matches(target, list(DISTORTIONS), n=1, cutoff=0.75)
        if near and not Path(target).exists():
            raise UsageError(f"{target!r} is neither a run nor a noise; did you mean --noise ...,{near[0]}?")
    levels = None
    if args.levels is not None:
        if len(noises) != 1:
            raise UsageError(f"--levels applies to one --noise, got {len(noises)}: {', '.join(noises)}")
        levels = _floats(args.levels)
        get_distortion(noises[0]).check_levels(levels)
    targets = list(args.targets)
    if not targets:
        raise UsageError("no runs given: bnnrepro robustness --noise NOISE <run dir | checkpoint | sweep dir | runs.txt> ...")
    threads = args.overrides.get("train.num_threads")
    if threads is not None and threads < 1:
        raise UsageError(f"train.num_threads={threads} must be a positive integer")
    args.threads = threads
    opts = SweepOptions(levels=levels, draws=args.draws, seed=args.draw_seed, weights=args.weights,
                        distortion=DistortionOptions(args.sigma_scale, args.binary_scale),
                        signal=args.signal, batch_size=args.overrides.get("train.eval_batch_size", 2000),
                        which=args.which, data_root=args.overrides.get("data.root"), progress=not args.quiet,
                        device=_device(args.overrides.get("device", "cpu")), bn_recalibrate=args.bn_recalibrate,
                        engine=args.engine)
    args.noise = noises
    runs = discover(targets, which=args.which)
    _check_writable(Path(args.out))  # now, not after an hour of sweeps
    return args, runs, opts


def main(argv: list[str]) -> int:

    try:
        args, runs, opts = parse(argv)
        if args.claims:
            from .claims import write_claims

            out = args.out if args.out_given else args.claims[0]
            print(write_claims([Path(d) for d in args.claims], Path(out)))
            return 0
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from .outputs import print_summary, write_outputs
        from .sweep import sweep_runs

        print(f"bnnrepro robustness: {', '.join(args.noise)} on {len(runs)} run(s), {opts.weights} weights, "
              f"{opts.draws} draws per random level -> {args.out}", file=sys.stderr)
        rows = sweep_runs(runs, args.noise, opts)
        written = write_outputs(rows, args.noise, Path(args.out), opts, argv, plot=not args.no_figures)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except USER_ERRORS as err:
        message = str(err) if str(err).startswith("robustness:") else f"robustness: {err}"
        print(f"bnnrepro: error: {message}", file=sys.stderr)
        return 2
    print_summary(rows, args.noise)
    print("\nwrote:")
    for path in written:
        print(f"  {path}")
    return 0
