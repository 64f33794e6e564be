"""CIFAR-10, python version: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` or, read
directly without extracting it, ``<root>/cifar-10-python.tar.gz`` (torchvision's layout).

The batches are pickles; they are read with an unpickler that only admits what a numpy array
needs, so a doctored file cannot run code.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .archives import CorruptFileError, Download, FileSpec, Found, ensure

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TAR_NAME = "cifar-10-python.tar.gz"
TAR_MD5 = {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def batch_files() -> list[FileSpec]:
    return [FileSpec(f"{FOLDER}/{name}", md5, note=f"extracted from {URL}") for name, md5 in BATCH_MD5.items()]


def tar_file() -> FileSpec:
    return FileSpec(TAR_NAME, TAR_MD5[TAR_NAME], (URL,),
                    note=f"or its extracted {FOLDER}/ folder (data_batch_1..5, test_batch)")


def locate(root: Path, download: Download, *, root_source: str = "") -> dict[str, Found]:
    folder = root / FOLDER
    if folder.is_dir() and any((folder / n).is_file() for n in BATCH_MD5):
        return ensure("cifar10", root, batch_files(), download, root_source=root_source,
                      hint=f"  (the folder {folder} exists, so its batches are used; "
                           f"remove it to use {root / TAR_NAME} instead)")
    return ensure("cifar10", root, [tar_file()], download, root_source=root_source)


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # numpy 2 name; avoids the deprecated alias
        return super().find_class(module, name)


def _decode_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
        entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
        data = np.asarray(entry["data"])
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 - anything unreadable is a bad file
        raise CorruptFileError(f"{where}: not a readable CIFAR-10 batch ({type(err).__name__}: {err})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise CorruptFileError(f"{where}: data {data.dtype}{list(data.shape)} with {len(labels)} labels; "
                               f"expected uint8 [N, 3072] and N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CorruptFileError(f"{where}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels  # rows are R, G, B planes of 32x32, row-major


def _read_tar(path: Path) -> dict[str, bytes]:
    wanted = {f"{FOLDER}/{n}": n for n in BATCH_MD5}
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one sequential pass over the gzip stream
                name = wanted.get(member.name.removeprefix("./"))
                if name and member.isfile():
                    out[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorruptFileError(f"{path}: not a readable tar.gz ({err}); delete it and fetch it again") from err
    missing = sorted(set(BATCH_MD5) - set(out))
    if missing:
        raise CorruptFileError(f"{path}: lacks {', '.join(f'{FOLDER}/{m}' for m in missing)}")
    return out


def read(found: dict[str, Found]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if TAR_NAME in found:
        path = found[TAR_NAME].path
        raws = _read_tar(path)
        where = {n: f"{path}:{FOLDER}/{n}" for n in raws}
    else:
        paths = {Path(rel).name: f.path for rel, f in found.items()}
        raws = {n: p.read_bytes() for n, p in paths.items()}
        where = {n: str(p) for n, p in paths.items()}
    train = [_decode_batch(raws[n], where[n]) for n in TRAIN_BATCHES]
    test_x, test_y = _decode_batch(raws["test_batch"], where["test_batch"])
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return {"train": (torch.from_numpy(train_x), torch.from_numpy(train_y)),
            "test": (torch.from_numpy(test_x), torch.from_numpy(test_y))}
