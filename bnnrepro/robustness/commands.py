"""``bnnrepro robustness``: test-time weight distortion sweeps of trained runs (Merolla et al. 2016).

  bnnrepro robustness --noise additive --runs <run dir | checkpoint | sweep dir | runs.txt> ... [--out DIR]
  bnnrepro robustness --noise additive multiplicative binarize power --runs runs/multirun/<stamp>
  bnnrepro robustness --noise power --levels 1 0.5 0.25 0 --draws 1 --runs <run dir>
  bnnrepro robustness --claims results/merolla results/merolla/latent --out results/merolla
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import USER_ERRORS, UsageError
from .distortions import BINARY_SCALE_STATS, DISTORTIONS, SCALE_STATS, DistortionOptions, get_distortion
from .effective_bits import SIGNALS
from .weights import WEIGHT_MODES

DEFAULT_OUT = "results/robustness"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: bnnrepro's error style
        raise UsageError(message)


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or comma-separated numbers") from None


def build_parser() -> argparse.ArgumentParser:
    noises = ", ".join(DISTORTIONS)
    p = _Parser(prog="bnnrepro robustness", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="RUN",
                   help="runs, as --runs (also accepted as run=PATH)")
    p.add_argument("--noise", nargs="+", default=[], metavar="NOISE",
                   help=f"one or more of: {noises}")
    p.add_argument("--runs", nargs="+", default=[], metavar="PATH",
                   help="run directories, checkpoints, sweep directories (runs.txt) or folders of runs")
    p.add_argument("--levels", nargs="+", type=_floats, metavar="L",
                   help="distortion levels (default: the noise's own); needs exactly one --noise")
    p.add_argument("--draws", type=int, default=5, help="independent draws per random level (default 5)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the distortion draws (default 0)")
    p.add_argument("--data-root", default=None, help="data root (default: the run's, else $BNNREPRO_DATA)")
    p.add_argument("--weights", default="effective",
                   help=f"which weights are distorted: {', '.join(WEIGHT_MODES)} (default effective)")
    p.add_argument("--sigma-scale", default="std",
                   help=f"additive sigma is relative to this layer statistic: {', '.join(SCALE_STATS)} "
                        "(default std)")
    p.add_argument("--binary-scale", default="rms",
                   help=f"the layer statistic binarize/power keep: {', '.join(BINARY_SCALE_STATS)} "
                        "(default rms)")
    p.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics of every distorted net on the first N training "
                        "images (default 0: keep the trained statistics)")
    p.add_argument("--signal", default="variance",
                   help=f"effective bits' signal power: {', '.join(SIGNALS)} (default variance)")
    p.add_argument("--which", default="best", help="checkpoint of a run directory: best, last (default best)")
    p.add_argument("--batch-size", type=int, default=2000, help="evaluation batch size (default 2000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--claims", nargs="+", metavar="DIR",
                   help="write claims.md from the robustness_<noise>.csv files in DIRs (no sweep)")
    return p


def _device(name: str) -> str:
    import torch

    if name not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--device {name!r} is unknown; allowed: cpu, cuda, auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available here; allowed: cpu, auto")
    return name


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"--out {out} is not writable ({err.strerror}); choose another folder") from None


def parse(argv: list[str]):
    """Arguments -> (args, run paths, SweepOptions); every bad value fails here, before any load."""
    from ..runs import discover
    from .sweep import SweepOptions

    args = build_parser().parse_args(argv)
    if args.claims:
        if args.noise or args.runs or args.targets:
            raise UsageError("--claims reads finished sweeps; it takes no --noise or runs")
        return args, [], None
    # `--noise additive run=<dir>` (DESIGN.md's form): nargs="+" took the run as a noise
    args.targets += [n for n in args.noise if n.startswith("run=")]
    noises = list(dict.fromkeys(n for n in args.noise if not n.startswith("run=")))
    if not noises:
        raise UsageError(f"--noise is required: one or more of {', '.join(DISTORTIONS)}")
    for noise in noises:
        if noise not in DISTORTIONS and Path(noise).exists():
            raise UsageError(f"--noise {noise!r} is unknown; allowed: {', '.join(DISTORTIONS)} "
                             f"(is it a run? pass runs with --runs)")
        get_distortion(noise)
    levels = None
    if args.levels is not None:
        if len(noises) != 1:
            raise UsageError(f"--levels applies to one --noise, got {len(noises)}: {', '.join(noises)}")
        levels = tuple(x for group in args.levels for x in group)
        get_distortion(noises[0]).check_levels(levels)
    targets = [t[4:] if t.startswith("run=") else t for t in args.targets] + args.runs
    if not targets:
        raise UsageError("no runs given: --runs <run dir | checkpoint | sweep dir | runs.txt> ...")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be a positive integer")
    opts = SweepOptions(levels=levels, draws=args.draws, seed=args.seed, weights=args.weights,
                        distortion=DistortionOptions(args.sigma_scale, args.binary_scale),
                        signal=args.signal, batch_size=args.batch_size, which=args.which,
                        data_root=args.data_root, progress=not args.quiet, device=_device(args.device),
                        bn_recalibrate=args.bn_recalibrate)
    args.noise = noises
    runs = discover(targets, which=args.which)
    _check_writable(Path(args.out))  # now, not after an hour of sweeps
    return args, runs, opts


def main(argv: list[str]) -> int:

    try:
        args, runs, opts = parse(argv)
        if args.claims:
            from .claims import write_claims

            out = args.out if args.out != DEFAULT_OUT else args.claims[0]
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
        written = write_outputs(rows, args.noise, Path(args.out), opts, argv, plot=not args.no_plot)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except USER_ERRORS as err:
        print(f"bnnrepro: error: robustness: {err}", file=sys.stderr)
        return 2
    print_summary(rows, args.noise)
    print("\nwrote:")
    for path in written:
        print(f"  {path}")
    return 0
