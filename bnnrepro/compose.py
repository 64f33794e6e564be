"""Config composition, beside the schema: the keys a command line may set, the check that every
override names one of them, and the Hydra composer every caller (train, summary, the table
pipeline, scripts) goes through.

An override is ``[+|++|~]key=value``. ``key`` is either a config group of ``conf/`` (``data=mnist``,
``+paper=bnn``, ``hydra/launcher=parallel``) or a dotted field of :class:`bnnrepro.config.Config`
(``model.hidden=[10]``). Fields under a dict-typed field (``quant.weight_kwargs.*``) are free-form;
``hydra.*`` is Hydra's own. Anything else fails here, before Hydra composes and before any work,
with the nearest valid key: Hydra would accept ``+model.hiden=[10]`` silently and answer
``optim.lrr=1`` with a bare "Could not override".
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterable

from .config import Config, register_configs
from .errors import ConfigError

CONF_MODULE = "bnnrepro.conf"
FREE = "free"      # a dict-typed field: any key below it is accepted
LEAF = "leaf"


@dataclass(frozen=True)
class Override:
    prefix: str      # "", "+", "++" or "~"
    key: str         # dotted field or group path, without "@package"
    value: str | None

    @property
    def text(self) -> str:
        return f"{self.prefix}{self.key}" + ("" if self.value is None else f"={self.value}")


def parse_override(text: str) -> Override:
    prefix = "++" if text.startswith("++") else text[:1] if text[:1] in "+~" else ""
    key, sep, value = text[len(prefix):].partition("=")
    if not key.strip() or (not sep and prefix != "~"):
        raise ConfigError(f"{text!r} is not an override; write key=value (e.g. train.epochs=10)")
    return Override(prefix, key.split("@", 1)[0].strip(), value if sep else None)


def is_override(token: str) -> bool:
    """``token`` looks like ``[+|++|~]key=value`` (a path such as ``runs/a=b`` does not)."""
    body = token.lstrip("+~")
    key, sep, _ = body.partition("=")
    return bool(sep) and bool(key) and key[0].isalpha() and all(c.isalnum() or c in "._/@-" for c in key) \
        and not key.startswith("/")


# ------------------------------------------------------------------------------------ the schema

def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dict(tp) -> bool:
    return typing.get_origin(tp) is dict or tp is dict


@lru_cache(maxsize=1)
def schema_keys() -> dict[str, str]:
    """Every dotted key of the schema: ``{"model.hidden": "leaf", "quant.weight_kwargs": "free",
    "model": "section", ...}``."""
    out: dict[str, str] = {}

    def walk(cls, prefix: str) -> None:
        for name, tp in _fields(cls).items():
            key = f"{prefix}{name}"
            if dataclasses.is_dataclass(tp):
                out[key] = "section"
                walk(tp, key + ".")
            else:
                out[key] = FREE if _is_dict(tp) else LEAF

    walk(Config, "")
    return out


def _conf_dir(root, path: str = ""):
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            group = f"{path}/{entry.name}" if path else entry.name
            options = sorted(e.name[:-5] for e in entry.iterdir() if e.name.endswith(".yaml"))
            yield group, options
            yield from _conf_dir(entry, group)


@lru_cache(maxsize=1)
def config_groups() -> dict[str, list[str]]:
    """Config groups of ``conf/`` and their options: ``{"paper": ["bnn", "dorefa", ...], ...}``."""
    return {group: options for group, options in _conf_dir(resources.files(CONF_MODULE)) if options}


def _status(key: str) -> str | None:
    """``leaf``/``free``/``section`` for a schema key (or one under a free-form dict), else None."""
    keys = schema_keys()
    if key in keys:
        return keys[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if keys.get(head) == FREE:
            return FREE
        if keys.get(head) == LEAF and all(p.isdigit() for p in parts[i:]):
            return LEAF  # a list element: model.hidden.0=10
    return None


def nearest_key(key: str, candidates: Iterable[str] | None = None) -> str | None:
    pool = list(candidates) if candidates is not None else \
        [k for k, s in schema_keys().items() if s != "section"] + list(config_groups())
    match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
    if match:
        return match[0]
    # a right field under a wrong or missing section: epochs -> train.epochs
    tails = {k.rsplit(".", 1)[-1]: k for k in pool}
    match = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.8)
    return tails[match[0]] if match else None


def section_keys(section: str) -> list[str]:
    """The keys directly under a schema section: ``section_keys("optim") -> ["name", "lr", ...]``."""
    n = len(section) + 1
    return [k[n:] for k in schema_keys() if k.startswith(section + ".") and "." not in k[n:]]


def unknown_key_message(key: str, *, added: bool = False, candidates: Iterable[str] | None = None) -> str:
    near = nearest_key(key, candidates)
    how = " (added with +)" if added else ""
    hint = f"; did you mean `{near}`?" if near else ""
    section = key.rsplit(".", 1)[0] if "." in key else None
    listing = ""
    if candidates is None and section and schema_keys().get(section) == "section":
        listing = f" ({section} has: {', '.join(section_keys(section))})"
    return f"unknown config key `{key}`{how}{hint}{listing}"


def check_overrides(overrides: Iterable[str]) -> list[Override]:
    """Every override names a config group or a schema key; raise ConfigError (with the nearest
    valid key) on the first that does not. Values are Hydra's to check (sweeps included)."""
    groups = config_groups()
    parsed = []
    for text in overrides:
        o = parse_override(text)
        parsed.append(o)
        if o.key == "hydra" or o.key.startswith(("hydra.", "hydra/")):
            continue
        if o.key in groups:
            _check_option(o, groups[o.key])
            continue
        status = _status(o.key)
        if status == "section" and o.prefix != "~":
            raise ConfigError(f"`{o.key}` is a section, not a value; set one of its keys: "
                              + ", ".join(f"{o.key}.{k}" for k in section_keys(o.key)))
        if status is None:
            if "/" in o.key:
                near = nearest_key(o.key, groups)
                raise ConfigError(f"unknown config group `{o.key}`" + (f"; did you mean `{near}`?" if near else
                                                                       f"; groups: {', '.join(groups)}"))
            raise ConfigError(unknown_key_message(o.key, added=o.prefix.startswith("+")))
    return parsed


