"""``bnnrepro pack | compare | bench`` and ``predict_packed`` (used by ``bnnrepro eval --engine packed``)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import artifact
from .engine import PackedModel, PackError, unpack_activation, pack_activation
from .multibit_engine import MultiBitModel
from ..errors import USER_ERRORS

SCALE_PREPROCESSING = ("scale", "scale_pm1")


# ---------------------------------------------------------------- loading

def _user_errors() -> tuple[type[BaseException], ...]:
    return USER_ERRORS + (OSError,)


def load_torch(source: str, which: str = "best"):
    """``(model, cfg, input_shape)`` of a run directory or checkpoint (eval mode, weights_only)."""
    from ..train import load_trained

    return load_trained(source, which=which)


def check_preprocessing(cfg) -> None:
    """What a run's config must say for the packed engine to compute what the run computed: pixels
    scaled into the first layer, and BatchNorm's running statistics (folded into thresholds)."""
    try:
        pre = cfg.data.preprocessing
    except (AttributeError, KeyError):  # a config without data.preprocessing: nothing to check
        return
    if pre not in SCALE_PREPROCESSING:
        raise PackError(f"data.preprocessing={pre!r}: the packed engine takes uint8 pixels scaled as "
                        f"x * 2/255 - 1 (data.preprocessing=scale) into its first layer")
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is not None and model.get("bn_eval_stats", "running") == "batch":
        raise PackError("model.bn_eval_stats=batch: this net was evaluated with each test batch's own "
                        "BatchNorm statistics; the packed engine folds the running ones (allowed: running)")


def to_packed(source, *, input_shape=None, which: str = "best") -> PackedModel | MultiBitModel:
    """A :class:`PackedModel` (a :class:`MultiBitModel` for a DoReFa net) from either, an ``nn.Module``
    (needs ``input_shape``), a ``.bnn`` artifact, or a run directory / checkpoint."""
    if isinstance(source, (PackedModel, MultiBitModel)):
        return source
    if isinstance(source, nn.Module):
        if input_shape is None:
            raise ValueError("packing an nn.Module needs input_shape (one sample's uint8 shape)")
        return PackedModel.from_torch(source, tuple(input_shape))
    path = Path(source)
    if artifact.is_artifact(path):
        return artifact.load(path)
    model, cfg, shape = load_torch(str(path), which)
    check_preprocessing(cfg)
    return PackedModel.from_torch(model, tuple(input_shape or shape), meta=_meta(path, cfg))


def _meta(path: Path, cfg) -> dict:
    meta = {"source": str(path)}
    for key in ("data.name", "data.preprocessing", "model.name"):
        try:
            node = cfg
            for part in key.split("."):
                node = node[part]
            meta[key] = node if isinstance(node, (str, int, float, bool)) else str(node)
        except Exception:
            pass
    return meta


def predict_packed(artifact_or_model, x_uint8, *, input_shape=None, batch_size: int = 256,
                   return_logits: bool = False, preprocessing: str | None = None) -> torch.Tensor:
    """Predicted labels (int64 ``[N]``; ``return_logits=True``: float32 ``[N, classes]`` logits) of
    uint8 images ``x_uint8`` ``[N, C, H, W]`` with the packed engine.

    ``artifact_or_model``: a ``.bnn`` path, a run directory or checkpoint, a :class:`PackedModel`,
    or a torch model (packed on the fly; its input is ``data.scale_pm1(x_uint8)``).
    ``preprocessing``: the run's ``data.preprocessing``; anything but ``scale`` raises (the packed
    first layer computes on ``x * 2/255 - 1`` exactly, not on GCN/ZCA inputs)."""
    if preprocessing is not None and preprocessing not in SCALE_PREPROCESSING:
        raise PackError(f"data.preprocessing={preprocessing!r}: the packed engine only takes inputs "
                        f"preprocessed with 'scale' (x * 2/255 - 1)")
    if isinstance(x_uint8, torch.Tensor):
        x_uint8 = x_uint8.detach().cpu().numpy()
    x_uint8 = np.asarray(x_uint8)
    shape = input_shape or tuple(x_uint8.shape[1:])
    packed = to_packed(artifact_or_model, input_shape=shape)
    logits = packed.forward(x_uint8, batch_size=batch_size)
    return logits if return_logits else logits.argmax(1)


