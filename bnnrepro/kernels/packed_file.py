"""The ``.bnn`` container both packed engines' files share: a plain ``.npz`` of numeric arrays plus a
JSON header (``header.npy``), never pickled, with a content hash; reading it back, and the checks
of header fields and arrays that every engine's format (``artifact``: the binary engine's and the
dispatch, ``multibit_artifact``: the bit-serial engine's) builds on. Every problem is a
:class:`PackError` naming the field."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import PackError
from ..runs import atomic_write_bytes

FORMAT = "bnnrepro-packed"
VERSION = 2
VERSIONS = (1, 2)  # version 1: the same layout without the content hash
INPUT = "uint8, x = p * 2/255 - 1 (data.scale_pm1)"
ENGINES = ("multibit",)  # the header's "engine"; absent: the binary engine's PackedModel


def is_artifact(path: str | os.PathLike) -> bool:
    """A ``.bnn`` file, or any zip holding a ``header.npy`` member (detected by content)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix == ".bnn":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return "header.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def content_hash(header: dict, arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the canonical header JSON (without ``sha256``) and every array but ``header``
    (name, dtype, shape, bytes; sorted by name)."""
    h = hashlib.sha256()
    body = {k: v for k, v in header.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    for name in sorted(k for k in arrays if k != "header"):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\n")
        h.update(a.tobytes())
    return h.hexdigest()


def write(path: str | os.PathLike, header: dict, arrays: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    header["sha256"] = content_hash(json.loads(json.dumps(header)), arrays)  # hash what load will read
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return path


# ---------------------------------------------------------------- reading and the content hash

def read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PackError("no such file")
    if not zipfile.is_zipfile(path):
        raise PackError("not a bnnrepro packed model (not an npz/zip file: truncated, or another format)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # zipfile (bad CRC, truncated member), zlib or .npy format errors alike
        raise PackError(f"unreadable npz ({type(err).__name__}: {err}); the file was modified or damaged "
                        f"after it was written, or is not a bnnrepro packed model") from None
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):  # np.load returns a non-.npy member as raw bytes
            raise PackError(f"member {name!r} is not an array")
    return arrays


def read_header(a) -> dict:
    if a is None:
        raise PackError("not a bnnrepro packed model (no header)")
    if a.dtype != np.uint8 or a.ndim != 1:
        raise PackError(f"header: expected a 1-D uint8 array, got {a.dtype} {a.shape}")
    try:
        header = json.loads(a.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PackError(f"header: invalid JSON ({err})") from None
    if not isinstance(header, dict):
        raise PackError(f"header: expected a JSON object, got {type(header).__name__}")
    return header


def check_version(header: dict) -> None:
    if header.get("format") != FORMAT:
        raise PackError(f"format: expected {FORMAT!r}, got {header.get('format')!r}")
    v = header.get("version")
    if not is_int(v) or v not in VERSIONS:
        raise PackError(f"version: unsupported packed format version {v!r} (this bnnrepro reads {VERSIONS})")


def engine_of(header: dict) -> str:
    if "engine" not in header:
        return "binary"
    if header["engine"] not in ENGINES:
        raise PackError(f"engine: expected one of {list(ENGINES)} (or no engine field: the binary engine), "
                        f"got {header['engine']!r}")
    return header["engine"]


def check_hash(header: dict, arrays: dict) -> None:
    stored = header.get("sha256")
    if not isinstance(stored, str):
        raise PackError(f"sha256: expected the content hash (a string), got {stored!r}")
    if stored != content_hash(header, arrays):
        raise PackError("sha256: content hash mismatch: the file was modified or damaged after it was written")


# ---------------------------------------------------------------- field checks

def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def need_int(v, where: str, lo: int = 1) -> int:
    if not is_int(v) or v < lo:
        raise PackError(f"{where}: expected {'a positive int' if lo == 1 else f'an int >= {lo}'}, got {v!r}")
    return v


def need_shape(v, where: str, ndim: int | None = None) -> tuple:
    if (not isinstance(v, list) or not v or not all(is_int(x) and x > 0 for x in v)
            or (ndim is not None and len(v) != ndim)):
        n = f"{ndim} " if ndim else ""
        raise PackError(f"{where}: expected a list of {n}positive ints, got {v!r}")
    return tuple(v)


def need_str(v, where: str, none: bool = False) -> None:
    if not (isinstance(v, str) or (none and v is None)):
        raise PackError(f"{where}: expected a string{' or null' if none else ''}, got {v!r}")


def need_keys(d, where: str, want: set) -> None:
    if not isinstance(d, dict):
        raise PackError(f"{where}: expected an object, got {d!r}")
    if want - d.keys():
        raise PackError(f"{where}: missing key {sorted(want - d.keys())[0]!r}")
    if d.keys() - want:
        raise PackError(f"{where}: unexpected key {sorted(d.keys() - want)[0]!r}")


def need_pool(v, where: str, n: int) -> tuple | None:
    """``pool_pre`` ``[k, stride, pad]`` or ``pool_post`` ``[k, stride]``, or null."""
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != n or not all(is_int(x) for x in v) or min(v[:2]) < 1 or min(v) < 0:
        fields = "[k, stride, pad]" if n == 3 else "[k, stride]"
        raise PackError(f"{where}: expected null or {fields} (k, stride positive, pad >= 0), got {v!r}")
    return tuple(v)


def check_common(header: dict, keys: set, encoding: str) -> tuple:
    """The fields every engine's header has (``keys``: all of its own); returns ``input_shape``."""
    need_keys(header, "header", keys | ({"sha256"} if header["version"] >= 2 else set()))
    need_str(header["input"], "input")
    need_str(header[encoding], encoding)
    if not isinstance(header["meta"], dict):
        raise PackError(f"meta: expected an object, got {header['meta']!r}")
    return need_shape(header["input_shape"], "input_shape")


def check_arrays(arrays: dict[str, np.ndarray], expected: dict[str, tuple], owner) -> None:
    """Exactly the ``expected`` arrays (``{name: (dtype, shape)}``; a tuple of dtypes: any of them),
    each of its dtype and shape; ``owner(name)``: the header field an array belongs to, for the message."""
    extra = sorted(arrays.keys() - expected.keys())
    if extra:
        raise PackError(f"unexpected array {extra[0]!r}")
    for name, (dtype, shape) in expected.items():
        layer = owner(name)
        if name not in arrays:
            raise PackError(f"{layer}: missing array {name!r}")
        a = arrays[name]
        dtypes = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
        if a.dtype not in dtypes or a.shape != shape:
            raise PackError(f"{layer}: array {name!r}: expected {' or '.join(str(d) for d in dtypes)} of shape "
                            f"{shape}, got {a.dtype} of shape {a.shape}")
