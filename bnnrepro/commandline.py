"""bnnrepro's one command-line grammar, shared by ``cli`` and the ``*commands`` modules.

Every subcommand's arguments are of three kinds:

- **targets**, positional: run directories, checkpoints, ``runs.txt`` lists, sweep folders, paper names;
- **flags** ``--name value`` (or ``--name=value``), one spelling in every command: ``--out``, ``--which``,
  ``--split``, ``--engine``, ``--json``, ``--jobs``, ``--threads`` (bench), ``--quiet``, ``--no-figures``...;
- **config overrides** ``key=value``, keys of the config schema (``bnnrepro/config.py``) checked by
  :mod:`bnnrepro.compose` (an unknown key fails with the nearest valid one): ``data.root=``, ``runs_dir=``,
  ``device=``, ``train.num_threads=``, ``train.eval_batch_size=``, ``scale=``, ``seed=``. ``train`` and
  ``summary`` take every key (Hydra composes them); the other commands take the few that apply to a
  trained run, listed in their ``--help``.

Flags of the first build that spelled a config value (``--data-root``, ``--runs-dir``, ``--device``,
...) are gone; using one fails with the new spelling (:data:`RENAMED`). Bad usage raises
:class:`UsageError` (exit 2, one line); ``--help`` exits 0.

Reports (bench, robustness, table) go to ``--out DIR``, by default ``<runs root>/reports/<command>``
-- never into the tracked ``results/`` unless ``--out results`` is given.

Layering: this module sits above ``train`` and ``compose`` (which it imports, lazily) and below the
command modules that use it (``evaluate``, ``kernels.commands``, ``robustness.commands``,
``report.commands``) and ``cli``; it imports none of them.

Shell completion: ``bnnrepro completion bash|zsh`` prints a script; the script asks
``bnnrepro completion --query`` for candidates (subcommands, flags, and for ``train`` the config
groups, their options and the schema's keys).
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
from pathlib import Path
from typing import Iterable

from .errors import UsageError

# flags of the first build that spelled a config value or had a second spelling -> the one spelling
RENAMED = {
    "--data-root": "data.root=DIR", "--runs-dir": "runs_dir=DIR", "--device": "device=cpu|cuda|auto",
    "--batch-size": "train.eval_batch_size=N", "--scale": "scale=NAME", "--seeds": "seed=0,1,2",
    "--out-dir": "--out DIR", "--output": "--out FILE", "-o": "--out FILE", "--no-plot": "--no-figures",
    "--runs": "the runs as positional arguments: bnnrepro robustness --noise NOISE RUN...",
    "--seed": "--draw-seed N (the distortion draws; seed= is the training seed)",
    "--threads": "train.num_threads=N",
}

RUN_HELP = "run directory, checkpoint (.pt)"


def runs_root(overrides: dict | None = None) -> Path:
    """The runs root: ``runs_dir=`` override, else env ``BNNREPRO_RUNS``, else ``runs``."""
    from . import runs

    return runs.runs_root((overrides or {}).get("runs_dir"))


def report_dir(command: str, out: str | None, overrides: dict | None = None) -> Path:
    """Where a report-writing command writes: ``--out``, else ``<runs root>/reports/<command>``."""
    return Path(out).expanduser() if out else runs_root(overrides) / "reports" / command


class Parser(argparse.ArgumentParser):
    """argparse with bnnrepro's error style: a :class:`UsageError` naming the command and its --help."""

    def __init__(self, command: str, description: str, overrides: Iterable[str] = (), epilog: str | None = None):
        self.command = command
        self.override_keys = list(overrides)
        if self.override_keys:
            listed = " ".join(f"{k}=..." for k in self.override_keys)
            epilog = (epilog + "\n\n" if epilog else "") + f"config overrides (key=value): {listed}"
        super().__init__(prog=f"bnnrepro {command}", description=description, epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message):
        raise UsageError(f"{self.command}: {message} (see {self.prog} --help)")

    def format_usage(self) -> str:
        usage = super().format_usage()
        if not self.override_keys or "[key=value ...]" in usage:
            return usage
        return usage.rstrip("\n") + " [key=value ...]\n"

    def format_help(self) -> str:
        text = super().format_help()
        if not self.override_keys or "[key=value ...]" in text.split("\n\n", 1)[0]:
            return text
        head, sep, tail = text.partition("\n\n")
        return head + " [key=value ...]" + sep + tail

    def flags(self) -> list[str]:
        return sorted(s for a in self._actions for s in a.option_strings if s.startswith("--"))


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``-n 0`` is refused, never read as "all")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def sample_shape(text: str) -> tuple[int, ...]:
    """An argparse type: ``C,H,W`` (or ``N`` for a flat input), positive integers."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive integers, e.g. 1,28,28") from None
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 to 3 positive integers, e.g. 1,28,28")
    return shape


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _join_lists(argv: list[str], lists: dict[str, Iterable[str] | None]) -> list[str]:
    """``--noise a b RUN`` -> ``--noise=a,b RUN``: a list flag takes the following words while they
    are its known values (``None``: numbers), so a target after it stays a target."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        name, eq, first = token.partition("=")
        if name not in lists:
            out.append(token)
            i += 1
            continue
        known = None if lists[name] is None else set(lists[name])
        ok = (lambda w: _is_number(w)) if known is None else (lambda w: w in known)
        values = [first] if eq else ([argv[i + 1]] if i + 1 < len(argv) else [])
        i += 1 if eq else 1 + len(values)
        while i < len(argv) and argv[i] and all(ok(part) for part in argv[i].split(",") if part):
            values.append(argv[i])
            i += 1
        out.append(f"{name}={','.join(values)}" if values else name)
    return out


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(arguments, ``key=value`` overrides); a word that names an existing path stays an argument."""
    from .compose import is_override

    args, overrides, rest = [], [], False
    for token in argv:
        if token == "--":
            rest = True
        elif not rest and is_override(token) and not Path(token).exists():
            overrides.append(token)
        else:
            args.append(token)
    return args, overrides


def parse(parser: Parser, argv: list[str], *, lists: dict[str, Iterable[str] | None] | None = None,
          raw: Iterable[str] = ()) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``: ``args.overrides`` is ``{key: typed value}`` of the
    ``key=value`` words (keys the parser accepts, values type-checked against the schema; keys in
    ``raw`` keep their text). Raises UsageError / ConfigError; ``--help`` raises SystemExit(0)."""
    from .compose import parse_override, typed_values
    from .errors import ConfigError

    words, overrides = split_overrides(list(argv))
    known = {s for a in parser._actions for s in a.option_strings}
    for word in words:
        flag = word.split("=", 1)[0]
        if word.startswith("-") and flag not in known and flag in RENAMED:
            raise UsageError(f"{parser.command}: {flag} is gone; write {RENAMED[flag]} (see {parser.prog} --help)")
    for text in overrides:
        key = parse_override(text).key
        if key not in parser.override_keys and f"--{key.replace('_', '-')}" in known:
            raise UsageError(f"{parser.command}: {key}= is not a config key; write --{key.replace('_', '-')} "
                             f"{text.split('=', 1)[1]} (see {parser.prog} --help)")
        if key == "run":
            raise UsageError(f"{parser.command}: runs are positional; write {text.split('=', 1)[1]}, not {text}")
    args = parser.parse_intermixed_args(_join_lists(words, lists or {}))
    try:
        args.overrides = typed_values(overrides, parser.override_keys, raw=raw)
    except ConfigError as err:
        raise ConfigError(f"{parser.command}: {err}") from None
    args.override_texts = overrides
    return args


