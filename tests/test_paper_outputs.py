"""Paper-ready outputs and the documented API: `table --compact` (Markdown and booktabs LaTeX), the
LaTeX of every table checked structurally (and compiled where pdflatex is installed), no HTML in a
Markdown cell, every link of a committed table resolving (the reference sheet shipped in docs/),
figures titled with the paper's row names, the README's CPU install and Python API blocks, and the
docstrings of the registries and quantized layers."""
from __future__ import annotations

import importlib
import inspect
import io
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from bnnrepro.report import commands, pipeline, render, tables, targets
from test_report_fixtures import data_here, no_cuda, write_run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
THEANO = ["+experiment=bnn_mnist_theano"]
TORCH7 = ["+experiment=bnn_mnist_torch7"]
BENCHMARKS = ("kernels.", "train_speed.")  # written by `bnnrepro bench`, not by the table renderers


@pytest.fixture(autouse=True)
def clean_tree(monkeypatch):
    """The fixture runs count as made on a clean tree, whatever state this checkout is in."""
    monkeypatch.setattr(pipeline, "code_version", lambda: {"package": "0.1.0", "git_commit": "0" * 40,
                                                           "git_dirty": False})


def _forbidden(argv):
    raise AssertionError(f"nothing may be launched here: {argv}")


def _table(runs: Path, out: Path, *extra: str, target: str = "bnn") -> int:
    return commands.table_main([target, "--no-train", "scale=smoke", "seed=0,1,2", f"runs_dir={runs}",
                                "--out", str(out), "--no-figures", *extra],
                               check_data=data_here, has_cuda=no_cuda, runner=_forbidden)


# ------------------------------------------------------------------------ LaTeX, structurally

RULES = (r"\toprule", r"\midrule", r"\bottomrule")
# what may stand in a cell: escaped specials, the macros tex_escape writes, and $...$ of one macro
CELL_MACROS = re.compile(r"\\(?:[&%$#_{}]|textasciitilde\{\}|\^\{\}|textbackslash\{\}|textless\{\}|"
                         r"textgreater\{\}|textbar\{\}|S\{\})")
CELL_MATH = re.compile(r"\$\\(?:pm|Delta|times|leq|geq|approx|to)\$|^\$n\$$")


def _unescaped_split(line: str) -> list[str]:
    return re.split(r"(?<!\\)&", line)


def check_latex(text: str) -> None:
    """Raise AssertionError unless ``text`` is a booktabs table that compiles: environments balanced,
    every row as many cells as the tabular spec has columns, only booktabs rules, every special
    character of a cell escaped, nothing but ASCII outside comments."""
    body = [line for line in text.splitlines() if not line.startswith("%")]
    stack: list[str] = []
    for line in body:
        assert line.isascii(), f"non-ASCII outside a comment: {line!r}"
        for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", line):
            if kind == "begin":
                stack.append(env)
            else:
                assert stack and stack.pop() == env, f"\\end{{{env}}} closes nothing open: {line!r}"
        assert not re.search(r"\\(hline|cline|vline)\b", line), f"not a booktabs rule: {line!r}"
    assert not stack, f"environments left open: {stack}"
    specs = [re.match(r"\\begin\{tabular\}\{([^}]*)\}$", line) for line in body]
    specs = [m.group(1) for m in specs if m]
    assert len(specs) == 1 and re.fullmatch(r"[lrc]+", specs[0]), f"one tabular of l/r/c columns: {specs}"
    columns = len(specs[0])
    start, end = body.index(r"\toprule"), body.index(r"\bottomrule")
    assert body[end + 1] == r"\end{tabular}" and r"\midrule" in body[start:end]
    for line in body[start + 1:end]:
        if line in RULES:
            continue
        assert line.endswith(r" \\") and r"\\" not in line[:-3], f"a row ends with \\\\ once: {line!r}"
        cells = _unescaped_split(line[:-3])
        assert len(cells) == columns, f"{len(cells)} cells for {columns} columns: {line!r}"
        for cell in cells:
            _check_text(cell)
    for caption in (m.group(1) for m in map(re.compile(r"\\caption\{(.*)\}$").match, body) if m):
        _check_text(caption)


