"""ImageNet (ILSVRC-2012) as an ImageFolder tree: ``<root>/imagenet/{train,val}/<class dir>/<image>``;
class index = position of the class dir in the sorted train class dirs (torchvision's rule).

With ``data.loader=memory`` ImageNet is held in memory as uint8 as every other dataset, decoded
eagerly: each image is resized (shorter side to ``image_size * 256/224``, bilinear) and
center-cropped to ``image_size`` -- the usual single-crop evaluation transform. That fits only
subsets or small sizes (full train at 64 px is ~15.7 GB, at 224 px ~193 GB), so the bytes
needed are computed from the file listing first and a :class:`DataError` is raised before
decoding anything when they exceed half of the available memory (override with the environment
variable ``BNNREPRO_MAX_DATA_BYTES``). Train samples are listed class-interleaved (1st image of
every class, then the 2nd, ...) so any prefix -- ``train_subset``, and only that prefix is
decoded -- covers the classes evenly. ``data.loader=stream`` (the ImageNet default, stream.py)
decodes per batch instead, from the same file lists.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .archives import CorruptFileError, DataError, MissingFilesError

log = logging.getLogger(__name__)

FOLDER = "imagenet"
DEFAULT_IMAGE_SIZE = 224
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_BYTES_ENV = "BNNREPRO_MAX_DATA_BYTES"
SOURCE = ("https://image-net.org/download-images.php (registration required; no automatic download): "
          "ILSVRC2012_img_train.tar md5 1d675b47d978889d74fa0da5fadfb00e, "
          "ILSVRC2012_img_val.tar md5 29b22e2961454d5413ddabcf34fc5622 (val images must be sorted into "
          "class dirs, e.g. with the devkit ILSVRC2012_devkit_t12.tar.gz md5 fa75699e90414af021442c21a62c3abf)")


@dataclass
class ImageFiles:
    """A lazily decoded list of image files; slicing it decodes nothing."""

    base: Path
    relpaths: list[str]
    image_size: int

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, index: slice) -> "ImageFiles":
        return ImageFiles(self.base, self.relpaths[index], self.image_size)

    def nbytes(self) -> int:
        return len(self) * 3 * self.image_size ** 2

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for rel in self.relpaths:
            h.update(f"{rel}\t{(self.base / rel).stat().st_size}\n".encode())
        return h.hexdigest()

    def decode(self) -> torch.Tensor:
        out = np.empty((len(self), 3, self.image_size, self.image_size), dtype=np.uint8)
        for i, rel in enumerate(self.relpaths):
            out[i] = decode_image(self.base / rel, self.image_size)
            if (i + 1) % 5000 == 0:
                log.info("decoded %d / %d images", i + 1, len(self))
        return torch.from_numpy(out)


def decode_image(path: Path, size: int, crop: bool = True) -> np.ndarray:
    """The shorter side resized to ``size * 256/224`` and the centre ``size`` x ``size`` crop, uint8
    CHW (``crop=False``: the resized image, uncropped)."""
    short = round(size * 256 / 224)
    try:
        with Image.open(path) as im:
            im.draft("RGB", (short, short))  # JPEG: decode at a reduced scale >= the target, much faster
            im = im.convert("RGB")
            scale = short / min(im.size)
            w, h = max(short, round(im.width * scale)), max(short, round(im.height * scale))
            im = im.resize((w, h), Image.Resampling.BILINEAR)
            if not crop:
                return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(f"{path}: cannot decode image ({err}); remove or replace it") from err


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(EXTENSIONS))


def locate(root: Path, image_size: int, *, root_source: str = "") -> dict:
    """List ``train`` and ``val``; returns {split: (ImageFiles, labels)} plus 'classes'."""
    base = root / FOLDER
    missing = [base / s for s in ("train", "val") if not (base / s).is_dir()]
    if missing:
        raise MissingFilesError(
            f"imagenet: folder(s) not found: {', '.join(map(str, missing))}\n"
            f"  (root from: {root_source})\n"
            f"  expected layout: {base}/train/<class dir>/<image>, {base}/val/<class dir>/<image> "
            f"(e.g. n01440764/...JPEG); class index = sorted train class dirs\n"
            f"  get it from: {SOURCE}")
    classes = _class_dirs(base / "train")
    if not classes:
        raise DataError(f"imagenet: {base / 'train'} has no class dirs")
    index = {c: i for i, c in enumerate(classes)}
    stray = [c for c in _class_dirs(base / "val") if c not in index]
    if stray:
        raise DataError(f"imagenet: {base / 'val'} has class dirs not in train: {', '.join(stray[:5])}"
                        f"{' ...' if len(stray) > 5 else ''}")
    per_class = {c: _images(base / "train" / c) for c in classes}
    empty = [c for c, files in per_class.items() if not files]
    if empty:
        raise DataError(f"imagenet: no images ({', '.join(EXTENSIONS)}) in train class dir(s) "
                        f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
    train_rel, train_y = [], []
    for k in range(max(len(f) for f in per_class.values())):  # class-interleaved order
        for c in classes:
            if k < len(per_class[c]):
                train_rel.append(f"train/{c}/{per_class[c][k]}")
                train_y.append(index[c])
    val_rel, val_y = [], []
    for c in _class_dirs(base / "val"):
        for name in _images(base / "val" / c):
            val_rel.append(f"val/{c}/{name}")
            val_y.append(index[c])
    if not val_rel:
        raise DataError(f"imagenet: no images in {base / 'val'}/<class dir>/")
    return {"train": (ImageFiles(base, train_rel, image_size), torch.tensor(train_y, dtype=torch.int64)),
            "test": (ImageFiles(base, val_rel, image_size), torch.tensor(val_y, dtype=torch.int64)),
            "classes": classes}


def memory_limit() -> int:
    env = os.environ.get(MAX_BYTES_ENV)
    if env:
        return int(float(env))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2


def materialize(parts: dict[str, ImageFiles]) -> dict[str, torch.Tensor]:
    """Decode every part, after checking that all of them fit in memory together."""
    need = sum(p.nbytes() for p in parts.values())
    limit = memory_limit()
    if need > limit:
        sizes = ", ".join(f"{k} {len(p)}" for k, p in parts.items())
        size = next(iter(parts.values())).image_size
        raise DataError(
            f"imagenet: {sizes} images at {size}x{size} need {need / 2**30:.1f} GiB as uint8 in memory, "
            f"more than the limit of {limit / 2**30:.1f} GiB (half the available memory, or "
            f"${MAX_BYTES_ENV}). Use data.train_subset, a smaller data.image_size, or raise the limit.")
    return {k: p.decode() for k, p in parts.items()}
