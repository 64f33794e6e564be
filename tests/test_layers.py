"""The house has floors: no import (lazy ones inside functions included) runs from a lower layer to
a higher one, and no module imports itself back through others. Parsed from the source with ``ast``,
so a back-edge fails here even when no test happens to execute the importing line."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnnrepro"

# bottom to top; a module may import its own layer's and lower layers' modules only
LAYERS = [
    {"bnnrepro", "bnnrepro.errors", "bnnrepro.jit", "bnnrepro.timing"},
    {"bnnrepro.quant", "bnnrepro.runs", "bnnrepro.data"},
    {"bnnrepro.nn"},
    {"bnnrepro.models", "bnnrepro.optim"},
    {"bnnrepro.config", "bnnrepro.compose", "bnnrepro.conf"},
    {"bnnrepro.train"},
    {"bnnrepro.commandline"},
    {"bnnrepro.kernels", "bnnrepro.robustness", "bnnrepro.report", "bnnrepro.evaluate"},
    {"bnnrepro.completion", "bnnrepro.cli", "bnnrepro.__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _target(name: str) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every bnnrepro module ``module`` imports, anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text())
    base = module if _is_package(module) else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                origin = ".".join(anchor + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the submodule sub when there is one
            names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "bnnrepro":
                target = _target(name)
                if target and target != module:
                    found.add(target)
    return found


def layer_of(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in sorted(members, key=len, reverse=True)
               if m != "bnnrepro"):
            return rank
    if module == "bnnrepro":
        return 0
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py LAYERS")


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_downhill_to_up():
    back = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                  for m in MODULES for t in imports(m) if layer_of(t) > layer_of(m))
    assert not back, "imports from a lower layer to a higher one:\n  " + "\n  ".join(back)


def test_no_import_cycles():
    graph = {m: imports(m) for m in MODULES}
    # a package's __init__ importing its own submodules is how packages are made, not a cycle
    for m in graph:
        if _is_package(m):
            continue
        graph[m] = {t for t in graph[m] if not (_is_package(t) and m.startswith(t + "."))}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from ..cli import main\n", {"bnnrepro.cli"}),
    ("def f():\n    from ..train import fit\n", {"bnnrepro.train"}),
    ("from .. import runs\n", {"bnnrepro.runs"}),
])
def test_the_parser_sees_lazy_and_relative_imports(source, expected, monkeypatch, tmp_path):
    fake = tmp_path / "probe.py"
    fake.write_text(source)
    monkeypatch.setitem(MODULES, "bnnrepro.report.probe", fake)
    assert imports("bnnrepro.report.probe") == expected
