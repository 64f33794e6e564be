"""Sweeps: load a trained run once, distort a copy of its weights level by level and draw by draw
(``weights``: which weights, see weights.py), evaluate each distorted net on the whole test set
(evaluation.py). The checkpoint is only read, never written. Deterministic levels (the clean
net, power, clip, binarize at p = 0 or 1) are evaluated once, random ones ``draws`` times.

Every draw row carries ``trained_error`` (the trained net's own error on the same test set: what a
distortion costs is measured against it) and ``noop``: whether the distorted net computes with
exactly the trained net's weights (a distortion that is the identity for this net by construction,
such as binarizing a sign-trained net's effective weights). Claims never count such a row.
"""
from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import runs
from ..train import load_model
from .distortions import DISTORTIONS, DistortionOptions, get_distortion
from .effective_bits import SIGNALS, effective_bits
from .evaluation import batch_norms, load_test_set, recalibrate_bn
from .weights import WEIGHT_MODES, DistortableCopy, projection_label


ENGINES = ("torch", "packed")


@dataclass(frozen=True)
class SweepOptions:
    levels: tuple[float, ...] | dict | None = None  # None: each distortion's default levels; a dict: per noise
    draws: int = 5                            # independent draws per random level
    seed: int = 0
    weights: str = "hidden"
    distortion: DistortionOptions = field(default_factory=DistortionOptions)
    signal: str = "variance"                  # effective bits: signal power = var(W) or mean(W^2)
    batch_size: int = 2000
    which: str = "best"                       # best or last checkpoint of a run directory
    data_root: str | None = None              # None: the root the run was trained with
    progress: bool = True
    device: str = "cpu"
    bn_recalibrate: int = 0                   # re-estimate BN statistics on this many training images
    engine: str = "torch"                     # torch | packed (the .bnn engine's weight bits; bitflip only)

    def __post_init__(self):
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"--draws {self.draws!r} must be a positive integer")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"--weights {self.weights!r} is unknown; allowed: {', '.join(WEIGHT_MODES)}")
        if self.signal not in SIGNALS:
            raise ValueError(f"--signal {self.signal!r} is unknown; allowed: {', '.join(SIGNALS)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size} must be a positive integer")
        if self.bn_recalibrate < 0:
            raise ValueError(f"--bn-recalibrate {self.bn_recalibrate} must be >= 0")
        if self.which not in ("best", "last"):
            raise ValueError(f"--which {self.which!r} is unknown; allowed: best, last")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine {self.engine!r} is unknown; allowed: {', '.join(ENGINES)}")
        if self.engine == "packed" and (self.weights != "effective" or self.bn_recalibrate):
            raise ValueError("--engine packed distorts the packed net's weight bits, its effective weights: "
                             "use it with --weights effective and without --bn-recalibrate")


def draw_seed(seed: int, noise: str, level: float, draw: int) -> int:
    """A draw's RNG seed, a function of (seed, noise, level, draw) alone: the same draws whatever the
    order, the other levels or the run (common random numbers across runs of the same shapes)."""
    entropy = [seed, zlib.crc32(noise.encode()), int(round(level * 1_000_000)) & 0xFFFFFFFF, draw]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] & (2**63 - 1))


def _run_name(path: Path) -> str:
    return path.parent.name if path.is_file() else path.name


def _trained_test_error(path: Path) -> float | None:
    return (runs.read_summary(path.parent if path.is_file() else path) or {}).get("test_error")


def _common(path: Path, cfg, opts: SweepOptions, test_size: int, projection: str, clean_error: float,
            trained_error: float) -> dict:
    """The fields every draw row of one run's sweep shares."""
    return {"run": str(path), "run_name": _run_name(path), "projection": projection,
            "experiment": cfg.get("experiment"), "train_seed": int(cfg.seed), "scale": cfg.scale.name,
            "dataset": cfg.data.name, "test_size": test_size, "weights": opts.weights,
            "sigma_scale": opts.distortion.sigma_scale, "binary_scale": opts.distortion.binary_scale,
            "clean_error": clean_error, "trained_error": trained_error,
            "trained_test_error": _trained_test_error(path), "checkpoint_which": opts.which,
            "bn_recalibrate": opts.bn_recalibrate}


def plan(noises: list[str], opts: SweepOptions) -> dict[str, list[tuple[float, int]]]:
    """Per noise, its (level, number of draws) pairs: deterministic levels are evaluated once."""
    out = {}
    if opts.engine == "packed" and set(noises) != {"bitflip"}:
        raise ValueError(f"--engine packed supports --noise bitflip only, not {', '.join(noises)}: the packed "
                         "weights are bits")
    for noise in noises:
        distortion = get_distortion(noise)
        chosen = opts.levels.get(noise) if isinstance(opts.levels, dict) else opts.levels
        levels = distortion.check_levels(chosen if chosen is not None else distortion.default_levels)
        out[noise] = [(level, opts.draws if distortion.random(level) else 1) for level in levels]
    return out