# ------------------------------------------------------------------------------------ the commands

def eval_parser() -> Parser:
    p = Parser("eval", "The error of a trained model on a split, with torch or the bit-packed engine.",
               overrides=("data.root", "train.eval_batch_size"),
               epilog="example: bnnrepro eval runs/<run dir> --split val --engine packed data.root=/data")
    p.add_argument("target", metavar="RUN", help=RUN_HELP)
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="default test")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--engine", choices=("torch", "packed"), default="torch", help="default torch")
    return p


def pack_parser() -> Parser:
    p = Parser("pack", "Write a bit-packed artifact (.bnn: npz of arrays + JSON header, no code) of a "
               "trained BNN or multi-bit DoReFa net and report its size.")
    p.add_argument("target", metavar="RUN", help=RUN_HELP)
    p.add_argument("--out", metavar="FILE", help="output file (default: <run>/model.bnn or <checkpoint>.bnn)")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--input-shape", metavar="C,H,W", type=sample_shape,
                   help="one sample's shape (default: from the checkpoint)")
    return p


def compare_parser() -> Parser:
    p = Parser("compare", "Run the float model and the packed engine side by side, layer by layer; "
               "name the first layer that differs.", overrides=("data.root",))
    p.add_argument("target", metavar="RUN", help=RUN_HELP)
    p.add_argument("--artifact", metavar="FILE", help="a .bnn file to compare instead of packing the checkpoint now")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="default test")
    p.add_argument("-n", type=positive_int, default=None, metavar="N", help="first N images of the split (default: all)")
    p.add_argument("--random", type=positive_int, default=None, metavar="N", help="use N random uint8 images instead")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON (- : stdout)")
    return p