# ---------------------------------------------------------------- pack

def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _check_shape(given: tuple[int, ...], trained: tuple[int, ...]) -> tuple[int, ...]:
    """``--input-shape`` must hold as many values as the shape the model was trained on."""
    if int(np.prod(given)) != int(np.prod(trained)):
        raise ValueError(f"--input-shape {','.join(map(str, given))} has {int(np.prod(given))} values; "
                         f"the model was trained on {','.join(map(str, trained))} ({int(np.prod(trained))} values)")
    return tuple(given)


def pack_main(argv: list[str]) -> int:
    from .. import commandline

    args = commandline.parse(commandline.pack_parser(), argv)
    args.source, args.output = args.target, args.out
    src = Path(args.source)
    out = Path(args.output) if args.output else (src / "model.bnn" if src.is_dir() else src.with_suffix(".bnn"))
    try:
        model, cfg, shape = load_torch(args.source, args.which)
        check_preprocessing(cfg)
        if args.input_shape:
            shape = _check_shape(args.input_shape, shape)
        try:
            packed = PackedModel.from_torch(model, shape, meta=_meta(src, cfg))
        except RuntimeError as err:  # a shape the layers cannot take
            raise ValueError(f"the model does not take input shape {shape}: {str(err).splitlines()[0]}") from None
        float_bytes = artifact.float_weight_bytes(model)
        packed.meta["float32_weight_bytes"] = float_bytes
        artifact.save(packed, out)  # a multi-bit net with a module the file cannot describe: PackError
    except _user_errors() as err:  # PackError is a ValueError
        print(f"bnnrepro: error: pack: {err}", file=sys.stderr)
        return 2
    disk = out.stat().st_size
    if isinstance(packed, MultiBitModel):
        from .multibit_artifact import stage_rows

        print(f"{'layer':<10} {'kind':<6} {'bits':<6} {'shape':<22} {'stored':>12}")
        for r in stage_rows(packed):
            print(f"{r['name']:<10} {r['kind']:<6} {r['bits']:<6} {r['shape']:<22} {_size(r['bytes']):>12}")
    else:
        print(f"{'layer':<10} {'kind':<6} {'input':<6} {'shape':<22} {'packed bits':>12}")
        for L in packed.layers:
            print(f"{L.name:<10} {L.kind:<6} {L.input:<6} {str(L.in_shape) + '->' + str(L.out_channels):<22} "
                  f"{_size(L.weights.bits.nbytes):>12}")
    print(f"wrote {out}: {_size(disk)} on disk; float32 weights {_size(float_bytes)}; "
          f"ratio 1/{float_bytes / disk:.1f} ({100.0 * disk / float_bytes:.2f}%)")
    return 0


# ---------------------------------------------------------------- compare

def _layer_out_name(layer, modules: dict) -> str:
    return [n for n in layer.names if not isinstance(modules[n], nn.Flatten)][-1]


