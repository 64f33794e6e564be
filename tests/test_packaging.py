"""The wheel carries every subpackage and the Hydra configs, so a non-editable install works."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    text = (REPO / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(bnnrepro(?:\.\w+)*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bnnrepro").rglob("__init__.py")}
    assert on_disk | {"bnnrepro.conf"} == listed


def test_wheel_contains_configs(tmp_path):
    pytest.importorskip("setuptools")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("bnnrepro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"bnnrepro/conf/{yaml.relative_to(REPO / 'conf').as_posix()}" in names
    assert "bnnrepro/cli.py" in names and "bnnrepro/train/loop.py" in names
    # the installed package (not the source tree) composes the paper preset
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = subprocess.run([sys.executable, "-m", "bnnrepro", "train", "+paper=bnn", "--cfg", "job"],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    assert "experiment: bnn_mnist_theano" in out.stdout


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "bnnrepro", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "eval", "pack", "compare", "bench", "robustness", "table", "summary"):
        assert re.search(rf"^\s+{command}\s", out.stdout, re.M), command
