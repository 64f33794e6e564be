"""A bit-aware model summary (larq's ``larq.models.summary``, for bnnrepro's torch models).

Per layer: input bits, weight bits, parameters by precision, memory, and multiply-accumulates
(MACs) by precision; totals, the float32-equivalent size, the compression ratio and, when the
model packs, the size of the actual ``bnnrepro pack`` artifact.

Conventions (larq's where it has one):

* a layer's *input bits* are its ``input_quantizer``'s precision when that quantizes, else the
  precision of the last activation quantizer before it (max-pooling, dropout, flatten and padding
  keep it; anything else, e.g. BatchNorm, makes it float). The network input counts as float
  (32): the models see pixels scaled to [-1, 1]. An inception block's branches are listed one after
  another, each starting from the block's input bits;
* *weight bits*: the ``weight_quantizer``'s precision; biases and BatchNorm parameters are float32;
* a MAC's precision is the larger of its input's and its weight's bits; a conv layer does
  ``weight.numel() * H_out * W_out`` MACs per sample, a dense layer ``weight.numel()``;
* memory counts parameters at their bits plus the float buffers inference needs (BatchNorm running
  statistics, listed apart as ``buffers``); the float32 equivalent stores all of those in 32 bits.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..models import Inception, stages

KEEPS_BITS = (nn.MaxPool2d, nn.Dropout, nn.Flatten, nn.ConstantPad2d, nn.ZeroPad2d, nn.Identity)
FLOAT = 32


def precision_name(bits: int) -> str:
    return {1: "binary", FLOAT: "float32"}.get(bits, f"{bits}-bit")


@dataclass
class LayerStats:
    name: str
    kind: str
    in_bits: int | None = None
    w_bits: int | None = None
    out_shape: tuple | None = None
    params: Counter = field(default_factory=Counter)   # bits -> parameter count
    buffers: int = 0                                    # float32 buffers needed at inference
    macs: Counter = field(default_factory=Counter)     # precision -> MACs per sample

    @property
    def memory_bits(self) -> int:
        return sum(b * n for b, n in self.params.items()) + FLOAT * self.buffers


@dataclass
class ModelSummary:
    title: str
    input_shape: tuple
    layers: list[LayerStats]
    packed_bytes: int | None = None
    packed_note: str = ""
    notes: list[str] = field(default_factory=list)

    def params(self) -> Counter:
        total = Counter()
        for layer in self.layers:
            total.update(layer.params)
        return total

    def macs(self) -> Counter:
        total = Counter()
        for layer in self.layers:
            total.update(layer.macs)
        return total

    @property
    def buffers(self) -> int:
        return sum(layer.buffers for layer in self.layers)

    @property
    def memory_bytes(self) -> float:
        return sum(layer.memory_bits for layer in self.layers) / 8

    @property
    def float32_bytes(self) -> float:
        return (sum(self.params().values()) + self.buffers) * FLOAT / 8

    @property
    def compression(self) -> float:
        return self.float32_bytes / self.memory_bytes if self.memory_bytes else float("nan")

    @property
    def binary_mac_fraction(self) -> float:
        macs = self.macs()
        total = sum(macs.values())
        return macs.get(1, 0) / total if total else float("nan")

    def to_dict(self) -> dict:
        name = lambda c: {precision_name(b): n for b, n in sorted(c.items())}  # noqa: E731
        return {
            "title": self.title, "input_shape": list(self.input_shape),
            "layers": [{"name": l.name, "kind": l.kind, "input_bits": l.in_bits, "weight_bits": l.w_bits,
                        "output_shape": list(l.out_shape) if l.out_shape else None, "params": name(l.params),
                        "buffers": l.buffers, "memory_bytes": l.memory_bits / 8, "macs": name(l.macs)}
                       for l in self.layers],
            "params": name(self.params()), "buffers": self.buffers, "memory_bytes": self.memory_bytes,
            "float32_bytes": self.float32_bytes, "compression": self.compression, "macs": name(self.macs()),
            "binary_mac_fraction": self.binary_mac_fraction, "packed_bytes": self.packed_bytes,
            "packed_note": self.packed_note, "notes": self.notes,
        }


# ------------------------------------------------------------------------------------ walking

def _is_activation_quantizer(m: nn.Module) -> bool:
    return hasattr(m, "precision") and not any(True for _ in m.parameters()) and not hasattr(m, "weight")


def _quantized_weights(m: nn.Module) -> dict[str, int]:
    """Parameter name -> bits for weights passed through ``m.weight_quantizer``."""
    wq = getattr(m, "weight_quantizer", None)
    if wq is None:
        return {}
    bits = int(getattr(wq, "precision", FLOAT))
    return {n: bits for n, p in m.named_parameters() if n == "weight" or n.startswith("weight_")}


@torch.no_grad()
def _output_shapes(model: nn.Module, layers, input_shape) -> tuple[dict, str | None]:
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(
        n, tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((2,) + tuple(input_shape)))
        return shapes, None
    except Exception as err:  # e.g. a language model, which takes tokens
        return shapes, f"a forward pass on a zero input of shape {tuple(input_shape)} failed " \
                       f"({type(err).__name__}), so conv MACs and output shapes are unknown"
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _branch_starts(model: nn.Module) -> dict[int, int]:
    """id of the first stage of each parallel branch (an Inception block's) -> the branch's index:
    every branch starts from the block's input, so from the bits the block's input had."""
    starts = {}
    for block in model.modules():
        if isinstance(block, Inception):
            for i, branch in enumerate(block.branches):
                starts[id(stages(branch, branches=True)[0][1])] = i
    return starts


def _layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], bool]:
    """The stages to list (an Inception block's branches walked), and whether the model is a
    feed-forward Sequential. Another model (a language model) lists its modules that hold
    parameters, in order; it takes tokens, so no forward pass on a zero input is tried."""
    layers = stages(model, branches=True)
    if len(layers) == 1 and layers[0][1] is model and any(True for _ in model.children()):
        return [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))], False
    return layers, True


def _recurrent_macs(layer: LayerStats, m: nn.Module, in_bits: int) -> int:
    """A recurrent layer (W_ih x + W_hh h per token): MACs per token at each product's precision;
    the bits of the hidden state it passes on."""
    act = getattr(m, "act_quantizer", None)
    h_bits = int(getattr(act, "precision", FLOAT)) if act is not None else FLOAT
    layer.in_bits, layer.w_bits = in_bits, int(getattr(m.weight_quantizer, "precision", FLOAT))
    layer.macs[max(in_bits, layer.w_bits)] += m.weight_ih.numel()
    layer.macs[max(h_bits, layer.w_bits)] += m.weight_hh.numel()
    return h_bits


def profile(model: nn.Module, input_shape: tuple, title: str = "") -> ModelSummary:
    layers, feed_forward = _layers(model)
    if feed_forward:
        shapes, failure = _output_shapes(model, layers, input_shape)
    else:
        shapes, failure = {}, (f"{type(model).__name__} takes token ids: MACs are per token, output shapes "
                               "are not shown")
    summary = ModelSummary(title or type(model).__name__, tuple(input_shape), [])
    if failure:
        summary.notes.append(failure)
    bits = block_bits = FLOAT
    starts = _branch_starts(model)
    for name, m in layers:
        if id(m) in starts:
            if starts[id(m)] == 0:
                block_bits = bits
            bits = block_bits
        layer = LayerStats(name, type(m).__name__, out_shape=shapes.get(name))
        quantized = _quantized_weights(m)
        for pname, p in m.named_parameters():
            layer.params[quantized.get(pname, FLOAT)] += p.numel()
        layer.buffers = sum(b.numel() for b in m.buffers() if b.is_floating_point())
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            iq = getattr(m, "input_quantizer", None)
            iq_bits = int(getattr(iq, "precision", FLOAT)) if iq is not None else FLOAT
            layer.in_bits = iq_bits if iq_bits < FLOAT else bits
            layer.w_bits = quantized.get("weight", FLOAT)
            pixels = None
            if isinstance(m, nn.Linear):
                pixels = 1
            elif layer.out_shape is not None:
                pixels = layer.out_shape[-1] * layer.out_shape[-2]
            if pixels is not None:
                layer.macs[max(layer.in_bits, layer.w_bits)] += m.weight.numel() * pixels
            bits = FLOAT
        elif hasattr(m, "weight_ih") and hasattr(m, "weight_hh") and hasattr(m, "weight_quantizer"):
            bits = _recurrent_macs(layer, m, bits)
        elif _is_activation_quantizer(m):
            bits = int(m.precision)
        elif not isinstance(m, KEEPS_BITS):
            bits = FLOAT
        summary.layers.append(layer)
    return summary


# ------------------------------------------------------------------------------------ packing

def packed_size(model: nn.Module, input_shape: tuple, preprocessing: str | None = "scale") -> tuple[int | None, str]:
    """Bytes of the ``.bnn`` artifact ``bnnrepro pack`` would write, measured by writing it to a
    temporary folder; None and why when the model does not pack."""
    try:
        from ..kernels import artifact
        from ..kernels.engine import PackedModel, PackError
    except ImportError as err:
        return None, f"the packed engine is not available ({err})"
    if preprocessing not in (None, "scale"):
        return None, f"does not pack: the packed engine takes data.preprocessing=scale, not {preprocessing}"
    try:
        packed = PackedModel.from_torch(model.eval(), tuple(input_shape))
        with tempfile.TemporaryDirectory() as tmp:
            path = artifact.save(packed, Path(tmp) / "model.bnn")
            size = path.stat().st_size
    except PackError as err:
        return None, f"does not pack: {err}"
    return size, f"measured: the `bnnrepro pack` file; its weight bits alone {_size(packed.weight_bytes())}"


# ------------------------------------------------------------------------------------ text

def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024 or unit == "MiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} GiB"


def _count(n: int) -> str:
    return f"{n:,}" if n else ""


def format_text(s: ModelSummary) -> str:
    pbits = sorted(s.params())
    mbits = sorted(s.macs())
    heads = (["layer", "kind", "in bits", "w bits", "output"] + [f"params {precision_name(b)}" for b in pbits]
             + ["buffers", "memory"] + [f"MACs {precision_name(b)}" for b in mbits])
    rows = []
    for l in s.layers:
        rows.append([l.name, l.kind, "" if l.in_bits is None else str(l.in_bits),
                     "" if l.w_bits is None else str(l.w_bits), "x".join(map(str, l.out_shape)) if l.out_shape else ""]
                    + [_count(l.params.get(b, 0)) for b in pbits] + [_count(l.buffers),
                       _size(l.memory_bits / 8) if l.memory_bits else ""]
                    + [_count(l.macs.get(b, 0)) for b in mbits])
    params, macs = s.params(), s.macs()
    rows.append(["total", "", "", "", ""] + [_count(params.get(b, 0)) for b in pbits]
                + [_count(s.buffers), _size(s.memory_bytes)] + [_count(macs.get(b, 0)) for b in mbits])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    left = {0, 1}

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(heads))
    lines = [s.title, f"input {'x'.join(map(str, s.input_shape))}", rule, fmt(heads), rule]
    lines += [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1]), rule]
    total_params = sum(params.values())
    by = ", ".join(f"{precision_name(b)} {n:,}" for b, n in sorted(params.items()))
    lines.append(f"parameters        {total_params:,} ({by}); float buffers {s.buffers:,} (BatchNorm statistics)")
    lines.append(f"memory            {_size(s.memory_bytes)}; float32 equivalent {_size(s.float32_bytes)}; "
                 f"compression x{s.compression:.2f}")
    total_macs = sum(macs.values())
    if total_macs:
        by = ", ".join(f"{precision_name(b)} {n:,} ({100 * n / total_macs:.1f}%)" for b, n in sorted(macs.items()))
        lines.append(f"MACs per sample   {total_macs:,} ({by})")
    if s.packed_bytes is not None:
        lines.append(f"packed artifact   {_size(s.packed_bytes)}, x{s.float32_bytes / s.packed_bytes:.2f} smaller "
                     f"than float32 ({s.packed_note})")
    elif s.packed_note:
        lines.append(f"packed artifact   none: {s.packed_note}")
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


def to_json(s: ModelSummary) -> str:
    return json.dumps(s.to_dict(), indent=2)
