"""ImageNet that streams (``data.loader=stream``): JPEGs decoded per batch by DataLoader worker
processes instead of whole splits held in memory (ImageNet at 224 px would need ~190 GB).

An :class:`ImageStream` stands where the memory path's uint8 tensor stands -- ``len``, ``shape``,
slicing ``[lo:hi]`` and ``.to(device)`` behave alike -- so the loop's batching and evaluation take
either. Batches are still chosen by the loop (the epoch order, a pure function of seed and epoch, and
under torchrun each rank's shard of every global batch): :meth:`ImageStream.batches` decodes the
index batches it is given, ahead of the consumer, in ``workers`` processes, into pinned memory when
the device is a GPU. (This plays torch's ``DistributedSampler``'s part, ``set_epoch`` included, with
the memory path's semantics: the global batches are the single process's, each rank decodes only
its shard, nothing is padded or dropped.) The images come out as uint8 ``[B, 3, S, S]``, and the
run's ``preprocess`` (``scale``: x * 2/255 - 1) is applied on the device as in the memory path.

Augmentation (train split only, ``data.augment``) is random per *image*: its crop and flip are drawn
from a generator seeded with (seed, epoch, image index), so an epoch's images are the same whatever
the number of workers or processes, a resumed epoch sees exactly the images of the uninterrupted one,
and the seed changes them. Evaluation splits get :func:`imagenet.decode_image`'s transform (shorter
side to ``S * 256/224``, centre crop): the memory path's images, bit for bit.

- ``resized_crop_flip``: fb.resnet.torch / torchvision ``RandomResizedCrop`` (area 8%-100% of the
  image, aspect ratio 3/4-4/3, 10 tries then the centre crop with the ratio clamped), resized to S x S
  bilinearly, then a horizontal flip with probability 1/2 -- tensorpack DoReFa's AlexNet training;
- ``random_crop_flip``: the evaluation resize, then a random S x S crop of it instead of the centre
  one, and the flip -- BinaryNet.pytorch's AlexNet (Scale(256), RandomCrop(224), flip);
- ``none``: the evaluation transform (a stream that trains exactly as the memory path does).

JPEGs are decoded with Pillow's draft mode (libjpeg's DCT scaling by 1/2, 1/4, 1/8) at the smallest
scale that keeps the crop at least S pixels across.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .archives import CorruptFileError
from .imagenet import ImageFiles, decode_image

AUGMENT = ("none", "resized_crop_flip", "random_crop_flip")
LOADERS = ("memory", "stream")
CROP_AREA = (0.08, 1.0)        # RandomResizedCrop's share of the image's area
CROP_RATIO = (3 / 4, 4 / 3)    # ... and its range of aspect ratios (width / height)
CROP_TRIES = 10


def check_augment(name: str) -> None:
    if name not in AUGMENT:
        raise ValueError(f"augment={name!r} is unknown; allowed: {', '.join(AUGMENT)}")


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of image ``index``'s augmentation in ``epoch``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def resized_crop_box(width: int, height: int, rng: np.random.Generator,
                     area=CROP_AREA, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random crop, as torchvision's ``RandomResizedCrop.get_params``."""
    total = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target = total * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    shape = width / height  # no try fitted: the whole image, its ratio clamped into the range
    if shape < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif shape > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _chw(im: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def decode_resized_crop(path, size: int, rng: np.random.Generator) -> np.ndarray:
    """A :func:`resized_crop_box` crop of the image at ``path``, resized to ``size`` x ``size``,
    flipped with probability 1/2; uint8 CHW."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            left, top, w, h = resized_crop_box(width, height, rng)
            flip = rng.random() < 0.5
            # JPEG: decode at a reduced scale that keeps the crop >= size pixels across
            im.draft("RGB", (max(1, width * size // w), max(1, height * size // h)))
            fx, fy = im.size[0] / width, im.size[1] / height
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR,
                                          box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))
            if flip:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return _chw(im)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(f"{path}: cannot decode image ({err}); remove or replace it") from err


def decode_random_crop(path, size: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`decode_image`'s resize with a random ``size`` x ``size`` crop instead of the centre
    one, flipped with probability 1/2."""
    full = decode_image(path, size, crop=False)
    h, w = full.shape[1:]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    out = full[:, top:top + size, left:left + size]
    if rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


class _Decode(torch.utils.data.Dataset):
    """Image ``i`` of a file list, as a uint8 CHW tensor (what a DataLoader worker runs)."""

    def __init__(self, files: ImageFiles, augment: str, seed: int, epoch: int):
        self.files, self.augment, self.seed, self.epoch = files, augment, seed, epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        path, size = self.files.base / self.files.relpaths[i], self.files.image_size
        if self.augment == "none":
            image = np.ascontiguousarray(decode_image(path, size))
        elif self.augment == "resized_crop_flip":
            image = decode_resized_crop(path, size, image_rng(self.seed, self.epoch, i))
        else:
            image = decode_random_crop(path, size, image_rng(self.seed, self.epoch, i))
        return torch.from_numpy(image)


@dataclass
class ImageStream:
    """One split of an image folder, decoded batch by batch (see the module's docstring)."""

    files: ImageFiles
    workers: int = 0              # DataLoader worker processes; 0: decode in this process
    augment: str = "none"         # train split: see AUGMENT
    seed: int = 0
    epoch: int = 0                # the augmentation's epoch: set_epoch() before each epoch
    pin_memory: bool = False      # set by .to(a CUDA device)

    def __post_init__(self) -> None:
        check_augment(self.augment)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers={self.workers!r} must be an integer >= 0")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape the split would have as one uint8 tensor."""
        return (len(self.files), 3, self.files.image_size, self.files.image_size)

    def __getitem__(self, index: slice) -> "ImageStream":
        if not isinstance(index, slice):
            raise TypeError("an ImageStream is sliced [lo:hi]; its images come from batches()")
        return replace(self, files=self.files[index])

    def to(self, device, non_blocking: bool = False) -> "ImageStream":
        """The stream whose batches are made for ``device`` (pinned host memory for a GPU)."""
        return replace(self, pin_memory=torch.device(device).type == "cuda")

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next batches draw (DistributedSampler's contract)."""
        self.epoch = int(epoch)

    def batches(self, index_batches: Iterable) -> Iterator[torch.Tensor]:
        """uint8 ``[len(idx), 3, S, S]`` for each index batch ``idx`` (int tensors or lists; an empty
        one gives an empty batch), decoded ahead by the workers, in order."""
        index_batches = [torch.as_tensor(idx).flatten().tolist() for idx in index_batches]
        empty = torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        loadable = [idx for idx in index_batches if idx]
        loader = torch.utils.data.DataLoader(
            _Decode(self.files, self.augment, self.seed, self.epoch), batch_sampler=loadable,
            num_workers=min(self.workers, len(loadable)), pin_memory=self.pin_memory,
            # the loader's own generator (it draws a seed for its workers per pass): the training's
            # global one (dropout, stochastic quantizers) stays as with data in memory
            generator=torch.Generator())
        loaded = iter(loader)
        for idx in index_batches:
            yield next(loaded) if idx else empty
