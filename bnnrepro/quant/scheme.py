"""The quantizer scheme of a model: which quantizer (registry name + kwargs) plays each role.

A :class:`QuantScheme` is built from the config's ``quant`` section in one place,
:meth:`QuantScheme.from_config`, and handed whole to a model factory (``quant=``). The roles:

* ``weight``, ``activation``, ``gradient``: the hidden layers' weight quantizer, the activation
  quantizer after each hidden layer's BN, and the gradient quantizer on each hidden layer's output
  (identity forward; DoReFa's ``fg``, QNN's quantized gradients);
* ``first_layer``: the first layer's ``input``, ``weight`` and ``gradient`` quantizers;
* ``last_layer``: the last layer's ``input`` (the activation quantizer feeding it), ``weight`` and
  ``gradient`` (always identity: its output gradient is the loss's).

Role variants are properties of the scheme, set by config keys, never name branches in model code:
DoReFa's float first and last layers (``first_layer: float``, ``last_layer: float``; tensorpack's
conv0 and fct), its clipped but unquantized last-layer input (``last_input_kwargs: {quantize:
false}``, merged over the activation's kwargs), QNN's float ends (``first_weight`` /
``last_weight: identity``).

The config keys (:class:`QuantConfig`, the Hydra schema of ``quant``; ``conf/quant/*.yaml`` are its
presets) and how each role is resolved:

===================  =======================================================================
``weight``           name, ``w_bits`` and ``weight_kwargs``: the hidden layers' weights
``activation``       name, ``a_bits`` and ``activation_kwargs``: every activation quantizer
``gradient``         name, ``g_bits`` and ``gradient_kwargs``: the hidden layers' output gradients
``first_weight``     the first layer's weight quantizer (no kwargs); null: ``first_layer`` decides.
                     Set, the first layer has no gradient quantizer
``first_layer``      ``quantized`` (the hidden layers' weight and gradient quantizers) or
                     ``float`` (identity weights, no gradient quantizer), when ``first_weight``
                     is null
``first_input``      the first layer's input quantizer (identity: real-valued pixels)
``last_weight``      the last layer's weight quantizer; null: ``last_layer`` decides
``last_layer``       ``quantized`` (``weight``) or ``float`` (identity) when ``last_weight`` is null
``last_input``       the quantizer on the last layer's input (with ``last_input_kwargs``); null: the
                     activation quantizer, its kwargs updated by ``last_input_kwargs``
===================  =======================================================================

Bit widths are folded into the kwargs (``Spec('dorefa_weight', {'bits': 1})``); an unset width
(null) is the quantizer's own default.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch.nn as nn

from ..errors import ConfigError
from . import registry

LAYER_MODES = ("quantized", "float")


@dataclass
class QuantConfig:
    """The ``quant`` config section (Hydra's schema); the keys are described in the module docstring."""

    weight: str = "sign"
    w_bits: Optional[int] = None        # null: the quantizer's own width
    weight_kwargs: dict[str, Any] = field(default_factory=dict)
    activation: str = "sign"
    a_bits: Optional[int] = None
    activation_kwargs: dict[str, Any] = field(default_factory=dict)
    gradient: str = "identity"
    g_bits: Optional[int] = None
    first_weight: Optional[str] = None  # override for the first layer's weights (e.g. identity)
    last_weight: Optional[str] = None   # override for the last layer's weights
    gradient_kwargs: dict[str, Any] = field(default_factory=dict)
    first_layer: str = "quantized"      # quantized | float: the first layer when first_weight is null
    last_layer: str = "quantized"       # quantized | float: the last layer when last_weight is null
    first_input: str = "identity"       # the first layer's input quantizer
    last_input: Optional[str] = None    # the last layer's input quantizer; null: the activation's
    last_input_kwargs: dict[str, Any] = field(default_factory=dict)


KEYS = tuple(f.name for f in fields(QuantConfig))


@dataclass(frozen=True)
class Spec:
    """A quantizer by registry name and constructor kwargs (bits included)."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        return registry.get(self.name)

    def build(self) -> nn.Module:
        return registry.build(self.name, **dict(self.kwargs))

    def updated(self, **kwargs) -> "Spec":
        return Spec(self.name, {**self.kwargs, **kwargs})


IDENTITY = Spec("identity")


@dataclass(frozen=True)
class LayerQuant:
    """The quantizers of one layer: on its input, its weights and the gradient at its output."""

    input: Spec = IDENTITY
    weight: Spec = IDENTITY
    gradient: Spec = IDENTITY


@dataclass(frozen=True)
class QuantScheme:
    """Which quantizer plays each role in a model (module docstring). Build it with
    :meth:`from_config`; ``QuantScheme.from_config({})`` is BNN's (sign weights and activations)."""

    weight: Spec
    activation: Spec
    gradient: Spec
    first_layer: LayerQuant
    last_layer: LayerQuant

    @classmethod
    def from_config(cls, quant: Any = None) -> "QuantScheme":
        """From the ``quant`` section (a DictConfig, a QuantConfig or a plain mapping; missing keys
        take QuantConfig's defaults). Raises :class:`ConfigError` naming the field."""
        q = _settings(quant)
        _check(q)
        weight = Spec(q["weight"], _with_bits(q["weight_kwargs"], q["w_bits"]))
        activation = Spec(q["activation"], _with_bits(q["activation_kwargs"], q["a_bits"]))
        gradient = Spec(q["gradient"], _with_bits(q["gradient_kwargs"], q["g_bits"]))
        if q["first_weight"]:
            first = LayerQuant(weight=Spec(q["first_weight"]), gradient=IDENTITY)
        elif q["first_layer"] == "float":
            first = LayerQuant(weight=IDENTITY, gradient=IDENTITY)
        else:
            first = LayerQuant(weight=weight, gradient=gradient)
        first = LayerQuant(input=Spec(q["first_input"]), weight=first.weight, gradient=first.gradient)
        if q["last_weight"]:
            last_weight = Spec(q["last_weight"])
        else:
            last_weight = IDENTITY if q["last_layer"] == "float" else weight
        if q["last_input"]:
            last_input = Spec(q["last_input"], dict(q["last_input_kwargs"]))
        else:
            last_input = activation.updated(**q["last_input_kwargs"])
        scheme = cls(weight=weight, activation=activation, gradient=gradient, first_layer=first,
                     last_layer=LayerQuant(input=last_input, weight=last_weight, gradient=IDENTITY))
        scheme._check_builds()
        return scheme

    def roles(self) -> dict[str, Spec]:
        """Every role's spec by dotted name (``weight``, ..., ``last_layer.input``)."""
        out = {"weight": self.weight, "activation": self.activation, "gradient": self.gradient}
        for end in ("first_layer", "last_layer"):
            layer = getattr(self, end)
            out.update({f"{end}.{k}": getattr(layer, k) for k in ("input", "weight", "gradient")})
        return out

    def _check_builds(self) -> None:
        for role, spec in self.roles().items():
            try:
                spec.build()
            except (TypeError, ValueError) as err:
                raise ConfigError(f"quant: the {role} quantizer {spec.name!r} cannot be built with "
                                  f"{dict(spec.kwargs)} ({_KWARGS_FIELDS.get(role, 'quant')}): {err}") from None


# which config keys set each role's kwargs (for error messages)
_KWARGS_FIELDS = {"weight": "quant.w_bits / quant.weight_kwargs",
                  "activation": "quant.a_bits / quant.activation_kwargs",
                  "gradient": "quant.g_bits / quant.gradient_kwargs",
                  "first_layer.weight": "quant.first_weight", "first_layer.input": "quant.first_input",
                  "last_layer.weight": "quant.last_weight",
                  "last_layer.input": "quant.last_input / quant.last_input_kwargs"}


def _plain(value):
    if hasattr(value, "items"):  # dict, DictConfig
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # list, ListConfig
        return [_plain(v) for v in value]
    return value


def _settings(quant) -> dict:
    if isinstance(quant, QuantConfig):
        quant = asdict(quant)
    given = _plain(quant) if quant is not None else {}
    if not isinstance(given, dict):
        raise ConfigError(f"quant must be a mapping of quantizer settings, got {quant!r}")
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ConfigError(f"quant.{unknown[0]} is not a quantizer setting; allowed: {', '.join(KEYS)}")
    return {**asdict(QuantConfig()), **given}


def _with_bits(kwargs: Mapping, bits) -> dict:
    kw = dict(kwargs or {})
    if bits is not None:
        kw["bits"] = bits
    return kw


def _check_name(key: str, name, optional: bool = False) -> None:
    if name is None and optional:
        return
    if name not in registry.QUANTIZERS:
        raise ConfigError(f"quant.{key}={name!r} is unknown; allowed: {', '.join(registry.names())}")


def _check(q: dict) -> None:
    for key, bits_key in (("weight", "w_bits"), ("activation", "a_bits"), ("gradient", "g_bits")):
        _check_name(key, q[key])
        try:
            registry.check_bits(q[key], q[bits_key], field=f"quant.{bits_key}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    for key in ("first_weight", "last_weight", "last_input"):
        _check_name(key, q[key], optional=True)
    _check_name("first_input", q["first_input"])
    for key in ("first_layer", "last_layer"):
        if q[key] not in LAYER_MODES:
            raise ConfigError(f"quant.{key}={q[key]!r} is not allowed; allowed: {', '.join(LAYER_MODES)}")
    for key in ("weight_kwargs", "activation_kwargs", "gradient_kwargs", "last_input_kwargs"):
        if not isinstance(q[key], dict):
            raise ConfigError(f"quant.{key}={q[key]!r} must be a mapping of keyword arguments")