def _check_option(o: Override, options: list[str]) -> None:
    value = (o.value or "").strip()
    if not value or any(c in value for c in ",()[]{}$*") or value in options or value == "null":
        return  # sweeps, interpolations and Hydra's own syntax: Hydra checks them
    near = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    hint = f"; did you mean `{o.prefix}{o.key}={near[0]}`?" if near else ""
    raise ConfigError(f"{o.prefix}{o.key}={value!r}: no such option in group `{o.key}`{hint} "
                      f"(allowed: {', '.join(options)})")


def typed_values(overrides: Iterable[str], allowed: Iterable[str], raw: Iterable[str] = ()) -> dict[str, Any]:
    """Plain ``key=value`` overrides of the keys in ``allowed`` as ``{key: value}``, values
    type-checked against the schema (``train.num_threads=x`` fails naming the field); a group's
    option is checked against ``conf/``; keys in ``raw`` keep their text (``seed=0,1,2``)."""
    from omegaconf import OmegaConf

    allowed = list(allowed)
    out: dict[str, Any] = {}
    for text in overrides:
        o = parse_override(text)
        if o.key not in allowed:
            if o.key in schema_keys() or o.key in config_groups():
                raise ConfigError(f"`{o.key}` cannot be set here; this command takes "
                                  + (", ".join(f"{k}=" for k in allowed) or "no config overrides"))
            raise ConfigError(unknown_key_message(o.key, candidates=allowed or None))
        if o.prefix:
            raise ConfigError(f"{text!r}: write {o.key}=value (no {o.prefix!r}: the key exists)")
        if o.key in config_groups() and o.key not in raw:
            _check_option(o, config_groups()[o.key])
            out[o.key] = o.value
        elif o.key in schema_keys() and o.key not in raw:
            try:
                cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist([f"{o.key}={o.value}"]))
            except Exception as err:  # omegaconf's ValidationError: the field and the bad value
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError(f"{o.key}={o.value!r}: {first}") from None
            out[o.key] = OmegaConf.select(cfg, o.key)
        else:
            out[o.key] = o.value
    return out


# ------------------------------------------------------------------------------------ composing

def hydra_composer() -> Callable[[list[str]], Any]:
    """``compose(overrides) -> DictConfig`` over the package's config tree (no job is run); every
    override is checked by :func:`check_overrides` first."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()

    def run(overrides: list[str]):
        check_overrides(overrides)
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return run


def compose(overrides: list[str]):
    """The config ``bnnrepro train <overrides>`` would run with."""
    return hydra_composer()(list(overrides))
