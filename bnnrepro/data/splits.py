"""``load()``: official files -> train / validation / test uint8 tensors in memory + a preprocess callable."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import imagenet, stream
from .archives import Download, Found, download_mode, resolve_root_with_source
from .preprocess import build as build_preprocess
from .preprocess import check_name as check_preprocessing
from .registry import DatasetSpec, get


@dataclass
class Splits:
    name: str
    train_x: torch.Tensor   # uint8 [N, C, H, W], the whole split in memory (loader=stream: an ImageStream)
    train_y: torch.Tensor   # int64 [N]
    val_x: torch.Tensor     # may be empty (N = 0)
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocess: Callable[[torch.Tensor], torch.Tensor]  # batch-wise uint8 -> float32
    info: dict              # files used, md5s, split sizes, preprocessing: goes into the run's record


def _check_loader(spec: DatasetSpec, loader: str, augment: str, preprocessing: str) -> None:
    if loader not in stream.LOADERS:
        raise ValueError(f"loader={loader!r} is unknown; allowed: {', '.join(stream.LOADERS)}")
    stream.check_augment(augment)
    if loader == "stream" and not spec.can_stream:
        raise ValueError(f"loader='stream' decodes image folders per batch; {spec.name} is read whole from its "
                         f"archives: allowed: memory")
    if augment != "none" and loader != "stream":
        raise ValueError(f"augment={augment!r} needs loader='stream' (the memory path holds one decoded "
                         "centre crop per image); allowed with memory: none")
    if loader == "stream" and preprocessing == "zca":
        raise ValueError("preprocessing='zca' is fitted on the whole train split in memory; with loader='stream' "
                         "allowed: scale, gcn")


def _check_options(spec: DatasetSpec, val_size, train_subset, use_extra, image_size) -> None:
    for field, value in (("val_size", val_size), ("train_subset", train_subset), ("image_size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{field}={value!r} must be an integer or None")
    if val_size is not None and val_size < 0:
        raise ValueError(f"val_size={val_size} must be >= 0")
    if train_subset is not None and train_subset <= 0:
        raise ValueError(f"train_subset={train_subset} must be positive")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size={image_size} must be positive")
    if use_extra and not spec.supports_extra:
        raise ValueError(f"use_extra=True is only for svhn, not {spec.name}")


def _resize(x: torch.Tensor, size: int, chunk: int = 8192) -> torch.Tensor:
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        f = F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out[i:i + chunk] = f.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _files_record(located) -> dict:
    return {rel: f.record() for rel, f in located.items() if isinstance(f, Found)}


def load(name: str, root: str | os.PathLike | None = None, *, download: Download = "auto",
         val_size: int | None = None, preprocessing: str = "scale", train_subset: int | None = None,
         use_extra: bool = False, image_size: int | None = None, loader: str = "memory", workers: int = 0,
         augment: str = "none", seed: int = 0) -> Splits:
    """Load a dataset's train / validation / test splits as uint8 tensors.

    Validation is the last ``val_size`` examples of the official train split (``None``: the
    paper's default, see ``DATASETS[name].val_note``); ``train_subset`` keeps the first k of what
    remains (after SVHN's extra is appended). ``preprocess`` is applied by the caller per batch.
    ``loader='stream'`` (image folders): the splits are :class:`stream.ImageStream` s decoded per batch
    by ``workers`` processes, the train split with ``augment`` drawn from ``seed`` and the epoch.
    Raises ValueError for bad options (before touching any file) and DataError for file problems.
    """
    spec = get(name)
    check_preprocessing(preprocessing)
    mode = download_mode(download)
    _check_options(spec, val_size, train_subset, use_extra, image_size)
    _check_loader(spec, loader, augment, preprocessing)
    root_path, root_source = resolve_root_with_source(root)

    located = spec.locate(root_path, mode, root_source=root_source, use_extra=use_extra, image_size=image_size)
    parts = spec.read(located)
    train_x, train_y = parts["train"]
    test_x, test_y = parts["test"]

    n = len(train_x)
    v = spec.default_val_size if val_size is None else val_size
    if v >= n:
        raise ValueError(f"val_size={v} leaves no training examples: {name}'s train split has {n}")
    val_x, val_y = train_x[n - v:], train_y[n - v:]
    train_x, train_y = train_x[:n - v], train_y[:n - v]
    n_extra = 0
    if "extra" in parts:
        n_extra = len(parts["extra"][0])
        train_x = torch.cat([train_x, parts["extra"][0]])
        train_y = torch.cat([train_y, parts["extra"][1]])
    if train_subset is not None:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]

    files: dict = _files_record(located)
    resized_to = image_size
    if isinstance(train_x, imagenet.ImageFiles):
        resized_to = train_x.image_size
        lazy = {"train": train_x, "val": val_x, "test": test_x}
        files = {k: {"folder": str(p.base), "images": len(p), "sha1(relpath, size)": p.fingerprint()}
                 for k, p in lazy.items()}
        if loader == "stream":
            train_x = stream.ImageStream(train_x, workers, augment, seed)
            val_x, test_x = stream.ImageStream(val_x, workers), stream.ImageStream(test_x, workers)
        else:
            decoded = imagenet.materialize(lazy)
            train_x, val_x, test_x = decoded["train"], decoded["val"], decoded["test"]
    elif image_size is not None and image_size != train_x.shape[-1]:
        train_x, val_x, test_x = (_resize(x, image_size) for x in (train_x, val_x, test_x))
    else:  # own the memory: a view into the whole official train tensor keeps all of it alive
        train_x = train_x.clone() if train_subset is not None else train_x
        val_x = val_x.clone()
    train_y, val_y = train_y.clone(), val_y.clone()

    num_classes = len(located["classes"]) if "classes" in located else spec.num_classes
    preprocess, preprocess_info = build_preprocess(preprocessing, train_x)
    info = {
        "dataset": name,
        "root": str(root_path),
        "root_source": root_source,
        "download": str(mode),
        "layout": spec.layout,
        "files": files,
        "sizes": {"train": len(train_x), "val": len(val_x), "test": len(test_x)},
        "val_size": v,
        "val_from": f"last {v} of the official train split" + ("" if val_size is not None else
                                                              f" (paper default: {spec.val_note})"),
        "extra_in_train": n_extra,
        "train_subset": train_subset,
        "input_shape": list(train_x.shape[1:]),
        "resized_to": resized_to,
        "preprocessing": preprocess_info,
    }
    if loader == "stream":
        info["loader"] = {"name": "stream", "workers": workers, "augment": augment}
    return Splits(name, train_x, train_y, val_x, val_y, test_x, test_y, num_classes,
                  tuple(train_x.shape[1:]), preprocess, info)


def check(name: str, root: str | os.PathLike | None = None, download: Download = False, *,
          use_extra: bool = False) -> dict:
    """Verify the files are present with the official md5s, without decoding them. Returns what
    :func:`load` would record under ``info['files']`` (ImageNet: the class count and image counts)."""
    spec = get(name)
    _check_options(spec, None, None, use_extra, None)
    root_path, root_source = resolve_root_with_source(root)
    located = spec.locate(root_path, download_mode(download), root_source=root_source, use_extra=use_extra)
    if "classes" in located:
        return {"classes": len(located["classes"]), "train": len(located["train"][0]),
                "val": len(located["test"][0])}
    return _files_record(located)