@torch.no_grad()
def compare(model: nn.Module, packed: PackedModel, x_uint8: np.ndarray, batch_size: int = 500) -> list[dict]:
    """Layer-by-layer comparison of the float model and the packed engine on ``x_uint8``.

    Per layer: mismatching pre-activations (exact integers; the first layer's ``y/255`` against
    torch's float32 output, max abs difference), mismatching output signs when both run freely,
    and when the packed layer gets torch's own input (teacher forcing: isolates the layer)."""
    if isinstance(packed, MultiBitModel):
        return packed.compare(model, x_uint8, batch_size)
    model.eval()
    modules = dict(model.named_modules())
    want = set()
    for L in packed.layers:
        want.add(L.name)
        want.add(_layer_out_name(L, modules))
    rows = [dict(layer=L.name, kind=L.kind, n_pre=0, pre_mismatch=0, pre_maxdiff=0.0, n_out=0,
                 out_mismatch=0, forced_mismatch=0) for L in packed.layers]
    agree = 0
    for s in range(0, len(x_uint8), batch_size):
        xb = np.ascontiguousarray(x_uint8[s:s + batch_size])
        seen = {}
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach()))
                 for n in want]
        try:
            logits_t = model(torch.from_numpy(xb).to(torch.float32).mul(2.0 / 255.0).sub(1.0))
        finally:
            for h in hooks:
                h.remove()
        trace = packed.trace(xb)
        runners = packed.runners(len(xb))
        for i, (L, y, bits) in enumerate(trace):
            r = rows[i]
            pre_t = seen[L.name]
            pre_t = pre_t.permute(0, 2, 3, 1) if pre_t.dim() == 4 else pre_t
            yv = torch.from_numpy(np.asarray(y[..., :L.out_channels], np.float64))
            if L.input == "planes":
                yv = yv / 255.0
            diff = (yv - pre_t.to(torch.float64)).abs()
            r["n_pre"] += diff.numel()
            r["pre_mismatch"] += int((diff > (1e-4 if L.input == "planes" else 0)).sum())
            r["pre_maxdiff"] = max(r["pre_maxdiff"], float(diff.max()))
            if L.last:
                logits_p = L.affine(np.asarray(y, np.float32))
                r["n_out"] += logits_p.numel()
                r["out_mismatch"] += int((logits_p != logits_t).sum())
                r["forced_mismatch"] = None
                agree += int((logits_p.argmax(1) == logits_t.argmax(1)).sum())
                continue
            out_t = seen[_layer_out_name(L, modules)].reshape(bits.shape).numpy()
            r["n_out"] += bits.size
            r["out_mismatch"] += int((bits != out_t).sum())
            if i == 0:
                forced = bits
            else:
                prev = trace[i - 1][0]
                src = seen[_layer_out_name(prev, modules)].numpy()
                pad = L.weights.pad if L.kind == "conv" else 0
                forced = unpack_activation(runners[i](pack_activation(src, L, pad)), L, runners[i])
            r["forced_mismatch"] += int((forced != out_t).sum())
    for r in rows:
        r["n_images"] = len(x_uint8)
    rows.append(dict(layer="predictions", kind="", n_out=len(x_uint8), out_mismatch=len(x_uint8) - agree))
    return rows


def _test_images(cfg, root: str | None, split: str, n: int | None):
    from .. import data as datasets

    splits = datasets.load(cfg.data.name, root or cfg.data.root, download=False,
                           val_size=cfg.data.get("val_size", None), preprocessing=cfg.data.preprocessing)
    x = getattr(splits, f"{split}_x")
    return (x[:n] if n else x).numpy()


def compare_main(argv: list[str]) -> int:
    from .. import commandline

    args = commandline.parse(commandline.compare_parser(), argv)
    args.source, args.data_root = args.target, args.overrides.get("data.root")
    try:
        model, cfg, shape = load_torch(args.source, args.which)
        check_preprocessing(cfg)
        packed = artifact.load(args.artifact) if args.artifact else PackedModel.from_torch(model, shape)
        if args.random is not None:
            x = np.random.default_rng(0).integers(0, 256, (args.random,) + tuple(shape), dtype=np.uint8)
        else:
            x = _test_images(cfg, args.data_root, args.split, args.n)
    except _user_errors() as err:
        print(f"bnnrepro: error: compare: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = compare(model, packed, x)
    print_compare(rows)
    print(f"({len(x)} images, {time.perf_counter() - t0:.1f} s)")
    if args.json:
        commandline.write_json(json.dumps(rows, indent=2), args.json)
    return 0 if rows[-1]["out_mismatch"] == 0 else 1


def print_compare(rows: list[dict], file=None) -> None:
    file = file or sys.stdout
    print(f"{'layer':<12} {'kind':<6} {'pre-act differ':>16} {'max |diff|':>11} {'outputs differ':>16} "
          f"{'given torch input':>18}", file=file)
    first = None
    for r in rows[:-1]:
        forced = "-" if r["forced_mismatch"] is None else f"{r['forced_mismatch']}"
        print(f"{r['layer']:<12} {r['kind']:<6} {r['pre_mismatch']:>8}/{r['n_pre']:<7} {r['pre_maxdiff']:>11.3g} "
              f"{r['out_mismatch']:>8}/{r['n_out']:<7} {forced:>18}", file=file)
        if first is None and r["out_mismatch"]:
            first = r["layer"]
    p = rows[-1]
    print(f"predictions differ on {p['out_mismatch']}/{p['n_out']} images", file=file)
    print("first layer that differs: " + (first or "none (identical outputs at every layer)"), file=file)


# ---------------------------------------------------------------- bench

def bench_main(argv: list[str]) -> int:
    from . import bench

    return bench.main(argv)