def bench_parser(description: str = "Benchmark the packed binary kernels against torch fp32, bf16 and int8.") -> Parser:
    p = Parser("bench", description, overrides=("runs_dir",))
    p.add_argument("--quick", action="store_true", help="fewer shapes, smaller batches, fewer repeats")
    p.add_argument("--repeats", type=positive_int, help="repeats per case (default 20 layers / 10 models; quick 5/3)")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON to this file (- : stdout)")
    p.add_argument("--out", metavar="DIR", help="where kernels.md and kernels.csv go "
                   "(default <runs root>/reports/bench; `--out results` for the committed tables)")
    p.add_argument("--no-write", action="store_true", help="do not write kernels.md/csv")
    p.add_argument("--no-compile", action="store_true", help="skip the fresh-process compile-time measurement")
    p.add_argument("--threads", type=positive_int, help="threads for both numba and torch (default: all cores)")
    p.add_argument("--variants", action="store_true",
                   help="also time the largest FC case with the kernels compiled for other CPU targets (AVX2, "
                        "SSE4.2, SSE2), one fresh process each, beside the variant this CPU takes")
    p.add_argument("--pareto", action="store_true",
                   help="accuracy x packed latency x size of each row of the MNIST quant grid "
                        "-> pareto_mnist.md/csv/json + figures/pareto_mnist.png (see bnnrepro.kernels.pareto)")
    p.add_argument("--grid", metavar="CSV", default="results/quant_grid_mnist.csv",
                   help="--pareto: the quant-grid table its errors come from (default results/quant_grid_mnist.csv)")
    p.add_argument("--train", action="store_true",
                   help="time a training step of each protocol against a float net of its shape "
                        "-> train_speed.md (see bnnrepro.train.speed)")
    p.add_argument("--protocols", metavar="IDS", help="--train: a comma list of protocols "
                   "(quick-mlp, torch7-mlp, theano-mlp, convnet-quick; default all)")
    return p


ROBUSTNESS_USAGE = """\
Test-time weight distortion sweeps of trained runs (Merolla et al. 2016).

  bnnrepro robustness --noise additive RUN...                 RUN: run dir, checkpoint, sweep dir, runs.txt
  bnnrepro robustness --noise additive,multiplicative runs/multirun/<stamp>
  bnnrepro robustness --noise power --levels 1,0.5,0.25,0 --draws 1 RUN
  bnnrepro robustness --noise bitflip --weights effective --engine packed RUN   bit errors in the packed net
  bnnrepro robustness --claims results/merolla/mnist results/merolla/mnist/bn_recalibrated

--noise and --levels take a comma list or several words (--noise additive multiplicative RUN):
the list ends at the first word that is not a noise name (a number, for --levels)."""