def _check_text(text: str) -> None:
    bare = CELL_MATH.sub("", CELL_MACROS.sub("", text.strip()))
    assert not re.search(r"[\\%&_#$~^{}]", bare), f"unescaped special character in {text!r}"


def test_the_latex_check_fails_on_each_kind_of_error():
    good = "\n".join([r"\begin{tabular}{lr}", r"\toprule", r"A & B \\", r"\midrule", r"x\_1 & 2 $\pm$ 1 \\",
                      r"\bottomrule", r"\end{tabular}"])
    check_latex(good)
    for bad in (good.replace(r"x\_1", "x_1"), good.replace(r"x\_1", "50%"), good.replace(r"x\_1", "a & b"),
                good.replace(r"\toprule", r"\hline"), good.replace(r"\end{tabular}", ""),
                good.replace(r"x\_1", "x±1"), good.replace(r"x\_1", r"\textbf{x}"),
                good.replace(r"\toprule", "\\caption{5%}\n\\toprule")):
        with pytest.raises(AssertionError):
            check_latex(bad)


def _committed(suffix: str) -> list[Path]:
    return sorted(p for p in RESULTS.rglob(f"*{suffix}") if "runs" not in p.relative_to(RESULTS).parts
                  and not p.name.startswith(BENCHMARKS) and p.name != "README.md")


@pytest.mark.parametrize("path", _committed(".tex"), ids=lambda p: p.name)
def test_every_committed_latex_table_is_well_formed(path):
    check_latex(path.read_text())


NASTY = "a_b & c % d # e $ f ~ g ^ h \\ i { j } <k> | l ± m – n § o"


def _nasty_targets() -> targets.Targets:
    """The bnn target with a row label and a paper text holding every character LaTeX treats
    specially and an HTML-looking tag."""
    raw = {"paper": "bnn", "title": "nasty", "tables": [{
        "id": "nasty", "title": "Table 9: <br> cells", "metric": "test_error", "unit": "percent",
        "source": "docs/papers.md §a.1", "columns": ["method"],
        "rows": [{"id": "theano", "labels": {"method": NASTY}, "overrides": THEANO,
                  "paper": {"value": 1.0, "tag": "U", "text": "1.0<sup>a</sup>"}},
                 {"id": "cited", "labels": {"method": "x<br>y"}, "paper": {"value": 2.0, "tag": "SEC"},
                  "not_reproduced": "another paper's method"}]}]}
    return targets.parse(raw, "<nasty>")


