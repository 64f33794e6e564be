"""Quantizer registry: ``build(name, **kwargs)`` returns an ``nn.Module`` that carries ``precision``.

A quantizer class registers under one or more names with :func:`register`. Each class declares
``allowed_bits``: the bit widths it can be built with (``None`` means any of 1..8 and 32), so a bad
bit width is caught by config validation before anything is loaded.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

QUANTIZERS: dict[str, type] = {}
VALID_BITS = tuple(range(1, 9)) + (32,)


def register(*names: str) -> Callable[[type], type]:
    """Class decorator: register the quantizer class under each of ``names`` (the first is its
    ``registry_name``); a name registered twice raises ValueError."""
    def deco(cls: type) -> type:
        for name in names:
            if name in QUANTIZERS:
                raise ValueError(f"quantizer name {name!r} registered twice")
            QUANTIZERS[name] = cls
        cls.registry_name = names[0]
        return cls

    return deco


def names() -> list[str]:
    """Every registered quantizer name, sorted."""
    return sorted(QUANTIZERS)


def allowed_bits(name: str) -> tuple[int, ...]:
    """The bit widths quantizer ``name`` can be built with (1..8 and 32 unless it declares fewer)."""
    cls = get(name)
    bits = getattr(cls, "allowed_bits", None)
    return VALID_BITS if bits is None else tuple(bits)


def get(name: str) -> type:
    """The class registered as ``name``; ValueError listing the allowed names when there is none."""
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ValueError(f"unknown quantizer {name!r}; allowed: {', '.join(names())}") from None


def check_bits(name: str, bits: int | None, field: str = "bits") -> None:
    """Raise ValueError naming ``field`` when ``bits`` is not a width quantizer ``name`` supports."""
    if bits is None:
        return
    allowed = allowed_bits(name)
    if bits not in allowed:
        raise ValueError(
            f"{field}={bits} is not valid for quantizer {name!r}; allowed: {', '.join(map(str, allowed))}"
        )


def build(name: str, **kwargs) -> nn.Module:
    """Instantiate the quantizer registered as ``name``. ``bits=None`` means the quantizer's default."""
    cls = get(name)
    if "bits" in kwargs:
        bits = kwargs["bits"]
        check_bits(name, bits)
        if bits is None or getattr(cls, "allowed_bits", None) is not None and len(cls.allowed_bits) == 1:
            kwargs.pop("bits")  # fixed-width quantizers (sign, identity) take no bits argument
    return cls(**kwargs)