def robustness_parser(noises: Iterable[str] = (), weights: Iterable[str] = (), scale_stats: Iterable[str] = (),
                      binary_stats: Iterable[str] = (), signals: Iterable[str] = ()) -> Parser:
    def one_of(names, default):
        names = ", ".join(names)
        return f"{names} (default {default})" if names else f"default {default}"

    p = Parser("robustness", ROBUSTNESS_USAGE,
               overrides=("data.root", "device", "train.eval_batch_size", "train.num_threads", "runs_dir"))
    p.add_argument("targets", nargs="*", metavar="RUN",
                   help="run directories, checkpoints, sweep directories (runs.txt) or folders of runs; "
                        "with --claims: folders of finished sweeps")
    p.add_argument("--noise", default=None, metavar="NOISE[,NOISE]", help=f"one or more of: {', '.join(noises)}")
    p.add_argument("--levels", default=None, metavar="L[,L]",
                   help="distortion levels (default: the noise's own); needs exactly one noise")
    p.add_argument("--draws", type=int, default=5, help="independent draws per random level (default 5)")
    p.add_argument("--out", metavar="DIR", help="output folder (default <runs root>/reports/robustness; "
                   "with --claims the first folder)")
    p.add_argument("--draw-seed", type=int, default=0, help="seed of the distortion draws (default 0)")
    p.add_argument("--weights", default="hidden", help="which weights are distorted: " + one_of(weights, "hidden"))
    p.add_argument("--sigma-scale", default="std",
                   help="additive sigma is relative to this layer statistic: " + one_of(scale_stats, "std"))
    p.add_argument("--binary-scale", default="rms",
                   help="the layer statistic binarize/power keep: " + one_of(binary_stats, "rms"))
    p.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics of every distorted net on the first N training "
                        "images (default 0: keep the trained statistics)")
    p.add_argument("--signal", default="variance", help="effective bits' signal power: " + one_of(signals, "variance"))
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--engine", choices=("torch", "packed"), default="torch",
                   help="torch (default) or packed: flip the bits of the net packed for the .bnn engine "
                        "(--noise bitflip --weights effective; W1A1 nets)")
    p.add_argument("--no-figures", action="store_true", help="write no PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--claims", action="store_true",
                   help="write claims.md from the robustness_<noise>_draws.csv files in the folders given (no sweep)")
    return p


def table_parser(description: str = "Paper-vs-reproduced tables from finished runs.", papers: Iterable[str] = ()) -> Parser:
    p = Parser("table", description, overrides=("scale", "seed", "runs_dir", "train.num_threads"),
               epilog="scale= (default quick) is the runs' scale preset, seed= (default: each table's own, else 0,1,2) the seeds per row, "
                      "runs_dir= where runs are found and made (default env BNNREPRO_RUNS, else runs), "
                      "train.num_threads= torch threads per training job (default 1).")
    p.add_argument("papers", nargs="+", metavar="TARGET", help=f"{', '.join(papers) or 'a paper'} or all "
                   "(the targets under bnnrepro/report/targets/: the papers, quant_grid, merolla_study)")
    p.add_argument("--out", metavar="DIR", help="output folder (default <runs root>/reports/table; "
                   "`--out results` for the committed tables)")
    p.add_argument("--no-train", action="store_true", help="only rebuild the tables from existing runs")
    p.add_argument("--jobs", type=int, default=1, help="parallel training jobs (joblib launcher when > 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the curve PNGs")
    p.add_argument("--allow-dirty", action="store_true",
                   help="count runs made on a modified tree (marked +dirty); by default they are not counted")
    p.add_argument("--compact", action="store_true", help="also write <table>_compact.md and .tex: the "
                   "reproduced rows only, paper number vs mean +- std and n, scale and seeds in the caption")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs it would make or resume, with estimated durations; train nothing, write nothing")
    return p


