"""``bnnrepro table`` and ``bnnrepro summary``."""
from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from .targets import PAPERS, TargetsError
from ..errors import USER_ERRORS

TABLE_HELP = """\
Paper-vs-reproduced tables from finished runs. For each row of the paper's tables (targets in
bnnrepro/report/targets/<paper>.yaml) it finds the completed runs whose config is the row's preset at
--scale, launches the missing seeds as a Hydra multirun (joblib launcher with --jobs > 1), resumes
interrupted runs, then writes <out>/<paper>_<table>.md, .csv and .tex. Rows that cannot run here
(preset missing or invalid, dataset files missing -- checked without downloading --, or a GPU
needed at this scale and none here) stay in the table and say why.
A second call with nothing new launches nothing."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other bad input."""

    def error(self, message):
        print(f"bnnrepro: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _fail(message: str) -> int:
    print(f"bnnrepro: error: {message}", file=sys.stderr)
    return 2


def _scales() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bnnrepro.conf").joinpath("scale").iterdir()
                  if p.name.endswith(".yaml"))


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip() != "")
    except ValueError:
        raise ValueError(f"--seeds={text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={text!r} must list distinct non-negative integers, e.g. 0,1,2")
    return seeds


def table_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="bnnrepro table", description=TABLE_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("papers", nargs="+", metavar="paper", help=f"{', '.join(PAPERS)} or all")
    ap.add_argument("--runs-dir", help="where runs are found and made (default: env BNNREPRO_RUNS, else runs)")
    ap.add_argument("--scale", default="quick", help="scale preset of the runs (default: quick)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds per row (default: 0,1,2)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    ap.add_argument("--no-train", action="store_true", help="only rebuild the tables from existing runs")
    ap.add_argument("--jobs", type=int, default=1, help="parallel training jobs (joblib launcher when > 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training job (default: 1)")
    ap.add_argument("--no-figures", action="store_true", help="skip the curve PNGs")
    return ap


def table_main(argv: list[str], **hooks) -> int:
    """``hooks`` (tests): runner, composer, check_data, has_cuda for :func:`pipeline.make_tables`."""
    args = table_parser().parse_args(argv)
    from . import pipeline, targets

    papers = list(PAPERS) if args.papers == ["all"] else list(dict.fromkeys(args.papers))
    unknown = [p for p in papers if p not in PAPERS]
    if unknown:
        return _fail(f"unknown paper {unknown[0]!r}; allowed: {', '.join(PAPERS)}, all")
    if args.scale not in _scales():
        return _fail(f"--scale={args.scale!r} is unknown; allowed: {', '.join(_scales())}")
    if args.jobs < 1 or args.threads < 1:
        return _fail("--jobs and --threads must be positive integers")
    try:
        seeds = _seeds(args.seeds)
        loaded = [targets.load(p) for p in papers]
    except (ValueError, TargetsError) as err:
        return _fail(str(err))
    runs_dir = Path(args.runs_dir or os.environ.get("BNNREPRO_RUNS") or "runs").expanduser()
    # per paper, so a table reads the same whether `table all` or `table <paper>` wrote it
    command = f"bnnrepro table {{paper}} --scale {args.scale} --seeds {','.join(map(str, seeds))}"
    try:
        outcome = pipeline.make_tables(loaded, runs_dir=runs_dir, out_dir=Path(args.out), scale=args.scale,
                                       seeds=seeds, train=not args.no_train, jobs=args.jobs, threads=args.threads,
                                       command=command, figures=not args.no_figures, **hooks)
    except (OSError, ValueError) as err:
        return _fail(str(err))
    for line in pipeline.report_lines(outcome):
        print(line)
    return 1 if outcome.failed else 0


# ------------------------------------------------------------------------------------ summary

SUMMARY_HELP = """\
A bit-aware model summary: per layer input bits, weight bits, parameters by precision, memory and
MACs by precision; totals, float32-equivalent size, compression ratio, and the measured size of the
packed artifact when the model packs. The model is a preset (Hydra overrides, e.g.
`+paper=bnn scale=quick`: composed and built untrained, no data needed) or a run directory/checkpoint."""


def _is_override(arg: str) -> bool:
    return "=" in arg and not Path(arg).exists()


def _from_preset(overrides: list[str]):
    from ..config import effective_width_mult, validate
    from ..data import DATASETS
    from ..train.factory import build_model
    from .plan import hydra_composer

    cfg = hydra_composer()(overrides)
    validate(cfg)
    spec = DATASETS[cfg.data.name]
    shape = spec.input_shape
    if cfg.data.image_size:
        shape = (shape[0], int(cfg.data.image_size), int(cfg.data.image_size))
    model = build_model(cfg, shape, spec.num_classes)
    title = (f"{cfg.experiment or cfg.paper or cfg.model.name}: {cfg.model.name} on {cfg.data.name}, "
             f"scale={cfg.scale.name} (width x{effective_width_mult(cfg):g}), untrained")
    return model.eval(), cfg, tuple(shape), title


def _from_run(path: str, which: str):
    from ..train import checkpoint

    ckpt = checkpoint.resolve(path, which)
    state = checkpoint.load(ckpt)
    model, cfg = checkpoint.load_model(path, which=which)
    title = (f"{cfg.get('experiment') or cfg.get('paper') or cfg.model.name}: {cfg.model.name} on "
             f"{cfg.data.name}, scale={cfg.scale.name}, seed {cfg.seed} ({ckpt})")
    return model.eval(), cfg, tuple(state["input_shape"]), title


def summary_main(argv: list[str]) -> int:
    ap = _Parser(prog="bnnrepro summary", description=SUMMARY_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="+", help="a run directory or checkpoint, or Hydra overrides of a preset")
    ap.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run directory")
    ap.add_argument("--no-pack", action="store_true", help="skip measuring the packed artifact")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the text table")
    args = ap.parse_args(argv)
    from . import summary

    overrides = [a for a in args.target if _is_override(a)]
    try:
        if overrides and len(overrides) == len(args.target):
            model, cfg, shape, title = _from_preset(overrides)
        elif len(args.target) == 1 and Path(args.target[0]).exists():
            model, cfg, shape, title = _from_run(args.target[0], args.which)
        else:
            bad = next(a for a in args.target if not _is_override(a))
            return _fail(f"{bad!r} is neither a run directory or checkpoint nor a Hydra override (key=value)")
        result = summary.profile(model, shape, title)
        if not args.no_pack:
            result.packed_bytes, result.packed_note = summary.packed_size(model, shape, cfg.data.preprocessing)
    except USER_ERRORS as err:
        return _fail(str(err))
    except Exception as err:  # Hydra composition errors have no common base class
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            return _fail(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}")
        raise
    print(summary.to_json(result) if args.json else summary.format_text(result))
    return 0
