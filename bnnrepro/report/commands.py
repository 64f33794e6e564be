"""``bnnrepro table`` and ``bnnrepro summary``."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from .targets import TargetsError
from ..errors import USER_ERRORS

TABLE_HELP = """\
Paper-vs-reproduced tables, studies and grids from finished runs. A target is a file under
bnnrepro/report/targets/ (the papers bnn, qnn, dorefa, merolla; quant_grid; merolla_study). For each
row it finds the completed runs whose config is the row's preset at scale=, launches the missing seeds
as a Hydra multirun (joblib launcher with --jobs > 1), resumes interrupted runs, writes the record of
every counted run to <out>/runs/<run id>/ (config, metrics, summary; never checkpoints), then builds
<out>/<table>.md, .csv and .tex (and a study's outputs) from those records alone: --no-train rebuilds
them byte for byte. Rows that cannot run here (preset invalid, dataset files missing -- checked
without downloading --, or a GPU needed at this scale and none here) stay in the table and say why.
Runs made on a modified tree are not counted unless --allow-dirty. A second call with nothing new
launches nothing."""


def _fail(message: str) -> int:
    print(f"bnnrepro: error: {message}", file=sys.stderr)
    return 2


def _scales() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bnnrepro.conf").joinpath("scale").iterdir()
                  if p.name.endswith(".yaml"))


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip() != "")
    except ValueError:
        raise ValueError(f"seed={text!r} must be comma-separated integers, e.g. seed=0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seed={text!r} must list distinct non-negative integers, e.g. seed=0,1,2")
    return seeds


def table_parser():
    from .. import commandline
    from . import targets

    return commandline.table_parser(TABLE_HELP, targets.names())


def table_main(argv: list[str], **hooks) -> int:
    """``hooks`` (tests): runner, composer, check_data, has_cuda for :func:`pipeline.make_tables`."""
    from .. import commandline
    from . import pipeline, targets

    try:
        args = commandline.parse(table_parser(), argv, raw=("seed",))
    except USER_ERRORS as err:
        return _fail(str(err))
    scale = args.overrides.get("scale", "quick")
    threads = args.overrides.get("train.num_threads", 1)
    known = targets.names()
    papers = known if args.papers == ["all"] else list(dict.fromkeys(args.papers))
    unknown = [p for p in papers if p not in known]
    if unknown:
        return _fail(f"unknown target {unknown[0]!r}; allowed: {', '.join(known)}, all")
    if scale not in _scales():
        return _fail(f"scale={scale!r} is unknown; allowed: {', '.join(_scales())}")
    if args.jobs < 1 or threads is None or threads < 1:
        return _fail("--jobs and train.num_threads must be positive integers")
    try:
        seeds = _seeds(args.overrides["seed"]) if "seed" in args.overrides else None
        loaded = [targets.load(p) for p in papers]
    except (ValueError, TargetsError) as err:
        return _fail(str(err))
    runs_dir = commandline.runs_root(args.overrides)
    out_dir = commandline.report_dir("table", args.out, args.overrides)
    # per paper, so a table reads the same whether `table all` or `table <paper>` wrote it
    if args.dry_run:
        from .dryrun import dry_run_lines

        hooks.pop("runner", None)
        print("\n".join(dry_run_lines(loaded, runs_dir=runs_dir, out_dir=out_dir, scale=scale, seeds=seeds, jobs=args.jobs,
                                      threads=threads, allow_dirty=args.allow_dirty, **hooks)))
        return 0
    command = f"bnnrepro table {{target}} scale={scale} seed={{seeds}}" + (" --allow-dirty" if args.allow_dirty else "")
    try:
        outcome = pipeline.make_tables(loaded, runs_dir=runs_dir, out_dir=out_dir, scale=scale,
                                       seeds=seeds, train=not args.no_train, jobs=args.jobs, threads=threads,
                                       command=command, figures=not args.no_figures,
                                       allow_dirty=args.allow_dirty, compact=args.compact, **hooks)
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


def _from_preset(overrides: list[str]):
    from ..config import effective_width_mult, validate
    from ..data import DATASETS
    from ..compose import hydra_composer
    from ..train.factory import build_model

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
    from .. import runs
    from ..train import load_trained

    model, cfg, shape = load_trained(path, which=which)
    title = (f"{cfg.get('experiment') or cfg.get('paper') or cfg.model.name}: {cfg.model.name} on "
             f"{cfg.data.name}, scale={cfg.scale.name}, seed {cfg.seed} ({runs.resolve_checkpoint(path, which)})")
    return model, cfg, shape, title


def summary_main(argv: list[str]) -> int:
    from .. import commandline
    from ..compose import check_overrides
    from . import summary

    parser = commandline.summary_parser(SUMMARY_HELP)
    words, overrides = commandline.split_overrides(list(argv))
    try:
        args = parser.parse_intermixed_args(words)
        if args.target is not None and overrides:
            return _fail(f"summary: a run takes no overrides ({' '.join(overrides)}); "
                         "give a run or a preset's overrides, not both")
        if args.target is not None:
            if not Path(args.target).exists():
                return _fail(f"{args.target!r} is neither a run directory or checkpoint nor an override (key=value)")
            model, cfg, shape, title = _from_run(args.target, args.which)
        elif overrides:
            check_overrides(overrides)
            model, cfg, shape, title = _from_preset(overrides)
        else:
            return _fail("summary: give a run directory or checkpoint, or a preset's overrides "
                         "(+paper=bnn scale=quick) (see bnnrepro summary --help)")
        result = summary.profile(model, shape, title)
        if not args.no_pack:
            result.packed_bytes, result.packed_note = summary.packed_size(model, shape, cfg.data.preprocessing)
    except USER_ERRORS as err:
        return _fail(str(err))
    except Exception as err:  # Hydra composition errors have no common base class
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            return _fail(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}")
        raise
    if args.json:
        commandline.write_json(summary.to_json(result), args.json)
    else:
        print(summary.format_text(result))
    return 0