def runs_parser(description: str = "List runs.", statuses: Iterable[str] = ()) -> Parser:
    p = Parser("runs", description, overrides=("runs_dir",),
               epilog="example: bnnrepro runs --group-by experiment,scale results/runs")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="run directories, sweep folders, runs.txt files or folders of runs (default: the runs root)")
    p.add_argument("--group-by", metavar="KEY[,KEY]",
                   help="one line per group of these keys (summary columns or dotted config keys, e.g. "
                        "experiment,scale or quant.w_bits): n, mean ± sample std of test error, seeds")
    p.add_argument("--status", metavar="STATUS[,STATUS]", help=f"only runs of these statuses: {', '.join(statuses)}")
    p.add_argument("--json", metavar="FILE", help="write the rows (or groups) as JSON to FILE (- : stdout)")
    return p


def plot_parser(description: str = "Plot curves of groups of runs.") -> Parser:
    p = Parser("plot", description, overrides=("runs_dir",),
               epilog="example: bnnrepro plot results/runs --group-by experiment --out /tmp/curves.png")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="run directories, sweep folders, runs.txt files or folders of runs")
    p.add_argument("--metric", default="test_error", help="a metrics.jsonl field (default test_error)")
    p.add_argument("--group-by", metavar="KEY[,KEY]",
                   help="one curve per group of these keys (default: every config key that differs, the seed aside)")
    p.add_argument("--out", metavar="FILE", help="the PNG (default <runs root>/reports/plot/<metric>.png)")
    return p


def summary_parser(description: str = "A bit-aware model summary.") -> Parser:
    p = Parser("summary", description,
               epilog="overrides: any config key or group, as for bnnrepro train (e.g. +paper=bnn scale=quick)")
    p.add_argument("target", nargs="?", metavar="RUN", help=RUN_HELP + " (or none: the preset the overrides compose)")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--no-pack", action="store_true", help="skip measuring the packed artifact")
    p.add_argument("--json", metavar="FILE", help="write JSON to FILE instead of the text table (- : stdout)")
    return p


PARSERS = {"eval": eval_parser, "pack": pack_parser, "compare": compare_parser, "bench": bench_parser,
           "robustness": robustness_parser, "table": table_parser, "summary": summary_parser,
           "runs": runs_parser, "plot": plot_parser}


def write_json(text: str, dest: str) -> None:
    """``--json FILE``: write ``text`` to FILE, or to stdout for ``-``."""
    if dest == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        Path(dest).write_text(text if text.endswith("\n") else text + "\n")


# ------------------------------------------------------------------------------------ train

TRAIN_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                          "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc", "--info", "-i")
TRAIN_FLAGS = ("-m", "--multirun", "--cfg", "--package", "--resolve", "--info", "--hydra-help", "--help")


def train_overrides(argv: list[str]) -> list[str]:
    """The overrides of a ``bnnrepro train`` command line (Hydra's flags and their values left out)."""
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in TRAIN_FLAGS_WITH_VALUE and word not in ("--info", "-i") or \
                (word in ("--info", "-i") and i + 1 < len(argv) and "=" not in argv[i + 1])
        else:
            out.append(word)
    return out


def train_help() -> str:
    from .compose import config_groups

    groups = config_groups()
    lines = ["usage: bnnrepro train [-m] [--cfg job] [override ...]", "",
             "Train a model. Overrides are Hydra's: key=value sets a config value, group=option picks a",
             "config group's option, +group=option adds a preset. Every key is checked against the schema",
             "(bnnrepro/config.py) before anything runs; an unknown one fails with the nearest valid key.", "",
             "flags:",
             "  -m, --multirun   sweep: comma lists run one job each (seed=0,1,2)",
             "  --cfg job        validate and print the effective config after the scale preset; run nothing",
             "  --cfg hydra      print Hydra's config (with --package hydra.launcher: a launcher preset)",
             "  --hydra-help     Hydra's own --help", "",
             "config groups (group=option; paper and experiment with +):"]
    lines += [f"  {group:<15} {', '.join(opts)}" for group, opts in groups.items()]
    lines += ["", "examples:", "  bnnrepro train +paper=bnn scale=quick",
              "  bnnrepro train +paper=dorefa quant.w_bits=1 quant.a_bits=2 quant.g_bits=6",
              "  bnnrepro train -m +paper=bnn scale=smoke seed=0,1,2",
              "  bnnrepro train resume=runs/<run dir>          continue an interrupted run",
              "  bnnrepro train +paper=bnn scale=smoke --cfg job"]
    return "\n".join(lines)


