"""Which configs are the same experiment: a run's config flattened to dotted keys, and its
*fingerprint*, the keys that decide the result (:data:`IGNORED` lists those that do not: paths, seed,
device, threads, logging). ``report.plan`` matches runs to table rows with it; ``train.estimate``
finds finished runs of a config to time it by.
"""
from __future__ import annotations

from typing import Any

# config fields that do not change a run's result (prefixes of dotted keys)
IGNORED = ("runs_dir", "run_name", "resume", "seed", "device", "logger", "data.root", "data.download",
           "data.workers", "train.num_threads", "train.progress", "train.eval_batch_size")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values (compared whole)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED)


# what a set train.init_from reads as: the path is one machine's, the row says which run it was
INITIALISED = "<a trained run>"


def fingerprint(config: dict) -> dict[str, Any]:
    """The keys that decide the result; a set ``train.init_from`` becomes :data:`INITIALISED`."""
    out = {k: v for k, v in flatten(config).items() if not _ignored(k)}
    if out.get("train.init_from") is not None:
        out["train.init_from"] = INITIALISED
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def differences(expected: dict[str, Any], config: dict) -> list[str]:
    """Dotted keys where ``config`` differs from the ``expected`` fingerprint (keys in both only:
    a field added to the schema after a run was made does not orphan the run)."""
    actual = fingerprint(config)
    return sorted(k for k in expected.keys() & actual.keys() if not _same(expected[k], actual[k]))


def as_trained(config: dict, summary: dict | None) -> dict:
    """``config`` with ``train.precision: auto`` replaced by the precision the run used: its
    summary.json's record, else fp32 (a run that recorded none ran before the bf16 layers existed,
    or has not finished). So a row counts runs by the numerics they ran, not by the word auto."""
    train = (config or {}).get("train") or {}
    if train.get("precision") != "auto":
        return config
    used = ((summary or {}).get("precision") or {}).get("used") or "fp32"
    return {**config, "train": {**train, "precision": used}}
