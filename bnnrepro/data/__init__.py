"""Datasets of the 2016 papers, read from their official archives into uint8 tensors in memory.

Layouts under a data root follow torchvision's ``root`` argument (see ``DATASETS[name].layout``);
every file is md5-checked against the official checksums. ``load(name)`` returns :class:`Splits`.
"""
from .archives import CorruptFileError, DataError, MissingFilesError, resolve_root
from .preprocess import PREPROCESSING, gcn, scale_pm1
from .registry import DATASETS, DatasetSpec, names
from .splits import Splits, check, load
from .stream import ImageStream

__all__ = ["DATASETS", "DatasetSpec", "names", "DataError", "MissingFilesError", "CorruptFileError",
           "resolve_root", "scale_pm1", "gcn", "PREPROCESSING", "Splits", "load", "check", "ImageStream"]
