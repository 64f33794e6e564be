"""``bnnrepro bench --train``: a training step of each protocol against a float net of its shape.

Each protocol's binary net is built from its preset exactly as ``bnnrepro train`` builds it (model,
optimizer with its LR groups, latent clipping, loss, ``train.precision``) and steps on random data of
the dataset's shape. Its float twin has the same layer shapes with plain float layers (no
quantizers, torch BatchNorm, hard-tanh, fused Adam; the preset's dropout), timed at fp32 and, where the device has bf16
matrix hardware, under bf16 autocast; the goal compares the binary step with the fastest of those.
Steps are timed in alternating blocks after warm-up (median of repeats), all in one process, on the
CPU (``run(device=...)`` takes another device; the command line has no switch for it yet).

Also per protocol: the step split into forward, backward, optimizer step and clipping; the fp32
GEMM floor (the MLP's matmuls alone, timed at the same shapes); and with ``--profile`` torch.profiler's
self time grouped into GEMMs, quantizers, BN, optimizer, clipping, dropout and the rest.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

TRAIN_EXAMPLES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "svhn": 73257}
INPUT_SHAPE = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32)}
NUM_CLASSES = 10


@dataclass(frozen=True)
class Protocol:
    id: str
    overrides: tuple[str, ...]
    what: str


PROTOCOLS = (
    Protocol("quick-mlp", ("+paper=bnn", "scale=quick"), "BNN MNIST MLP at scale=quick (784-3x1024-10, Adam)"),
    Protocol("torch7-mlp", ("+experiment=bnn_mnist_torch7",),
             "BNN Torch7 MNIST (784-3x2048-10, shift-BN, shift-AdaMax, stochastic sign)"),
    Protocol("theano-mlp", ("+paper=bnn",), "BNN Theano MNIST (784-3x4096-10, BN, Adam, dropout)"),
    Protocol("convnet-quick", ("+experiment=bnn_cifar10_theano", "scale=quick"),
             "BNN ConvNet CIFAR-10 at scale=quick (width x0.25)"),
)
# the float twin: the same preset with float layers and the common float recipe
FLOAT_OVERRIDES = ("quant=float", "model.batchnorm=standard", "optim=adam", "train.loss=cross_entropy")

# torch.profiler op names -> the closing note's categories (first match wins; the rest is "other")
CATEGORIES = (
    ("GEMM/conv", ("aten::mm", "aten::_int_mm", "aten::addmm", "aten::bmm", "aten::convolution", "aten::_convolution",
                   "aten::mkldnn_convolution", "aten::convolution_backward", "aten::matmul", "aten::linear")),
    # PlusMinusOneLinear's own time is its latent's binarization (its GEMMs are child ops)
    ("quantizers", ("SteSign", "PlusMinusOneLinear", "aten::sign", "aten::hardtanh_backward", "aten::rand", "aten::uniform_",
                    "Ste", "aten::round", "aten::copysign")),
    ("BN and AP2's bit operations", ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::batch_norm", "_ShiftBN",
            "aten::bitwise_", "aten::clamp_max_")),
    ("optimizer", ("Optimizer.step", "aten::_fused_adam", "aten::_fused_sgd", "aten::_foreach",
                   "Optimizer.zero_grad")),
    ("clamp_ (latent clip, hard-sigmoid)", ("aten::clamp_",)),
    ("dropout", ("aten::bernoulli_", "aten::native_dropout", "aten::dropout", "_SeededDropout")),
)


def _category(name: str) -> str:
    for cat, prefixes in CATEGORIES:
        if any(name.startswith(p) for p in prefixes):
            return cat
    return "other"


class Stepper:
    """One protocol's model, optimizer and batch: ``step()`` is one training step."""

    def __init__(self, overrides, device, precision: str | None = None, amp_bf16: bool = False):
        from ..compose import compose
        from ..config import validate
        from ..nn import precision as matmul_precision
        from ..optim import LatentWeightClipper, build_optimizer
        from .allocator import keep_freed_memory
        from .factory import build_loss, build_model

        cfg = compose(list(overrides) + ([f"train.precision={precision}"] if precision else []))
        validate(cfg)
        self.cfg = cfg
        shape = INPUT_SHAPE[cfg.data.name]
        self.model = build_model(cfg, shape, NUM_CLASSES).to(device)
        self.precision = matmul_precision.configure(self.model, cfg.train.precision, device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.clip = LatentWeightClipper(self.model, cfg.optim.clip_latent, self.optimizer)
        self.loss_fn = build_loss(cfg.train.loss)
        g = torch.Generator().manual_seed(0)
        b = int(cfg.train.batch_size)
        self.x = torch.rand((b, *shape), generator=g).to(device) * 2 - 1
        self.y = torch.randint(0, NUM_CLASSES, (b,), generator=g).to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_bf16)
        self.device = device
        self.model.train()
        keep_freed_memory()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self) -> None:
        with self.autocast:
            out = self.model(self.x)
        loss = self.loss_fn(out.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.clip()
        self._sync()

    def phases(self, repeats: int) -> dict:
        """Median ms of forward (with the loss), backward, optimizer step and clipping."""
        names = ("forward", "backward", "optimizer", "clipping")
        times: list[list[float]] = [[] for _ in names]
        for _ in range(repeats):
            marks = [time.perf_counter()]
            with self.autocast:
                out = self.model(self.x)
            loss = self.loss_fn(out.float(), self.y)
            self._sync()
            marks.append(time.perf_counter())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._sync()
            marks.append(time.perf_counter())
            self.optimizer.step()
            self._sync()
            marks.append(time.perf_counter())
            self.clip()
            self._sync()
            marks.append(time.perf_counter())
            for ts, a, b in zip(times, marks, marks[1:]):
                ts.append(b - a)
        return {k: 1e3 * float(np.median(ts)) for k, ts in zip(names, times)}

    def profile(self, steps: int = 3) -> dict:
        """Self time per category (ms per step) from torch.profiler, and what it did not see."""
        from torch.profiler import ProfilerActivity, profile

        wall = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                self.step()
        wall = (time.perf_counter() - wall) / steps
        cats: dict[str, float] = {}
        for ev in prof.key_averages():
            cat = _category(ev.key)
            cats[cat] = cats.get(cat, 0.0) + ev.self_cpu_time_total / 1e3 / steps
        seen = sum(cats.values())
        cats["Python and framework (wall - profiled self time)"] = max(0.0, 1e3 * wall - seen)
        return {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}

    def gemm_floor(self, repeats: int) -> float | None:
        """ms of the fp32 matmuls of one step of an MLP (forward, input and weight gradients; no input
        gradient for the first layer), each timed alone; None for conv nets."""
        from ..nn import QuantConv2d, QuantLinear

        if any(isinstance(m, QuantConv2d) for m in self.model.modules()):
            return None
        from ..timing import timed

        total = 0.0
        b = self.x.shape[0]
        for i, m in enumerate(mm for mm in self.model.modules() if isinstance(mm, QuantLinear)):
            x = torch.randn(b, m.in_features, device=self.device)
            w = torch.randn(m.out_features, m.in_features, device=self.device)
            g = torch.randn(b, m.out_features, device=self.device)
            fns = [lambda: x @ w.t(), lambda: g.t() @ x] + ([lambda: g @ w] if i else [])
            total += sum(s["median_s"] for s in timed(fns, repeats, warmup=1, block=3))
        return 1e3 * total


def step_flops(model: torch.nn.Module, batch: int) -> float | None:
    """Multiply-adds x 2 of one MLP training step (forward and the two gradient matmuls)."""
    from ..nn import QuantConv2d, QuantLinear

    if any(isinstance(m, QuantConv2d) for m in model.modules()):
        return None
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    return float(sum(2 * batch * m.in_features * m.out_features * (3 if i else 2) for i, m in enumerate(layers)))


def run(protocols=PROTOCOLS, repeats: int = 7, profile: bool = True, device: str = "cpu") -> dict:
    from ..timing import environment, timed
    from ..nn.precision import bf16_hardware

    dev = torch.device(device)
    env = environment()
    env["bf16_hardware"] = bf16_hardware(dev)
    rows = []
    for p in protocols:
        bnn = Stepper(p.overrides, dev)
        flt = Stepper(tuple(p.overrides) + FLOAT_OVERRIDES, dev)
        steppers = {"bnn": bnn, "float_fp32": flt}
        if env["bf16_hardware"]:
            steppers["float_bf16"] = Stepper(tuple(p.overrides) + FLOAT_OVERRIDES, dev, amp_bf16=True)
            if bnn.precision["used"] != "bf16":  # the BNN's own fastest path: train.precision=bf16
                bnn_bf16 = Stepper(p.overrides, dev, precision="bf16")
                if bnn_bf16.precision["bf16_layers"]:
                    steppers["bnn_bf16"] = bnn_bf16
        stats = dict(zip(steppers, timed([s.step for s in steppers.values()], repeats, warmup=2, block=2)))
        ms = {k: 1e3 * v["median_s"] for k, v in stats.items()}
        floats = {k: v for k, v in ms.items() if k.startswith("float")}
        fastest = min(floats, key=floats.get)
        bnns = {k: v for k, v in ms.items() if k.startswith("bnn")}
        fastest_bnn = min(bnns, key=bnns.get)
        cfg = bnn.cfg
        n_train = TRAIN_EXAMPLES[cfg.data.name] - int(cfg.data.val_size or 0)
        steps = -(-n_train // int(cfg.train.batch_size))
        flops = step_flops(bnn.model, int(cfg.train.batch_size))
        floor = bnn.gemm_floor(max(3, repeats // 2))
        row = {"protocol": p.id, "what": p.what, "overrides": list(p.overrides),
               "batch": int(cfg.train.batch_size), "n_params": sum(x.numel() for x in bnn.model.parameters()),
               "optimizer": cfg.optim.name, "precision": bnn.precision,
               "bnn_ms": ms["bnn"], "bnn_iqr_ms": 1e3 * stats["bnn"]["iqr_s"],
               "bnn_bf16_ms": ms.get("bnn_bf16"),
               "bnn_bf16_layers": steppers["bnn_bf16"].precision["bf16_layers"] if "bnn_bf16" in ms else None,
               "float_fp32_ms": ms["float_fp32"], "float_bf16_ms": ms.get("float_bf16"),
               "fastest_bnn": fastest_bnn, "fastest_float": fastest,
               "ratio_to_fastest_float": bnns[fastest_bnn] / floats[fastest],
               "steps_per_epoch": steps, "train_examples": n_train,
               "bnn_epoch_s": bnns[fastest_bnn] * steps / 1e3, "float_epoch_s": floats[fastest] * steps / 1e3,
               "gemm_floor_ms": floor, "gemm_fraction": floor / ms["bnn"] if floor else None,
               "bnn_gflops": flops / ms["bnn"] / 1e6 if flops else None,
               "phases_ms": bnn.phases(max(3, repeats // 2))}
        if profile:
            row["profile_ms"] = bnn.profile()
        rows.append(row)
        del bnn, flt, steppers
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "environment": env,
            "repeats": repeats, "device": device, "rows": rows}


def _f(v, fmt="{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def render(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Training speed: a BNN step against a float step of the same shape",
        "",
        f"Generated by `{result['command']}` on {result['date']}. Median of {result['repeats']} steps per "
        "net (alternating blocks of 2 after warm-up, one process, random data of the dataset's shape, "
        "the preset's batch size). The float twin has the same layer shapes with float layers, torch "
        "BatchNorm, hard-tanh and fused Adam (and the preset's dropout, the project's seeded one as in "
        "the BNN); its bf16 column (autocast) is timed only where the "
        "hardware multiplies bf16 natively, and so is the BNN's own bf16 column (`train.precision=bf16`: "
        "its ±1 layers' forward an exact int8 GEMM, its backward bf16, forward outputs bit-identical "
        "to fp32's). The ratio and the "
        "epochs take each side's fastest path. Epoch = steps of the preset's training split x the step "
        "(no evaluation).",
        "",
        f"- CPU: {env['cpu']} (LLVM: {env['llvm_cpu']}); flags: "
        + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in env["flags"].items())
        + f"; bf16 matrix hardware: {env.get('bf16_hardware') or 'none'}",
        f"- threads: torch {env['torch_threads']}, numba {env['numba_threads']}; torch {env['torch']}; "
        f"load average at the end: {env['loadavg']}",
        "",
        "| protocol | batch | params | BNN ms/step | BNN bf16 ms | float fp32 ms | float bf16 ms "
        "| fastest BNN / fastest float | BNN epoch s | float epoch s | GEMM floor ms | GEMM share | BNN GFLOP/s "
        "| ±1 matmuls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['protocol']} | {r['batch']} | {r['n_params'] / 1e6:.1f} M | {r['bnn_ms']:.1f} "
            f"| {_f(r.get('bnn_bf16_ms'))} "
            f"| {r['float_fp32_ms']:.1f} | {_f(r['float_bf16_ms'])} | {r['ratio_to_fastest_float']:.2f}x "
            f"| {r['bnn_epoch_s']:.1f} | {r['float_epoch_s']:.1f} | {_f(r['gemm_floor_ms'])} "
            f"| {_f(r['gemm_fraction'] and 100 * r['gemm_fraction'], '{:.0f} %')} | {_f(r['bnn_gflops'], '{:.0f}')} "
            f"| {r['precision']['used']} |")
    lines += ["", "## Where a BNN step goes", "",
              "| protocol | forward ms | backward ms | optimizer ms | clipping ms |", "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ph = r["phases_ms"]
        lines.append(f"| {r['protocol']} | {ph['forward']:.1f} | {ph['backward']:.1f} | {ph['optimizer']:.1f} "
                     f"| {ph['clipping']:.1f} |")
    if any("profile_ms" in r for r in result["rows"]):
        cats = []
        for r in result["rows"]:
            cats += [c for c in r.get("profile_ms", {}) if c not in cats]
        lines += ["", "torch.profiler self time per step (ms; 3 profiled steps, the profiler's own cost included):",
                  "", "| protocol | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        for r in result["rows"]:
            prof = r.get("profile_ms", {})
            lines.append(f"| {r['protocol']} | " + " | ".join(_f(prof.get(c)) for c in cats) + " |")
    lines += ["", "Protocols: " + "; ".join(f"`{r['protocol']}`: {r['what']} (`{' '.join(r['overrides'])}`)"
                                           for r in result["rows"]) + ".", ""]
    return "\n".join(lines)


def select(ids: str | None) -> tuple[Protocol, ...]:
    """The protocols of a comma list (None: all); an unknown id raises ValueError naming the allowed."""
    if not ids:
        return PROTOCOLS
    known = [p.id for p in PROTOCOLS]
    wanted = [s.strip() for s in ids.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
    return tuple(p for p in PROTOCOLS if p.id in wanted)


def summary_line(row: dict) -> str:
    fastest = row["float_bf16_ms"] if row["fastest_float"] == "float_bf16" else row["float_fp32_ms"]
    bnn = row["bnn_bf16_ms"] if row.get("fastest_bnn") == "bnn_bf16" else row["bnn_ms"]
    share = _f(row["gemm_fraction"] and 100 * row["gemm_fraction"], "{:.0f} %")
    return (f"{row['protocol']:<14} BNN {bnn:8.1f} ms  fastest float {fastest:8.1f} ms  "
            f"{row['ratio_to_fastest_float']:5.2f}x  epoch {row['bnn_epoch_s']:7.1f} s  GEMM share {share}")


def write(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "train_speed.md", out_dir / "train_speed.json"
    md.write_text(render(result))
    js.write_text(json.dumps(result, indent=1) + "\n")
    return [md, js]
