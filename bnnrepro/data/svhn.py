"""SVHN cropped digits (format 2): ``<root>/{train,test,extra}_32x32.mat`` directly in the root,
exactly where torchvision's ``SVHN(root)`` looks (no sub-folder).

Each .mat holds ``X`` uint8 [32, 32, 3, N] and ``y`` [N, 1] with labels 1..10, where 10 is digit 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .archives import CorruptFileError, Download, FileSpec, Found, ensure

URL = "http://ufldl.stanford.edu/housenumbers/"
MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}


def files(use_extra: bool) -> list[FileSpec]:
    names = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if use_extra else [])
    return [FileSpec(n, MD5[n], (URL + n,)) for n in names]


def locate(root: Path, download: Download, *, use_extra: bool = False, root_source: str = "") -> dict[str, Found]:
    return ensure("svhn", root, files(use_extra), download, root_source=root_source)


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io  # not at module import: it costs ~0.2 s and only SVHN needs it

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
        x, y = mat["X"], np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except Exception as err:  # noqa: BLE001 - scipy raises several types for a bad file
        raise CorruptFileError(f"{path}: not a readable SVHN .mat ({type(err).__name__}: {err})") from err
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise CorruptFileError(f"{path}: X is {x.dtype}{list(x.shape)} for {len(y)} labels; "
                               f"expected uint8 [32, 32, 3, N]")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise CorruptFileError(f"{path}: labels outside 1..10")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y  # -> [N, C, H, W]


def read(found: dict[str, Found]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for split in ("train", "test", "extra"):
        if f"{split}_32x32.mat" in found:
            x, y = read_mat(found[f"{split}_32x32.mat"].path)
            out[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return out