def test_special_characters_are_escaped_in_latex_and_tags_in_markdown(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for seed in range(2):
        write_run(runs, f"theano-s{seed}", THEANO, seed, 1.0 + seed)
    pipeline.make_tables([_nasty_targets()], runs_dir=runs, out_dir=out, scale="smoke", seeds=(0, 1),
                         train=False, check_data=data_here, has_cuda=no_cuda, figures=False, compact=True,
                         log=io.StringIO())
    for name in ("bnn_nasty.tex", "bnn_nasty_compact.tex"):
        check_latex((out / name).read_text())
    for name in ("bnn_nasty.md", "bnn_nasty_compact.md"):
        text = (out / name).read_text()
        assert not [c for c in _md_cells(text) if _html(c)], name
        assert r"\<k>" in text and r"\<br>" in text  # the text is kept, as text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (no LaTeX engine on PyPI)")
def test_every_latex_table_compiles_with_pdflatex(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_run(runs, "theano-s0", THEANO, 0, 1.5)
    assert _table(runs, out, "--compact") == 0
    files = _committed(".tex") + sorted(out.glob("*.tex"))
    doc = "\n".join([r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}"]
                    + [f"\\input{{{p.as_posix()}}}\n\\clearpage" for p in files] + [r"\end{document}", ""])
    (tmp_path / "doc.tex").write_text(doc)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").is_file()


# ------------------------------------------------------------------------------- --compact

def test_compact_table_has_the_reproduced_rows_only(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    errors = {0: 1.25, 1: 1.5, 2: 2.0}
    for seed, err in errors.items():
        write_run(runs, f"theano-s{seed}", THEANO, seed, err)
    write_run(runs, "torch7-s1", TORCH7, 1, 3.5)
    assert _table(runs, out) == 0
    assert not list(out.glob("*_compact.*"))  # only when asked
    assert _table(runs, out, "--compact") == 0

    (table,) = targets.load("bnn").tables
    by_id = {r.id: r for r in table.rows}
    theano, torch7 = by_id["theano-mnist"], by_id["torch7-mnist"]
    mean, std = statistics.mean(errors.values()), statistics.stdev(errors.values())
    md = (out / "bnn_table1_compact.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Group | Method | Dataset | Paper | Reproduced | n |"
    assert rows[1:] == [  # the table's order; the rows without runs left out
        f"| {torch7.labels['group']} | {torch7.labels['method']} | MNIST | {torch7.paper.display()} | 3.50 | 1 |",
        f"| {theano.labels['group']} | {theano.labels['method']} | MNIST | {theano.paper.display()} | "
        f"{mean:.2f} ± {std:.2f} | 3 |"]
    assert "scale=smoke" in md and "seeds 0,1,2" in md and "[bnn_table1.md](bnn_table1.md)" in md

    tex = (out / "bnn_table1_compact.tex").read_text()
    check_latex(tex)
    caption = re.search(r"\\caption\{(.*)\}$", tex, re.M).group(1)
    assert "scale=smoke" in caption and "seeds 0,1,2" in caption and table.title.split(":")[0] in caption
    assert f"& {theano.labels['method']} & MNIST & 0.96 & {mean:.2f} $\\pm$ {std:.2f} & 3 \\\\" in tex
    assert tex.count(r" \\") == 3  # the header and two rows


def test_compact_table_of_rows_without_runs_is_empty_and_says_so(tmp_path):
    assert _table(tmp_path / "runs", tmp_path / "out", "--compact") == 0
    tex = (tmp_path / "out" / "bnn_table1_compact.tex").read_text()
    check_latex(tex)
    assert "No row has a reproduced result yet." in tex and tex.count(r" \\") == 1


def test_compact_is_a_table_flag_with_one_spelling(capsys):
    parser = commands.table_parser()
    assert "--compact" in parser.flags()
    assert commands.table_main(["bnn", "--compat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnnrepro: error: ") and "--compat" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ Markdown

TABLE_ROW = re.compile(r"^\|.*\|$")
HTML_TAG = re.compile(r"(?<!\\)<[A-Za-z/!?]|&(?:[a-z]+|#\d+);")


def _md_cells(text: str) -> list[str]:
    cells = []
    for line in text.splitlines():
        if TABLE_ROW.match(line):
            cells += re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return cells


def _html(cell: str) -> bool:
    return bool(HTML_TAG.search(re.sub(r"`[^`]*`", "", cell)))


def test_the_html_check_catches_tags_and_entities():
    assert _html("a<br>b") and _html("x&nbsp;y") and _html("<sup>1</sup>") and _html("<data root>/x")
    assert not _html(r"\<data root>/x") and not _html("`<noise>`") and not _html("<= 0.2") and not _html("Kim & S")


def test_md_cell_escapes_html_and_keeps_the_text():
    for text in ("line<br>two", "<sup>a</sup>", "folder(s) not found: <data root>/imagenet/train"):
        assert not _html(render.md_cell(text)) and render.md_cell(text).replace("\\", "") == text


@pytest.mark.parametrize("path", _committed(".md"), ids=lambda p: str(p.relative_to(RESULTS)))
def test_no_html_in_a_committed_table_cell(path):
    bad = [c for c in _md_cells(path.read_text()) if _html(c)]
    assert not bad, f"HTML in a Markdown cell of {path.name}: {bad[:3]}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", _committed(".md"), ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_link_of_a_committed_table_resolves(path):
    text = path.read_text()
    targets_ = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in targets_ if t and not (path.parent / t).exists()]
    assert not missing, f"{path.name}: links to nothing: {missing[:3]}"
    assert "papers.md" not in LINK.sub("", text), f"{path.name} cites papers.md without a link to it"


def test_the_reference_sheet_is_shipped_and_cited_from_results():
    sheet = REPO / "docs" / "papers.md"
    assert sheet.is_file() and "shared/reference/papers.md" in sheet.read_text().split("\n#", 1)[0]
    assert (RESULTS / render.REFERENCE_LINK).resolve() == sheet.resolve()
    cited = [p for p in _committed(".md") if render.REFERENCE_LINK in p.read_text()]
    assert len(cited) >= len(targets.PAPERS)  # at least each paper's tables cite it
    for section in sorted({m for p in cited for m in re.findall(r"docs/papers\.md §([a-d](?:\.\d+)?)",
                                                                 p.read_text())}):
        heading = rf"^### {re.escape(section)} " if "." in section else rf"^## \({section}\) "
        assert re.search(heading, sheet.read_text(), re.M), f"docs/papers.md has no section {section}"


# ------------------------------------------------------------------------------- figures

def test_row_figures_are_titled_with_the_papers_row_names(tmp_path, monkeypatch):
    titles = {}

    def record(runs, out, title, paper_error=None):
        titles[Path(out).stem] = title
        return None

    monkeypatch.setattr(tables.curves, "plot_row", record)
    runs = tmp_path / "runs"
    for seed in (0, 2):
        write_run(runs, f"theano-s{seed}", THEANO, seed, 1.5)
    pipeline.make_tables([targets.load("bnn")], runs_dir=runs, out_dir=tmp_path / "out", scale="smoke",
                         seeds=(0, 1, 2), train=False, check_data=data_here, has_cuda=no_cuda, log=io.StringIO())
    (table,) = targets.load("bnn").tables
    row = next(r for r in table.rows if r.id == "theano-mnist")
    names = ", ".join(row.labels[c] for c in table.columns)
    assert titles == {"theano-mnist": f"BNN, Table 1: {names} (scale=smoke, seeds 0, 2)"}


# -------------------------------------------------------------------------------- README

def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    assert f"\n## {title}\n" in text, f"README has no section {title!r}"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_keeps_the_two_commands_first_then_a_cpu_install_for_pip_and_uv():
    text = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split()[:2] for line in first.splitlines()] == [["make", "demo"], ["make", "test"]]
    index = re.search(r"TORCH_CPU_INDEX:-(\S+)\}", (REPO / "scripts" / "install_torch.sh").read_text()).group(1)
    install = _readme_section("Two commands")
    assert f"pip install --extra-index-url {index} ." in install  # the index make setup uses
    assert "uv pip install --torch-backend=cpu ." in install


def test_readme_python_api_blocks_run(mnist_root, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", _readme_section("Python API"), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNNREPRO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BNNREPRO_DATA", str(mnist_root))
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    run = namespace["run"]
    assert run.status == "completed" and [r.id for r in namespace["found"].completed] == [run.id]
    assert namespace["result"]["error"] == pytest.approx(run.summary["test_error"], abs=1e-4)
    assert namespace["net"][-1].num_features == 10


# ---------------------------------------------------------------------------- docstrings

DOCUMENTED = ("bnnrepro.quant.registry", "bnnrepro.data.registry", "bnnrepro.models", "bnnrepro.train.factory",
              "bnnrepro.optim.build", "bnnrepro.nn.layers", "bnnrepro.report.compact")


def _undocumented(module) -> list[str]:
    """Public functions and classes defined in ``module`` (and the public methods those classes
    define) without a docstring of their own; a dataclass's generated signature is not one."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) and not obj.__doc__:
            missing.append(name)
        elif inspect.isclass(obj):
            doc = obj.__dict__.get("__doc__") or ""
            if not doc or doc.startswith(f"{name}("):
                missing.append(name)
            for attr, member in vars(obj).items():
                fn = member.fget if isinstance(member, property) else member
                if not attr.startswith("_") and inspect.isfunction(fn) and not fn.__doc__:
                    missing.append(f"{name}.{attr}")
    return missing


def test_the_docstring_check_finds_what_lacks_one():
    import types

    module = types.ModuleType("fake")
    exec("def f(): pass\nclass C:\n    'doc'\n    def m(self): pass\n", module.__dict__)
    assert _undocumented(module) == ["f", "C.m"]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_registries_and_layers_have_docstrings(name):
    assert not _undocumented(importlib.import_module(name)), name