def show_job_config(cfg) -> str:
    """``bnnrepro train --cfg job``: the config as it will run, after the scale preset, labelled."""
    from omegaconf import OmegaConf

    from .models.common import scaled
    from .config import (effective_dropout_hidden, effective_epochs, effective_train_subset, effective_width_mult,
                         schedule_epochs)

    shown = OmegaConf.to_container(cfg, resolve=True)
    mult = effective_width_mult(cfg)
    changes = []

    def put(dotted: str, value) -> None:
        node = shown
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        if node[last] != value:
            changes.append(f"{dotted}: {node[last]} -> {value}")
            node[last] = value

    put("train.epochs", effective_epochs(cfg))
    for key in ("hidden", "channels", "fc"):
        put(f"model.{key}", [scaled(int(w), mult) for w in cfg.model[key]])
    put("model.width_mult", 1.0)  # the widths above are already multiplied
    put("model.dropout_hidden", effective_dropout_hidden(cfg))
    put("data.train_subset", effective_train_subset(cfg))
    head = [f"# bnnrepro train --cfg job: validated; the effective values after scale={cfg.scale.name} "
            f"({cfg.scale.description}); nothing is run.",
            f"# {effective_epochs(cfg)} epochs run; the LR schedule is laid over {schedule_epochs(cfg)} "
            f"(scale.schedule={cfg.scale.schedule}); width x{mult:g} is applied to model.hidden/channels/fc "
            "(so model.width_mult shows 1.0)."]
    head += ["# changed by the scale preset: " + ("; ".join(changes) if changes else "nothing")]
    head += ["# (the run's config.yaml records the preset's values and the scale; summary.json the effective ones)"]
    return "\n".join(head) + "\n" + OmegaConf.to_yaml(OmegaConf.create(shown))


# ------------------------------------------------------------------------------------ completion

BASH = r'''# bnnrepro bash completion. Load it with:  eval "$(bnnrepro completion bash)"
# (or save it as ~/.local/share/bash-completion/completions/bnnrepro)
_bnnrepro() {
    local IFS=$'\n'
    COMPREPLY=( $("${COMP_WORDS[0]}" completion --query "$COMP_WORDBREAKS" -- "${COMP_LINE:0:COMP_POINT}" 2>/dev/null) )
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}
complete -o default -F _bnnrepro bnnrepro
'''

ZSH = r'''#compdef bnnrepro
# bnnrepro zsh completion. Load it with (after compinit):  source <(bnnrepro completion zsh)
# (or save it as _bnnrepro in a folder of $fpath)
_bnnrepro() {
    local -a reply eq plain
    reply=( "${(@f)$("${words[1]}" completion --words -- "${(@)words[1,CURRENT]}" 2>/dev/null)}" )
    reply=( ${reply:#} )
    if (( ${#reply} )); then
        eq=( ${(M)reply:#*=} )
        plain=( ${reply:#*=} )
        (( ${#eq} )) && compadd -Q -S '' -- "${eq[@]}"
        (( ${#plain} )) && compadd -Q -- "${plain[@]}"
    else
        _files
    fi
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _bnnrepro "$@"
else
    compdef _bnnrepro bnnrepro
fi
'''


def _defaults_groups() -> set[str]:
    """Groups in conf/config.yaml's defaults list: set as group=option (the others need +group=)."""
    from importlib import resources

    import yaml

    text = resources.files("bnnrepro.conf").joinpath("config.yaml").read_text()
    out = set()
    for item in yaml.safe_load(text).get("defaults", []):
        if isinstance(item, dict):
            out.update(k for k in item if not k.startswith("override"))
    return out


