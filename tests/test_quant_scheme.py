"""The declarative quantizer scheme (issue 10, scope 2).

* every preset (and every committed table row) composes and builds exactly what it built before the scheme existed: the resolved
  config agrees on every key of the snapshot (new keys may be added), and the model has the same
  modules, parameter/buffer shapes and quantizer settings (tests/snapshots/quant_presets.json,
  written by tests/snapshots/make_quant_snapshot.py before the change);
* two seeded smoke runs give the same metrics as before;
* the conf/quant group presets compose; QuantScheme checks its roles.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO, compose

_spec = importlib.util.spec_from_file_location("make_quant_snapshot", REPO / "tests" / "snapshots" / "make_quant_snapshot.py")
snap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snap)

SNAPSHOT = json.loads(snap.SNAPSHOT.read_text())


def _flatten(d, prefix=""):
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@pytest.fixture(scope="module")
def composer():
    from bnnrepro.report.plan import hydra_composer

    return hydra_composer()


def test_snapshot_covers_every_preset():
    expected = {f"{p} scale={s}" for p in snap.presets() for s in snap.SCALES}
    expected |= {f"{row} scale=smoke" for row in snap.table_rows()}
    assert set(SNAPSHOT["presets"]) == expected


@pytest.mark.parametrize("key", sorted(SNAPSHOT["presets"]))
def test_preset_builds_as_before(composer, key):
    preset, scale = key.rsplit(" scale=", 1)
    old = SNAPSHOT["presets"][key]
    new = snap.preset_record(composer, preset, scale)
    old_cfg, new_cfg = _flatten(old["config"]), _flatten(new["config"])
    changed = {k: (v, new_cfg.get(k, "<missing>")) for k, v in old_cfg.items() if new_cfg.get(k, "<missing>") != v}
    assert not changed, f"{key}: config keys changed (old, new): {changed}"
    assert old.get("invalid") == new.get("invalid")
    if "model" in old:
        old_m, new_m = old["model"]["modules"], new["model"]["modules"]
        assert sorted(old_m) == sorted(new_m), f"{key}: module names differ"
        diff = {n: (old_m[n], new_m[n]) for n in old_m if old_m[n] != new_m[n]}
        assert not diff, f"{key}: modules differ (old, new): {diff}"
        assert old["model"]["n_params"] == new["model"]["n_params"]


@pytest.mark.parametrize("name", sorted(SNAPSHOT.get("smoke_runs", {})))
def test_smoke_run_metrics_as_before(name, mnist_root):
    old = SNAPSHOT["smoke_runs"][name]
    assert snap.smoke_metrics(old["overrides"], str(mnist_root)) == old["metrics"]
