"""Snapshot of what every preset builds, to check that a refactor of the quantizer plumbing changes
nothing (issue 10, scope 2: the declarative quantizer scheme).

``python tests/snapshots/make_quant_snapshot.py [--smoke-runs]`` writes ``quant_presets.json`` next to
this file: for every ``conf/paper/*.yaml`` (``+paper=X``) and ``conf/experiment/*.yaml``
(``+experiment=X``) at ``scale=paper`` and ``scale=smoke``, and every row of the committed tables
(the report targets) at ``scale=smoke``: the resolved config (paths and other
run-independent fields left out), and the model it builds, module by module: parameter and buffer
names and shapes, and for every quantizer module its registry name, precision and settings. Presets
that fail validation are recorded with the error. ``--smoke-runs`` also
trains two seeded smoke runs (BNN and DoReFa) and records their metrics (timings left out).

The format names quantizers by registry name and declared attributes only, never by Python class
name, so moving classes between modules does not change it. ``tests/test_quant_scheme.py`` builds
the same records and compares them with the committed file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SNAPSHOT = HERE / "quant_presets.json"
SCALES = ("paper", "smoke")
# config fields that say where/how a run is kept, not what it computes
IGNORED_TOP = ("runs_dir", "run_name", "resume", "logger")
# per-run training metrics that depend on the machine, not on the computation
TIMING_KEYS = ("time", "seconds", "wall", "elapsed", "throughput", "per_s", "timestamp")
SMOKE_RUNS = {
    "bnn": ["+paper=bnn", "scale=smoke", "seed=0", "train.progress=false"],
    "dorefa_mnist_mlp": ["+experiment=dorefa_mnist_mlp", "scale=smoke", "seed=0", "train.progress=false",
                         "quant.w_bits=1", "quant.a_bits=2", "quant.g_bits=4"],
}


def presets() -> list[str]:
    out = [f"+paper={p.stem}" for p in sorted((ROOT / "conf" / "paper").glob("*.yaml"))]
    out += [f"+experiment={p.stem}" for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml"))]
    return out


def table_rows() -> list[str]:
    """Every distinct row of the committed tables (the report targets), as one string of
    overrides: the combinations of quantizer keys that runs are matched by."""
    import yaml

    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("overrides"), list):
                key = " ".join(str(o) for o in node["overrides"])
                if key not in found:
                    found.append(key)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in sorted((ROOT / "bnnrepro" / "report" / "targets").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return found


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def quantizer_record(m) -> dict:
    """Registry name, precision and the constructor-relevant settings of a quantizer module."""
    rec = {"registry_name": getattr(type(m), "registry_name", None),
           "precision": getattr(m, "precision", None),
           "clips_latent_weights": bool(getattr(m, "clips_latent_weights", False))}
    settings = {}
    for k, v in sorted(vars(m).items()):
        if k.startswith("_") or k in ("training", "generator", "precision", "clips_latent_weights"):
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            settings[k] = v
    rec["settings"] = settings
    return rec


def is_quantizer(m) -> bool:
    return getattr(type(m), "registry_name", None) is not None


def model_record(model) -> dict:
    modules = {}
    for name, m in model.named_modules():
        entry: dict = {}
        if is_quantizer(m):
            entry["quantizer"] = quantizer_record(m)
        else:
            entry["type"] = type(m).__name__
        params = {n: list(p.shape) for n, p in m.named_parameters(recurse=False)}
        buffers = {n: list(b.shape) for n, b in m.named_buffers(recurse=False) if b is not None}
        trainable = {n: bool(p.requires_grad) for n, p in m.named_parameters(recurse=False)}
        if params:
            entry["params"] = params
            entry["requires_grad"] = trainable
        if buffers:
            entry["buffers"] = buffers
        modules[name or "<root>"] = entry
    return {"modules": modules, "n_params": sum(p.numel() for p in model.parameters())}


def config_record(cfg) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in d.items() if k not in IGNORED_TOP}


def input_shape(cfg) -> tuple:
    from bnnrepro.data import DATASETS

    spec = DATASETS[cfg.data.name]
    shape = tuple(spec.input_shape)
    if cfg.data.image_size:
        shape = (shape[0], int(cfg.data.image_size), int(cfg.data.image_size))
    return shape, spec.num_classes


def build(cfg):
    """The project's own model construction (whatever module build_model lives in)."""
    from bnnrepro.train.factory import build_model

    shape, classes = input_shape(cfg)
    return build_model(cfg, shape, classes)


def preset_record(composer, preset: str, scale: str) -> dict:
    import torch

    from bnnrepro.config import validate
    from bnnrepro.errors import ConfigError

    cfg = composer(preset.split() + [f"scale={scale}"])
    rec: dict = {"config": config_record(cfg)}
    try:
        validate(cfg)
    except (ConfigError, ValueError) as err:
        rec["invalid"] = str(err)
        return rec
    torch.manual_seed(0)
    rec["model"] = model_record(build(cfg))
    return rec


def all_preset_records() -> dict:
    from bnnrepro.compose import hydra_composer

    composer = hydra_composer()
    out = {f"{p} scale={s}": preset_record(composer, p, s) for p in presets() for s in SCALES}
    for row in table_rows():
        key = f"{row} scale=smoke"
        if key not in out:
            out[key] = preset_record(composer, row, "smoke")
    return out


def _strip_timings(rec):
    if isinstance(rec, dict):
        return {k: _strip_timings(v) for k, v in rec.items()
                if not any(t in k for t in TIMING_KEYS)}
    if isinstance(rec, list):
        return [_strip_timings(x) for x in rec]
    return rec


def smoke_metrics(overrides: list[str], data_root: str | None = None) -> list[dict]:
    """Train one smoke run in a subprocess; its metrics.jsonl records without timings."""
    env = dict(os.environ)
    if data_root:
        env["BNNREPRO_DATA"] = data_root
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "bnnrepro", "train", *overrides, f"runs_dir={tmp}", "run_name=snap"]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        lines = (Path(tmp) / "snap" / "metrics.jsonl").read_text().splitlines()
    return [_strip_timings(json.loads(line)) for line in lines if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke-runs", action="store_true", help="also train and record the seeded smoke runs")
    ap.add_argument("--out", default=str(SNAPSHOT))
    args = ap.parse_args()
    snap = {"presets": all_preset_records()}
    if args.smoke_runs:
        snap["smoke_runs"] = {k: {"overrides": v, "metrics": smoke_metrics(v)} for k, v in SMOKE_RUNS.items()}
    elif Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        if "smoke_runs" in old:
            snap["smoke_runs"] = old["smoke_runs"]
    Path(args.out).write_text(json.dumps(_jsonable(snap), indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {len(snap['presets'])} preset records"
          + (f", {len(snap['smoke_runs'])} smoke runs" if "smoke_runs" in snap else ""))


if __name__ == "__main__":
    main()