def _train_candidates(word: str) -> list[str]:
    from .compose import config_groups, schema_keys
    from .config import CHOICES

    prefix = next((p for p in ("++", "+", "~") if word.startswith(p)), "")
    body = word[len(prefix):]
    groups = config_groups()
    if "=" in body:
        key, _, _ = body.partition("=")
        if key in groups:
            values = groups[key]
        elif key in CHOICES:
            values = list(CHOICES[key])
        elif key in schema_keys() and key.rsplit(".", 1)[-1] in ("progress", "deterministic", "bias", "use_extra",
                                                                  "clip_latent", "channels_last", "compile"):
            values = ["true", "false"]
        else:
            values = []
        return [f"{prefix}{key}={v}" for v in values]
    defaults = _defaults_groups()
    out = [f"{'' if g in defaults or g.startswith('hydra/') else '+'}{g}=" for g in groups]
    # paper/experiment are labels the presets set: +paper= picks the preset
    out += [f"{k}=" for k, status in schema_keys().items() if status == "leaf" and k not in groups]
    if prefix:
        out = [o if o.startswith("+") else "+" + o for o in out]
    if word.startswith("-"):
        out = list(TRAIN_FLAGS)
    return out


def candidates(words: list[str], commands: Iterable[str]) -> list[str]:
    """Completions of the last word of ``words`` (the command line up to the cursor, program first)."""
    words = list(words[1:]) or [""]
    word = words[-1]
    if len(words) == 1:
        pool = list(commands) + ["completion", "--help", "--version"]
    else:
        command = words[0]
        if command == "train":
            pool = _train_candidates(word)
        elif command == "completion":
            pool = ["bash", "zsh"] if len(words) == 2 else []
        elif command in PARSERS and word.startswith("-"):
            pool = PARSERS[command]().flags() + ["--help"]
        elif command in PARSERS and not glob.glob(glob.escape(word) + "*"):
            pool = [f"{k}=" for k in PARSERS[command]().override_keys]
        else:
            pool = []
    return sorted(dict.fromkeys(c for c in pool if c.startswith(word)))


def _split_line(line: str) -> list[str]:
    try:
        words = shlex.split(line)
    except ValueError:  # an unterminated quote while typing
        words = line.split()
    if not line or line[-1].isspace():
        words.append("")
    return words


def completion_main(argv: list[str], commands: Iterable[str]) -> int:
    """``bnnrepro completion bash|zsh`` prints the script; ``--query WORDBREAKS -- LINE`` (bash)
    and ``--words -- WORD...`` (zsh) print one candidate a line."""
    if argv[:1] == ["--query"] and len(argv) >= 3 and argv[2] == "--":
        breaks, words = set(argv[1]) - set(" \t\n"), _split_line(" ".join(argv[3:]))
        token = words[-1]
        # readline completes only the text after the last COMP_WORDBREAKS character (`=`, `:`):
        # a candidate replaces that text, so it is cut there too
        cut = max((i + 1 for i, ch in enumerate(token) if ch in breaks), default=0)
        print("\n".join(c[cut:] for c in candidates(words, commands)))
        return 0
    if argv[:1] == ["--words"]:
        rest = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        print("\n".join(candidates(rest, commands)))
        return 0
    if len(argv) == 1 and argv[0] in ("bash", "zsh"):
        print(BASH if argv[0] == "bash" else ZSH, end="")
        return 0
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: bnnrepro completion bash|zsh\n\nPrint a shell completion script for subcommands, flags and "
              "train's overrides.\n\n  bash:  eval \"$(bnnrepro completion bash)\"\n"
              "  zsh:   autoload -Uz compinit && compinit; source <(bnnrepro completion zsh)")
        return 0
    raise UsageError("completion: usage: bnnrepro completion bash|zsh (see bnnrepro completion --help)")