def sweep_run(path: str | Path, noises: list[str], opts: SweepOptions, cache: dict | None = None,
              position: str = "") -> list[dict]:
    """All draws of all ``noises`` for one run: one dict per (noise, level, draw)."""
    path, cache = Path(path), {} if cache is None else cache
    device = torch.device(opts.device)
    levels = plan(noises, opts)
    if opts.engine == "packed":
        return _sweep_packed(path, levels, opts, cache, position)
    model, cfg = load_model(path, which=opts.which)
    model = model.to(device)
    test = load_test_set(cfg, opts.data_root, cache, device, opts.bn_recalibrate)
    trained_error = test.error(model.eval(), opts.batch_size)
    net = DistortableCopy(model, opts.weights)
    del model
    if opts.bn_recalibrate:
        batch_norms(net.model)  # fails now, not at the first level, for a net it cannot recalibrate

    def evaluate() -> float:
        if opts.bn_recalibrate:
            recalibrate_bn(net.model, test.calibration, opts.batch_size)
        return test.error(net.model, opts.batch_size)

    common = _common(path, cfg, opts, len(test), projection_label(cfg), evaluate(), trained_error)
    rows = []
    total = sum(n for pairs in levels.values() for _, n in pairs)
    bar = tqdm(total=total, desc=f"{position}{common['run_name']}", disable=not opts.progress,
               file=sys.stderr, mininterval=0.5, leave=False)
    for noise, pairs in levels.items():
        distortion = DISTORTIONS[noise]
        for level, n_draws in pairs:
            for draw in range(n_draws):
                generator = torch.Generator(device=device).manual_seed(draw_seed(opts.seed, noise, level, draw))
                net.set(distortion, level, generator, opts.distortion)
                bits = effective_bits(noise, level, net.clean, opts.distortion, opts.signal,
                                      distorted=[m.weight.detach() for m in net.layers])
                error = evaluate()
                rows.append({**common, "noise": noise, "level": level, "draw": draw, "error": error,
                             "effective_bits": bits, "noop": net.is_trained_net()})
                bar.set_postfix_str(f"{noise} {level:g}: {error:.2f}%", refresh=False)
                bar.update()
    bar.close()
    return rows


def _sweep_packed(path: Path, levels: dict, opts: SweepOptions, cache: dict, position: str) -> list[dict]:
    """:func:`sweep_run` through the packed engine: the net packed once, its bits distorted."""
    from ..kernels import PackedModel
    from ..kernels.commands import check_preprocessing
    from ..train import load_trained
    from . import packed as engine

    model, cfg, shape = load_trained(path, which=opts.which)
    check_preprocessing(cfg)
    test = load_test_set(cfg, opts.data_root, cache, torch.device("cpu"))
    net = PackedModel.from_torch(model, tuple(shape))
    if not isinstance(net, PackedModel):  # the bit-serial engine's MultiBitModel: no sign bits to flip
        from ..errors import PackError

        raise PackError(f"{path}: --engine packed distorts the bits of W1A1 nets; this is a multi-bit (DoReFa) net "
                        f"(bit-serial engine), use --engine torch")
    x, y = test.x_uint8.numpy(), test.y.numpy()
    # the deployed net is the packed one: its own error is the reference (the torch net's, which
    # the first layer's float rounding may change by an image, stays in trained_test_error)
    clean_error = engine.error(net, x, y, opts.batch_size)
    common = _common(path, cfg, opts, len(test), projection_label(cfg) + " [packed]", clean_error, clean_error)
    rows = []
    total = sum(n for pairs in levels.values() for _, n in pairs)
    bar = tqdm(total=total, desc=f"{position}{common['run_name']} [packed]", disable=not opts.progress,
               file=sys.stderr, mininterval=0.5, leave=False)
    for noise, pairs in levels.items():
        for level, n_draws in pairs:
            for draw in range(n_draws):
                generator = torch.Generator().manual_seed(draw_seed(opts.seed, noise, level, draw))
                flipped, same, clean, new = engine.distorted(net, DISTORTIONS[noise], level, generator, opts.distortion)
                error = engine.error(flipped, x, y, opts.batch_size)
                bits = effective_bits(noise, level, clean, opts.distortion, opts.signal, distorted=new)
                rows.append({**common, "noise": noise, "level": level, "draw": draw, "error": error,
                             "effective_bits": bits, "noop": same})
                bar.update()
    bar.close()
    return rows


def sweep_runs(paths: list[Path], noises: list[str], opts: SweepOptions) -> list[dict]:
    """Every run of ``paths`` through every noise; the data of each dataset load once."""
    plan(noises, opts)  # bad levels fail before any model or data loads
    cache: dict = {}
    rows = []
    for i, path in enumerate(paths, 1):
        done = sweep_run(path, noises, opts, cache, position=f"[{i}/{len(paths)}] ")
        rows += done
        print(f"[{i}/{len(paths)}] {_run_name(Path(path))}: {done[0]['projection']}, clean error "
              f"{done[0]['clean_error']:.2f}%", file=sys.stderr, flush=True)
    return rows
