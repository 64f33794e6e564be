"""The dataset registry: what each dataset is, where its files are, and its paper split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import cifar, imagenet, mnist, ptb, svhn
from .archives import Download


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is (classes, input shape, default validation split) and how its files are
    found and read; one per entry of :data:`DATASETS`."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]   # (C, H, W) as stored; ImageNet: at the default image_size
    default_val_size: int               # taken from the END of the official train split
    val_note: str                       # where the default comes from
    # (root, download, *, root_source, use_extra, image_size) -> located files, md5-checked
    locate: Callable[..., Any]
    # located -> {"train": (x, y), "test": (x, y)[, "extra": (x, y)]}
    read: Callable[[Any], dict]
    layout: str                         # where the files go under the root (torchvision's layout)
    supports_extra: bool = False
    # the official splits' image counts (train before the validation cut, test, SVHN's extra), known
    # before any file is read: for validating split and batch sizes, and estimating a run's duration
    sizes: tuple[int, int, int] = (0, 0, 0)
    # files decodable per batch (data.loader=stream, stream.py) instead of held in memory
    can_stream: bool = False
    # "image": classification splits from data.load(); "text": a token corpus the language-model
    # loop reads itself (data/ptb.py); num_classes is then the vocabulary and input_shape (bptt,)
    kind: str = "image"


def _mnist(fashion: bool) -> Callable[..., Any]:
    def locate(root: Path, download: Download, *, root_source: str = "", **_: Any):
        return mnist.locate(root, download, fashion=fashion, root_source=root_source)
    return locate


def _cifar(root: Path, download: Download, *, root_source: str = "", **_: Any):
    return cifar.locate(root, download, root_source=root_source)


def _svhn(root: Path, download: Download, *, root_source: str = "", use_extra: bool = False, **_: Any):
    return svhn.locate(root, download, use_extra=use_extra, root_source=root_source)


def _imagenet(root: Path, download: Download, *, root_source: str = "", image_size: int | None = None, **_: Any):
    return imagenet.locate(root, image_size or imagenet.DEFAULT_IMAGE_SIZE, root_source=root_source)


def _imagenet_read(located: dict) -> dict:
    return {k: located[k] for k in ("train", "test")}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", 10, (1, 28, 28), 10_000, "BNN Theano mnist.py: train 0-50k, validation 50k-60k",
        _mnist(False), mnist.read, "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
        sizes=(60_000, 10_000, 0)),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, (1, 28, 28), 10_000, "as MNIST: train 0-50k, validation 50k-60k",
        _mnist(True), mnist.read,
        "<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], "
        f"or Debian's {mnist.DEBIAN_FASHION_DIR}/*.gz", sizes=(60_000, 10_000, 0)),
    "cifar10": DatasetSpec(
        "cifar10", 10, (3, 32, 32), 5_000, "BNN Theano cifar10.py: 45k train / last 5k validation",
        _cifar, cifar.read, "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} or <root>/cifar-10-python.tar.gz",
        sizes=(50_000, 10_000, 0)),
    "svhn": DatasetSpec(
        "svhn", 10, (3, 32, 32), 6_000,
        "last 6,000 of train_32x32.mat (pylearn2's 'valid', which BNN Theano used, is 400/class from "
        "train + 200/class from extra; with use_extra, extra is appended to the training part only)",
        _svhn, svhn.read, "<root>/{train,test,extra}_32x32.mat", supports_extra=True,
        sizes=(73_257, 26_032, 531_131)),
    "imagenet": DatasetSpec(
        "imagenet", 1000, (3, imagenet.DEFAULT_IMAGE_SIZE, imagenet.DEFAULT_IMAGE_SIZE), 0,
        "none: the official val folder is the test split", _imagenet, _imagenet_read,
        "<root>/imagenet/{train,val}/<class dir>/<image>", sizes=(1_281_167, 50_000, 0), can_stream=True),
    # the vocabulary of Mikolov's files (10k words with <unk>, <eos>); a corpus read has its own
    "ptb": DatasetSpec(
        "ptb", 10_000, (35,), 0, "none: ptb.valid.txt is the validation split", ptb.locate, ptb.read,
        "<root>/{.,ptb,PTB,simple-examples/data}/ptb.{train,valid,test}.txt", kind="text"),
}


def names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(DATASETS)


def get(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; ValueError listing the allowed names when unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset {name!r} is unknown; allowed: {', '.join(names())}") from None
