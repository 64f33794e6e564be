"""Run a whole trained BNN with the packed kernels.

``PackedModel.from_torch(model, input_shape)`` walks an ``nn.Sequential`` (eval mode) block by
block. A block is one ``QuantLinear``/``QuantConv2d`` with +-1 weights followed by any of:
Dropout (identity in eval), max-pooling, per-channel monotone modules (BatchNorm1d/2d,
ShiftBatchNorm, Hardtanh, identity quantizers) and the sign activation; ``Flatten`` between a
convolution and a dense layer is free (the dense weights are permuted to the NHWC bit layout).

* the first layer receives uint8 pixels, i.e. ``x = 2 p / 255 - 1`` (``data.scale_pm1``), and is
  computed exactly on the 8 bit-planes of ``p`` (``255 * (w . x)`` as an integer);
* hidden layers: XOR + popcount, BN + sign folded into integer thresholds (``fold``), output bits
  written straight into the next layer's (zero-bordered) input buffer;
* the last layer: exact integer dot products, then the float BatchNorm with torch's own kernel,
  so logits are bit-identical to the float model whenever the hidden bits are.

Anything else fails with :class:`PackError` naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from . import bitpack, conv as convk, fold, pool, tiles
from ..errors import PackError
from ..models import stages
from .gemm import DenseWeights, row_tables
from .walk import _is_monotone_elementwise, _is_skip, _kind, _precision, check_input


@dataclass
class Layer:
    name: str
    kind: str  # "dense" | "conv"
    input: str  # "planes" (uint8 pixels) | "bits"
    weights: object  # DenseWeights | ConvWeights
    out_channels: int
    in_shape: tuple  # (C, H, W) for conv, (K,) for dense
    out_shape: tuple  # after pooling: (O, H, W) or (O,)
    thresholds: fold.Thresholds | None = None
    affine: fold.Affine | None = None
    pool_pre: tuple | None = None  # (k, stride, pad) on integer pre-activations
    pool_post: tuple | None = None  # (k, stride) on the output bits
    names: list = field(default_factory=list)  # torch modules folded into this layer
    sign_name: str | None = None

    @property
    def fused_pool(self) -> bool:
        return (self.kind == "conv" and self.input == "bits" and self.pool_pre == (2, 2, 0)
                and self.pool_post is None)

    @property
    def last(self) -> bool:
        return self.thresholds is None


# ---------------------------------------------------------------- walking the torch model

def _is_compute(m) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d))


def _is_sign(m) -> bool:
    """A deterministic sign in eval mode: kind ``sign`` at 1 bit, not sampling in eval."""
    return _kind(m) == "sign" and _precision(m) == 1 and not getattr(m, "eval_stochastic", False)


def _fail(name, m, why) -> PackError:
    return PackError(f"cannot pack layer {name} ({type(m).__name__}): {why}")


@torch.no_grad()
def _shapes(model: nn.Module, mods, input_shape) -> dict:
    shapes = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, n=n: shapes.__setitem__(n, (tuple(inp[0].shape[1:]), tuple(out.shape[1:]))))
        for n, m in mods]
    try:
        x = torch.randint(0, 256, (2,) + tuple(input_shape), dtype=torch.uint8)
        model(x.to(torch.float32).mul(2.0 / 255.0).sub(1.0))
    finally:
        for h in hooks:
            h.remove()
    return shapes


@torch.no_grad()
def _binary_weight(name, m) -> np.ndarray:
    if not hasattr(m, "quantized_weight"):
        raise _fail(name, m, "float layer (no weight quantizer); only QuantLinear/QuantConv2d with "
                             "sign weights can be packed")
    w = m.quantized_weight().detach().to(torch.float32)
    if not bool(((w == 1) | (w == -1)).all()):
        raise _fail(name, m, f"weights are not +-1 (weight quantizer precision "
                             f"{_precision(getattr(m, 'weight_quantizer', None))})")
    return w.numpy()


def _check_input_quantizer(name, m, first: bool) -> None:
    q = getattr(m, "input_quantizer", None)
    if q is None or _precision(q) == 32:
        return
    if _is_sign(q) and not first:
        return  # sign of +-1 values is the identity
    raise _fail(name, m, f"input quantizer {type(q).__name__} (precision {_precision(q)}) is not "
                         f"supported by the packed engine")


def build_layers(model: nn.Module, input_shape: tuple) -> list[Layer]:
    if not isinstance(model, nn.Sequential):
        raise PackError(f"the packed engine walks an nn.Sequential; got {type(model).__name__}")
    model.eval()
    mods = stages(model)
    shapes = _shapes(model, mods, input_shape)
    layers: list[Layer] = []
    i = 0
    n = len(mods)
    while i < n:
        name, m = mods[i]
        if _is_skip(m) or isinstance(m, nn.Flatten):
            i += 1
            continue
        if not _is_compute(m):
            raise _fail(name, m, "expected a QuantLinear/QuantConv2d here")
        first = not layers
        if not first and layers[-1].last:
            raise _fail(name, m, "follows a layer without a sign activation")
        _check_input_quantizer(name, m, first)
        w = _binary_weight(name, m)
        in_shape, out_shape = shapes[name]
        # gather the rest of the block
        chain, names, sign_name = [], [name], None
        pool_pre = pool_post = None
        pool_mid = False
        j = i + 1
        while j < n and not _is_compute(mods[j][1]):
            nm, mm = mods[j]
            if _is_skip(mm) or isinstance(mm, nn.Flatten):
                pass
            elif isinstance(mm, nn.MaxPool2d):
                if pool_pre or pool_post or pool_mid:
                    raise _fail(nm, mm, "two max-pools in one block")
                k, s, p = (_pair(mm.kernel_size), _pair(mm.stride or mm.kernel_size), _pair(mm.padding))
                if mm.ceil_mode or _pair(mm.dilation) != 1 or None in (k, s, p):
                    raise _fail(nm, mm, "only square, undilated, floor-mode max-pooling is supported")
                if sign_name is not None:
                    if p:
                        raise _fail(nm, mm, "padded max-pool after the sign is not supported")
                    pool_post = (k, s)
                elif not chain:
                    pool_pre = (k, s, p)
                else:
                    pool_mid = (k, s, p)
            elif _is_monotone_elementwise(mm):
                if sign_name is not None:
                    raise _fail(nm, mm, "per-channel modules after the sign are not supported")
                if pool_mid:
                    raise _fail(nm, mm, "a per-channel module between max-pool and sign")
                chain.append(mm)
            elif _is_sign(mm):
                sign_name = nm
            else:
                why = "not supported by the packed engine"
                if _precision(mm) is not None and 1 < _precision(mm) < 32:
                    why = f"{_precision(mm)}-bit activations are not supported by the packed engine"
                raise _fail(nm, mm, why)
            names.append(nm)
            j += 1
        if pool_mid:
            if pool_mid[2]:
                raise _fail(name, m, "padded max-pool between BatchNorm and sign")
            pool_post = pool_mid[:2]
        block_out = shapes[[x for x in names if not isinstance(dict(mods)[x], nn.Flatten)][-1]][1]
        is_conv = isinstance(m, nn.Conv2d)
        if not is_conv and (pool_pre or pool_post):
            raise _fail(name, m, "max-pooling after a dense layer is not supported")
        layer_kind = "conv" if is_conv else "dense"
        inp = "planes" if first else "bits"
        bias = m.bias.detach() if m.bias is not None else None
        if is_conv:
            if m.groups != 1 or _pair(m.dilation) != 1 or m.padding_mode != "zeros":
                raise _fail(name, m, "grouped, dilated or non-zero-padded convolution")
            kh, kw = m.kernel_size
            s, p = _pair(m.stride), _pair(m.padding)
            if kh != kw or not isinstance(s, int) or not isinstance(p, int):
                raise _fail(name, m, "only square kernels with equal strides/paddings are supported")
            if not first and layers[-1].kind != "conv":
                raise _fail(name, m, "convolution after a dense layer")
            weights = convk.ConvWeights.from_float(w, s, p, tiles.PLANES if first else tiles.ROWS)
            k_bits = weights.k
        else:
            if first or layers[-1].kind == "dense":
                weights = DenseWeights.from_float(w, tiles.PLANES if first else tiles.ROWS)
            else:  # after Flatten of an NCHW activation: reorder the reduction to (h, w, c)
                c, h, ww = layers[-1].out_shape
                wt = w.reshape(w.shape[0], c, h, ww).transpose(0, 2, 3, 1)
                bits = bitpack.pack_reference(wt).reshape(w.shape[0], -1)
                weights = DenseWeights(bits, c * h * ww, tiles.ROWS)
            k_bits = weights.k
        layer = Layer(name, layer_kind, inp, weights, w.shape[0], tuple(in_shape), tuple(block_out),
                      pool_pre=pool_pre, pool_post=pool_post, names=names, sign_name=sign_name)
        if sign_name is not None:
            spatial = tuple(out_shape[1:]) if pool_pre is None else tuple(_pooled(out_shape[1:], pool_pre))
            scale, span = (1.0 / 255.0, 255 * k_bits) if first else (1.0, k_bits)
            layer.thresholds = fold.fold_sign(fold.chain_fn(chain, bias), w.shape[0], spatial, -span, span,
                                              scale)
            if layer.thresholds.inconsistent:
                raise _fail(name, m, f"the per-channel chain decided differently at different positions "
                                     f"({layer.thresholds.inconsistent} cases); it is not elementwise")
        else:
            if is_conv or first or pool_pre or pool_post:
                raise _fail(name, m, "no sign activation follows, so this must be the output layer, and the "
                                     "output layer must be a dense layer on binary activations")
            tail = [c_ for c_ in chain if isinstance(c_, nn.BatchNorm1d) or hasattr(c_, "scale_shift")]
            if len(chain) > 1 or len(tail) != len(chain):
                raise _fail(names[-1], mods[j - 1][1], "the output layer may only be followed by one "
                                                       "BatchNorm1d or ShiftBatchNorm")
            layer.affine = fold.Affine.from_module(chain[0] if chain else None, bias)
        layers.append(layer)
        i = j
    if not layers:
        raise PackError("the model has no QuantLinear/QuantConv2d layer")
    if not layers[-1].last:
        raise PackError(f"the model ends with a sign activation ({layers[-1].sign_name}); expected logits")
    return layers


def _pair(v):
    if isinstance(v, (tuple, list)):
        return v[0] if all(x == v[0] for x in v) else None
    return v


def _pooled(hw, pool_pre):
    k, s, p = pool_pre
    return [(x + 2 * p - k) // s + 1 for x in hw]


# ---------------------------------------------------------------- running it

class _Runner:
    """Buffers and tile tables of one layer for one batch size (reused between calls)."""

    def __init__(self, layer: Layer, batch: int, next_pad: int):
        self.layer = layer
        self.batch = batch
        w = layer.weights
        npad = w.npad
        self.mode = tiles.INT32 if layer.last else tiles.BITS
        if layer.thresholds is not None:
            self.thr = tiles.pad_cols(layer.thresholds.t, npad, tiles.NEVER)
            self.flip = tiles.flip_bytes(layer.thresholds.flip, npad)
        else:
            self.thr = np.zeros(npad, np.int64)
            self.flip = np.zeros(npad // 8, np.uint8)
        o = layer.out_channels
        cw = bitpack.words(o)
        self.generic = layer.kind == "conv" and (layer.pool_post is not None or
                                                 (layer.pool_pre is not None and not layer.fused_pool))
        if layer.kind == "dense":
            kw = w.bits.shape[1]
            self.xoffs, self.kcoffs, rows = row_tables(batch, kw, w.variant)
            self.kc = np.full((1, npad), w.k, np.int64)
            cell = npad * 4 if layer.last else cw * 8
            self.ooffs = np.ascontiguousarray(rows * cell, np.int64)
            self.out = np.zeros((batch, npad), np.int32) if layer.last else np.zeros((batch, cw), np.uint64)
        else:
            c, h, ww = layer.in_shape
            oc, oh, ow = layer.out_shape
            if self.generic:
                ho, wo = w.out_hw(h, ww)
                self.plan = convk.plan_conv(w, h, ww, convk.Dest(ho, wo, npad * 4))
                self.scratch = np.empty((batch, ho, wo, npad), np.int32)
            else:
                dest = convk.Dest(oh, ow, cw * 8, next_pad)
                self.plan = convk.plan_conv(w, h, ww, dest, pool=layer.fused_pool)
            self.pad = next_pad
            self.out = np.zeros((batch, oh + 2 * next_pad, ow + 2 * next_pad, cw), np.uint64)
        self.planes = None

    def __call__(self, x_in: np.ndarray) -> np.ndarray:
        layer, w = self.layer, self.layer.weights
        if layer.input == "planes":
            if layer.kind == "dense":
                self.planes = bitpack.planes_dense(x_in.reshape(len(x_in), -1), self.planes)
            else:
                self.planes = bitpack.planes_im2col(x_in, w.kh, w.kw, w.stride, w.pad, self.planes)
            x_in = self.planes
        if layer.kind == "dense":
            x2 = x_in.reshape(len(x_in), -1)
            words = w.bits.shape[1] * (8 if layer.input == "planes" else 1)
            if x2.dtype != np.uint64 or not x2.flags.c_contiguous or x2.shape != (self.batch, words):
                raise ValueError(f"layer {layer.name}: input {x2.dtype} {x2.shape}, expected ({self.batch}, {words})")
            tiles.run_tiles(w.variant, x2, 0, self.xoffs, 1, w.bits.shape[1], 0, w.panels, self.kc, self.kcoffs,
                            self.out, 0, self.ooffs, self.thr, self.flip, self.mode, 1, True)
            return self.out
        if not self.generic:
            convk.run_conv(self.plan, x_in, self.out, tiles.BITS, self.thr, self.flip)
            return self.out
        convk.run_conv(self.plan, x_in, self.scratch, tiles.INT32)
        self._generic_epilogue(self.scratch[..., :layer.out_channels])
        return self.out

    def preact(self, x_in: np.ndarray) -> np.ndarray:
        """Integer pre-activations before pooling (``[N, O]`` or ``[N, Ho, Wo, O]``), for compare."""
        layer, w = self.layer, self.layer.weights
        if layer.input == "planes":
            if layer.kind == "dense":
                x_in = bitpack.planes_dense(x_in.reshape(len(x_in), -1))
            else:
                return convk.bconv2d_planes(x_in, w).copy()
        if layer.kind == "dense":
            x2 = x_in.reshape(len(x_in), -1)
            out = np.zeros((len(x2), w.npad), np.int32)
            xoffs, kcoffs, rows = row_tables(len(x2), w.bits.shape[1], w.variant)
            ooffs = np.ascontiguousarray(rows * w.npad * 4)
            kc = np.full((1, w.npad), w.k, np.int64)
            tiles.run_tiles(w.variant, x2, 0, xoffs, 1, w.bits.shape[1], 0, w.panels, kc, kcoffs, out, 0, ooffs,
                            self.thr, self.flip, tiles.INT32, 1, True)
            return out[:, :layer.out_channels]
        return convk.bconv2d(x_in, w).copy()

    def _generic_epilogue(self, y: np.ndarray) -> None:
        layer = self.layer
        if layer.pool_pre is not None:
            y = pool.maxpool_int(y, *layer.pool_pre)
        neg = layer.thresholds.apply(y)
        if layer.pool_post is not None:
            k, s = layer.pool_post
            packed = bitpack.pack_reference(np.where(neg, -1.0, 1.0).astype(np.float32))
            pooled = pool.bmaxpool2d(packed, k, s)
        else:
            pooled = bitpack.pack_reference(np.where(neg, -1.0, 1.0).astype(np.float32))
        p = self.pad
        self.out[:, p:p + pooled.shape[1], p:p + pooled.shape[2]] = pooled


class PackedModel:
    """A packed BNN: ``forward(x_uint8) -> logits`` (float32 ``[N, classes]``)."""

    def __init__(self, layers: list[Layer], input_shape: tuple, meta: dict | None = None):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.meta = dict(meta or {})
        self._runners: dict[int, list[_Runner]] = {}

    @classmethod
    def from_torch(cls, model: nn.Module, input_shape: tuple, meta: dict | None = None) -> "PackedModel":
        """``input_shape`` is one sample's uint8 shape, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``.
        A model with DoReFa quantizers (multi-bit weights/activations) gets the bit-serial engine,
        a :class:`~bnnrepro.kernels.multibit_engine.MultiBitModel` with the same interface."""
        from .multibit_engine import MultiBitModel, uses_multibit

        if uses_multibit(model):
            return MultiBitModel.from_torch(model, input_shape, meta)
        return cls(build_layers(model, input_shape), input_shape, meta)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_channels

    def runners(self, batch: int) -> list[_Runner]:
        if batch not in self._runners:
            if len(self._runners) > 4:
                self._runners.clear()
            rs = []
            for i, layer in enumerate(self.layers):
                nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
                next_pad = nxt.weights.pad if nxt is not None and nxt.kind == "conv" else 0
                rs.append(_Runner(layer, batch, next_pad))
            self._runners[batch] = rs
        return self._runners[batch]

    def _check_input(self, x) -> np.ndarray:
        return check_input(x, self.input_shape)

    def forward(self, x_uint8, batch_size: int = 256) -> torch.Tensor:
        x = self._check_input(x_uint8)
        outs = []
        for s in range(0, len(x), batch_size):
            chunk = x[s:s + batch_size]
            h = chunk
            for r in self.runners(len(chunk)):
                h = r(h)
            outs.append(self.layers[-1].affine(h[:, :self.num_classes]))
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    __call__ = forward

    def predict(self, x_uint8, batch_size: int = 256) -> np.ndarray:
        return self.forward(x_uint8, batch_size).argmax(1).numpy()

    def trace(self, x_uint8):
        """Per layer: (layer, integer pre-activations, output as +-1 int8 in torch layout)."""
        x = self._check_input(x_uint8)
        h = x
        rows = []
        for layer, r in zip(self.layers, self.runners(len(x))):
            y = r.preact(h)
            out = r(h)
            rows.append((layer, y, None if layer.last else unpack_activation(out, layer, r)))
            h = out
        return rows

    def weight_bytes(self) -> int:
        return sum(layer.weights.bits.nbytes for layer in self.layers)


def unpack_activation(buf: np.ndarray, layer: Layer, runner: _Runner | None = None) -> np.ndarray:
    """Output bits of a hidden layer -> +-1 int8 in torch layout (``[N, C]`` or ``[N, C, H, W]``)."""
    o = layer.out_channels
    if layer.kind == "dense":
        return bitpack.unpack(buf, o)
    p = runner.pad if runner is not None else 0
    inner = buf[:, p:buf.shape[1] - p, p:buf.shape[2] - p]
    return np.moveaxis(bitpack.unpack(inner, o), -1, 1)


def pack_activation(a_pm1: np.ndarray, layer_next: Layer | None, pad: int) -> np.ndarray:
    """+-1 torch activation -> the buffer layout the next layer reads (teacher forcing in compare)."""
    a = np.asarray(a_pm1, np.float32)
    if a.ndim == 4:
        return bitpack.pack_nchw(a, pad)
    return bitpack.pack_rows(a)
