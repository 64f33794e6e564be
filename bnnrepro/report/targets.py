"""The papers' tables as data: ``targets/<paper>.yaml`` (package data), one file per paper.

Every number and confidence tag comes from the reference sheet ``docs/papers.md``; a row names the
Hydra overrides (a preset, plus e.g. bit widths) whose runs reproduce it. File format::

    paper: bnn
    title: ...
    tables:
      - id: table1                     # -> results/bnn_table1.{md,csv,tex}
        title: ...
        metric: test_error             # what the paper reports: test_error | accuracy | perplexity
        unit: percent                  # percent | fraction | none
        source: ...                    # where the table's numbers come from (docs/papers.md §)
        columns: [method, dataset]     # the row labels shown, in order
        rows:
          - id: theano-mnist
            labels: {method: BNN (Theano), dataset: MNIST}
            paper: {value: 0.96, tag: SEC, text: "0.96", source: ...}   # text/source optional
            overrides: [+experiment=bnn_mnist_theano]                    # runs that reproduce it
            needs_gpu_at: [paper]      # scales at which a CPU machine does not launch it
            note: ...                  # optional, shown with the row
          - id: theano-mnist-medium    # a row may pin its scale and seeds (the command's are the
            scale: medium              # other rows'): the same paper number at another protocol
            seeds: [0]
          - id: maxout-mnist
            labels: {...}
            paper: {value: 0.94, tag: SEC}
            not_reproduced: another paper's method, cited for comparison

A row has ``overrides`` or ``not_reproduced``, never both. A table that is not one of the paper's
(a CPU analogue of its protocol) says so in its title and gives its rows no ``paper`` number.

A targets file need not be a paper's: ``targets/<name>.yaml`` is the target ``bnnrepro table <name>``
builds (``name:`` at the top, default the paper). A table may also set::

        output: quant_grid_mnist       # the files' stem (default <paper>_<id>)
        seeds: [0, 1]                  # its seeds when the command names none (default 0, 1, 2)
        checks:                        # claims tested on the rows' per-seed results (see checks.py)
          - claim: "A=1 costs"
            worse: [dorefa-w1a1g32, dorefa-w1a2g32]    # the first row's error is the higher
          - claim: "G=2 hurts most"
            worst: dorefa-w1a1g2
            among: [dorefa-w1a2g4, dorefa-w1a2g32]     # worse than each of these
          - claim: "8/8/8 about float"
            within: [dorefa-w8a8g8, dorefa-w32a32g32]  # the errors differ by at most `points`
            points: 0.5

A target may be a study (report/study.py): test-time distortion sweeps of the nets its first table
counts::

    study:
      output: merolla                  # <out>/merolla/
      split_by: dataset                # one folder (and claims.md) per dataset (default: one folder)
      claims: true                     # write claims.md (default true)
      draws: 5                         # draws per random level
      sweeps:
        - id: hidden                   # the record's name: runs/<run>/sweeps/hidden.{csv,json}
          noises: [additive, bitflip]
          weights: hidden              # hidden (default) | effective | hidden_projected
          bn_recalibrate: 0            # re-estimate BN on this many training images
          engine: torch                # torch (default) | packed (bitflip of a W1A1 net's packed bits)
          out: "."                     # folder under the study's output
          levels: {bitflip: [0, 0.001, 0.01]}   # per noise (checked when read); default: its own
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import TargetsError

TAGS = ("CODE", "README", "SEC", "ABS", "U")
METRICS = ("test_error", "accuracy", "perplexity")
UNITS = ("percent", "fraction", "none")
PAPERS = ("bnn", "qnn", "dorefa", "merolla")
PAPER_NAMES = {"bnn": "BNN", "qnn": "QNN", "dorefa": "DoReFa-Net", "merolla": "Merolla et al."}  # as printed
DEFAULT_SEEDS = (0, 1, 2)
CHECK_KINDS = ("worse", "worst", "within")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PaperNumber:
    value: float | None      # None: the paper has a number here that nobody could read
    tag: str                 # confidence: CODE | README | SEC | ABS | U
    text: str | None = None  # as printed when not a plain number ("1.29±0.08", "~0.95")
    source: str | None = None

    def display(self) -> str:
        """As the paper prints it: ``text`` when given (keeps "11.40"'s zero), else the value."""
        if self.text:
            return self.text
        return "?" if self.value is None else format(self.value, "g")


@dataclass(frozen=True)
class Row:
    id: str
    labels: dict[str, Any]
    paper: PaperNumber | None          # None: not a paper row (an analogue table)
    overrides: tuple[str, ...] = ()
    not_reproduced: str | None = None
    needs_gpu_at: tuple[str, ...] = ()
    note: str | None = None
    scale: str | None = None            # pinned scale (None: the table command's)
    seeds: tuple[int, ...] | None = None  # pinned seeds (None: the table's or the command's)
    # the id of the row (same table) whose trained run of the same seed and scale this row starts
    # from (train.init_from: DoReFa's "initialized from the 32-bit model" rows)
    init_from_row: str | None = None
    paper_top5: PaperNumber | None = None  # the paper's top-5 number (tables with top5: true)


@dataclass(frozen=True)
class Check:
    claim: str
    kind: str                  # worse | worst | within
    rows: tuple[str, ...]      # worse/within: (a, b); worst: (a, *others)
    points: float = 0.0        # within: the largest difference that still holds


@dataclass(frozen=True)
class Table:
    paper: str
    id: str
    title: str
    metric: str
    unit: str
    source: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    output: str | None = None
    seeds: tuple[int, ...] | None = None
    checks: tuple[Check, ...] = ()
    top5: bool = False         # also the top-5 columns (paper and reproduced), in the table's metric

    @property
    def name(self) -> str:
        return self.output or f"{self.paper}_{self.id}"


@dataclass(frozen=True)
class Sweep:
    id: str
    noises: tuple[str, ...]
    weights: str = "hidden"
    bn_recalibrate: int = 0
    out: str = "."             # folder under the study's output
    engine: str = "torch"      # torch | packed (bitflip of a W1A1 net's packed weight bits)
    levels: tuple[tuple[str, tuple[float, ...]], ...] = ()  # per noise; a noise not named: its defaults


@dataclass(frozen=True)
class Study:
    """Test-time sweeps of the nets its first table trains (see report/study.py)."""
    output: str                # <out>/<output>/: per-noise CSV/MD/PNG of each sweep, claims.md
    draws: int
    sweeps: tuple[Sweep, ...]
    split_by: str | None = None  # dataset: one folder <output>/<dataset>/ per dataset
    claims: bool = True          # write claims.md (Merolla et al.'s claims checked)


@dataclass(frozen=True)
class Targets:
    paper: str
    title: str
    tables: tuple[Table, ...]
    path: str = field(default="", compare=False)
    name: str = ""
    study: Study | None = None


def _folder() -> Path:
    return Path(str(resources.files("bnnrepro.report") / "targets"))


def names() -> list[str]:
    """Every target ``bnnrepro table`` can build: the papers first, then the studies."""
    found = sorted(p.stem for p in _folder().glob("*.yaml"))
    return [p for p in PAPERS if p in found] + [n for n in found if n not in PAPERS]


def path_of(name: str) -> Path:
    return _folder() / f"{name}.yaml"


def load(name_or_path: str | Path) -> Targets:
    """Targets of a target name (``bnn``, ``quant_grid``) or of a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in names():
            raise TargetsError(f"unknown target {name_or_path!r}; allowed: {', '.join(names())}")
        path = path_of(str(name_or_path))
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TargetsError(f"{path}: cannot read targets: {err}") from None
    return parse(raw, str(path))


def _need(d: dict, key: str, where: str, kind=str):
    if key not in d:
        raise TargetsError(f"{where}: missing field {key!r}")
    if not isinstance(d[key], kind):
        raise TargetsError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {d[key]!r}")
    return d[key]


def _choice(value: str, allowed, where: str, key: str) -> str:
    if value not in allowed:
        raise TargetsError(f"{where}: {key}={value!r} is not allowed; allowed: {', '.join(allowed)}")
    return value


def _number(d: Any, where: str) -> PaperNumber:
    if not isinstance(d, dict):
        raise TargetsError(f"{where}: 'paper' must be a mapping with value and tag")
    value = d.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TargetsError(f"{where}: paper.value must be a number or null, got {value!r}")
    tag = _choice(_need(d, "tag", where), TAGS, where, "paper.tag")
    text = d.get("text")
    return PaperNumber(None if value is None else float(value), tag,
                       None if text is None else str(text), d.get("source"))


def _identified(d: Any, parent: str, kind: str) -> tuple[str, str]:
    """The ``id`` of a table or row mapping and its location for messages, both checked."""
    if not isinstance(d, dict):
        raise TargetsError(f"{parent}: each {kind} must be a mapping")
    ident = _need(d, "id", parent)
    where = f"{parent}, {kind} {ident!r}"
    if not ID.match(ident):
        raise TargetsError(f"{where}: id must be letters, digits, '_', '.', '-'")
    return ident, where


def _row(d: Any, table_where: str, columns: tuple[str, ...]) -> Row:
    rid, where = _identified(d, table_where, "row")
    labels = _need(d, "labels", where, dict)
    missing = [c for c in columns if c not in labels]
    if missing:
        raise TargetsError(f"{where}: labels lack column(s) {', '.join(missing)}")
    overrides = d.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise TargetsError(f"{where}: overrides must be a list of Hydra override strings")
    not_reproduced = d.get("not_reproduced")
    if bool(overrides) == bool(not_reproduced):
        raise TargetsError(f"{where}: give exactly one of 'overrides' and 'not_reproduced'")
    bad = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in ("seed", "scale", "runs_dir")]
    if bad:
        raise TargetsError(f"{where}: overrides must not set seed, scale or runs_dir ({', '.join(bad)}): "
                           "the table command sets them")
    gpu = d.get("needs_gpu_at") or []
    paper = None if d.get("paper") is None else _number(d["paper"], where)
    scale = d.get("scale")
    if scale is not None and (not isinstance(scale, str) or not ID.match(scale)):
        raise TargetsError(f"{where}: scale must be a scale preset's name (e.g. medium)")
    seeds = d.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise TargetsError(f"{where}: seeds must be a non-empty list of integers")
    init_from_row = d.get("init_from_row")
    if init_from_row is not None and (not isinstance(init_from_row, str) or not overrides):
        raise TargetsError(f"{where}: init_from_row must be the id of another row of this table, on a row "
                           "with overrides")
    if any(o.split("=", 1)[0].lstrip("+~") == "train.init_from" for o in overrides):
        raise TargetsError(f"{where}: overrides must not set train.init_from (a path of one machine): "
                           "name the row it starts from with init_from_row")
    top5 = None if d.get("paper_top5") is None else _number(d["paper_top5"], where)
    return Row(rid, dict(labels), paper, tuple(overrides), not_reproduced,
               tuple(str(s) for s in gpu), d.get("note"), scale, None if seeds is None else tuple(seeds),
               init_from_row, top5)


def _checks(raw: Any, where: str, row_ids: list[str], metric: str = "test_error") -> tuple[Check, ...]:
    if raw is None:
        return ()
    if metric == "accuracy":  # "worse" means a higher error; an accuracy table would read it backwards
        raise TargetsError(f"{where}: checks compare errors; this table's metric is accuracy")
    if not isinstance(raw, list):
        raise TargetsError(f"{where}: checks must be a list")
    out = []
    for i, c in enumerate(raw):
        cw = f"{where}, check {i + 1}"
        if not isinstance(c, dict):
            raise TargetsError(f"{cw}: a check is a mapping with claim and one of {', '.join(CHECK_KINDS)}")
        claim = _need(c, "claim", cw)
        kinds = [k for k in CHECK_KINDS if k in c]
        if len(kinds) != 1:
            raise TargetsError(f"{cw}: give exactly one of {', '.join(CHECK_KINDS)}")
        kind = kinds[0]
        if kind == "worst":
            rows = (_need(c, "worst", cw), *_need(c, "among", cw, list))
        else:
            rows = tuple(_need(c, kind, cw, list))
            if len(rows) != 2:
                raise TargetsError(f"{cw}: {kind} names two rows, got {list(rows)}")
        unknown = [r for r in rows if r not in row_ids]
        if unknown:
            raise TargetsError(f"{cw}: unknown row(s) {', '.join(map(str, unknown))}")
        points = c.get("points", 0.0)
        if kind == "within" and (isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0):
            raise TargetsError(f"{cw}: within needs points >= 0, got {points!r}")
        out.append(Check(str(claim), kind, tuple(rows), float(points or 0.0)))
    return tuple(out)


def _seeds(raw: Any, where: str) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and s >= 0 for s in raw):
        raise TargetsError(f"{where}: seeds must be a list of non-negative integers")
    return tuple(raw)


def _study(raw: Any, where: str) -> Study | None:
    if raw is None:
        return None
    sw = f"{where}, study"
    if not isinstance(raw, dict):
        raise TargetsError(f"{sw}: must be a mapping with output, draws and sweeps")
    sweeps = []
    for s in _need(raw, "sweeps", sw, list):
        sid, ssw = _identified(s, sw, "sweep")
        noises = tuple(_need(s, "noises", ssw, list))
        bn = s.get("bn_recalibrate", 0)
        if isinstance(bn, bool) or not isinstance(bn, int) or bn < 0:
            raise TargetsError(f"{ssw}: bn_recalibrate must be an integer >= 0")
        engine = str(s.get("engine", "torch"))
        if engine not in ("torch", "packed"):
            raise TargetsError(f"{ssw}: engine {engine!r} is unknown; allowed: torch, packed")
        levels = s.get("levels") or {}
        if not isinstance(levels, dict) or not all(
                k in noises and isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                  for x in v) for k, v in levels.items()):
            raise TargetsError(f"{ssw}: levels must map some of its noises ({', '.join(noises)}) to lists of numbers")
        levels = tuple((k, tuple(float(x) for x in v)) for k, v in levels.items())
        if levels:  # a bad level fails now, not after the nets have trained
            from ..robustness.distortions import get_distortion

            for noise, values in levels:
                try:
                    get_distortion(noise).check_levels(values)
                except ValueError as err:
                    raise TargetsError(f"{ssw}: {err}") from None
        sweeps.append(Sweep(sid, noises, str(s.get("weights", "hidden")), bn, str(s.get("out", ".")), engine,
                            levels))
    draws = raw.get("draws", 5)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise TargetsError(f"{sw}: draws must be a positive integer")
    split_by = raw.get("split_by")
    if split_by not in (None, "dataset"):
        raise TargetsError(f"{sw}: split_by {split_by!r} is unknown; allowed: dataset (or leave it out)")
    claims = raw.get("claims", True)
    if not isinstance(claims, bool):
        raise TargetsError(f"{sw}: claims must be true or false")
    return Study(_need(raw, "output", sw), draws, tuple(sweeps), split_by, claims)


def _top5(t: dict, where: str) -> bool:
    top5 = t.get("top5", False)
    if not isinstance(top5, bool):
        raise TargetsError(f"{where}: top5 must be true or false")
    if top5 and t.get("metric") == "perplexity":
        raise TargetsError(f"{where}: top5 needs an error or accuracy metric")
    return top5


def parse(raw: Any, where: str = "<targets>") -> Targets:
    if not isinstance(raw, dict):
        raise TargetsError(f"{where}: a targets file is a mapping with paper, title and tables")
    paper = _need(raw, "paper", where)
    tables = []
    for t in _need(raw, "tables", where, list):
        tid, tw = _identified(t, where, "table")
        columns = tuple(_need(t, "columns", tw, list))
        rows = tuple(_row(r, tw, columns) for r in _need(t, "rows", tw, list))
        if not rows:
            raise TargetsError(f"{tw}: a table needs at least one row")
        ids = [r.id for r in rows]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise TargetsError(f"{tw}: duplicate row id(s) {', '.join(dupes)}")
        runnable = {r.id for r in rows if r.overrides and r.init_from_row is None}
        for r in rows:
            if r.init_from_row is not None and r.init_from_row not in runnable:
                raise TargetsError(f"{tw}: row {r.id}: init_from_row {r.init_from_row!r} is not a row of this table "
                                   "with overrides (and no init_from_row of its own)")
        tables.append(Table(paper, tid, _need(t, "title", tw), _choice(_need(t, "metric", tw), METRICS, tw, "metric"),
                            _choice(_need(t, "unit", tw), UNITS, tw, "unit"), _need(t, "source", tw), columns, rows,
                            t.get("output"), _seeds(t.get("seeds"), tw), _checks(t.get("checks"), tw, ids, t.get("metric", "test_error")),
                            _top5(t, tw)))
    return Targets(paper, _need(raw, "title", where), tuple(tables), where, str(raw.get("name") or paper),
                   _study(raw.get("study"), where))
