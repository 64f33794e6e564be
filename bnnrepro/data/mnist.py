"""MNIST and Fashion-MNIST: idx files in torchvision's layout ``<root>/MNIST/raw``,
``<root>/FashionMNIST/raw`` (``.gz`` archives or the decompressed ``*-ubyte`` files).

Fashion-MNIST is also taken from Debian's package (``apt-get install dataset-fashion-mnist``
puts it in /usr/share/datasets/fashion-mnist) when the root lacks it; Debian re-wrote the gzip
headers, so those archives have their own md5s but identical content.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .archives import CorruptFileError, Download, FileSpec, Found, ensure

MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MEMBERS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# member -> (official .gz md5 [torchvision's], md5 of the decompressed file).
# The second column was computed from the verified official archives.
MNIST_MD5 = {
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
# member -> (official .gz md5, md5 of the decompressed file, Debian's re-headered .gz md5)
FASHION_MD5 = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                                "cf8536b0aa1a6ac5fa3f23001093305c"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9",
                                "10bea18fdb374794d4bb42e356e600c9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a",
                               "f78720b4224f21cce2f2ccf2d7a94c9a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965",
                               "0d30e22e447f3c33dab9ed536400ac01"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def files(fashion: bool) -> list[FileSpec]:
    folder = "FashionMNIST/raw" if fashion else "MNIST/raw"
    specs = []
    for member in MEMBERS:
        if fashion:
            gz, raw, debian = FASHION_MD5[member]
            specs.append(FileSpec(
                f"{folder}/{member}.gz", gz, tuple(u + member + ".gz" for u in FASHION_URLS),
                also_md5=(debian,),
                alternatives=((f"{folder}/{member}", (raw,)),
                              (f"{DEBIAN_FASHION_DIR}/{member}.gz", (debian, gz))),
                note="Debian's re-headered archive (md5 %s) is accepted too" % debian))
        else:
            gz, raw = MNIST_MD5[member]
            specs.append(FileSpec(f"{folder}/{member}.gz", gz, tuple(u + member + ".gz" for u in MNIST_URLS),
                                  alternatives=((f"{folder}/{member}", (raw,)),)))
    return specs


def locate(root: Path, download: Download, *, fashion: bool, root_source: str = "") -> dict[str, Found]:
    hint = ("  Fashion-MNIST is also read from Debian's package: apt-get install dataset-fashion-mnist"
            if fashion else "")
    return ensure("fashion_mnist" if fashion else "mnist", root, files(fashion), download,
                  root_source=root_source, hint=hint)


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Decode one idx file (optionally gzipped), checking magic, dims and length."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptFileError(f"{path}: cannot decompress ({err}); delete it and fetch it again") from err
    ndim = 1 + len(item_shape)
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise CorruptFileError(f"{path}: idx magic number {found}, expected {magic} "
                               f"(wrong file in this place, or damaged)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != tuple(item_shape) or len(data) != header + int(np.prod(dims)):
        raise CorruptFileError(f"{path}: idx dims {dims} and {len(data)} bytes do not match the expected "
                               f"[N, {', '.join(map(str, item_shape))}] uint8 layout")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read(found: dict[str, Found]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    paths = {Path(relpath).name.removesuffix(".gz"): f.path for relpath, f in found.items()}
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(paths[f"{prefix}-images-idx3-ubyte"], IMAGE_MAGIC, (28, 28))
        labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte"], LABEL_MAGIC, ())
        if len(images) != len(labels) or (labels.size and labels.max() > 9):
            raise CorruptFileError(f"{paths[f'{prefix}-labels-idx1-ubyte']}: {len(labels)} labels "
                                   f"(max {labels.max() if labels.size else None}) for {len(images)} images")
        out[split] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    return out
