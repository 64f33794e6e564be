"""Penn Treebank, word level (Mikolov's ``simple-examples/data/ptb.{train,valid,test}.txt``).

Each line's whitespace-separated words followed by ``<eos>``; the vocabulary comes from the training
split, ordered by decreasing count then alphabetically (as TensorFlow's PTB reader), so ids are
deterministic. The files already map rare words to ``<unk>``; a valid/test word missing from the
vocabulary becomes ``<unk>`` when the vocabulary has it, and is an error otherwise.

No md5 is checked: no official per-file checksum is known here with confidence, and the same reader
serves any corpus written in this format (tests/test_lm.py, scripts/lm_real_text.py). Each file's
md5 and size go into the run's record instead (``info["files"]``), so a run says what it read.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import MissingFilesError
from .archives import FileSpec, Found, file_md5

EOS, UNK = "<eos>", "<unk>"
SPLITS = ("train", "valid", "test")
# where the three files may sit under a data root
SUBDIRS = (".", "ptb", "PTB", "simple-examples/data")


@dataclass
class PTB:
    train: torch.Tensor  # 1-D int64 token ids
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]

    @property
    def word_to_id(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}


def read_words(path: Path) -> list[str]:
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words += line.split() + [EOS]
    return words


def build_vocab(words: list[str]) -> list[str]:
    counts = Counter(words)
    return sorted(counts, key=lambda w: (-counts[w], w))


def to_ids(words: list[str], word_to_id: dict[str, int]) -> torch.Tensor:
    unk = word_to_id.get(UNK)
    ids = []
    for w in words:
        i = word_to_id.get(w, unk)
        if i is None:
            raise ValueError(f"word {w!r} is not in the training vocabulary, which has no {UNK}")
        ids.append(i)
    return torch.tensor(ids, dtype=torch.int64)


def find_dir(root: str | Path) -> Path:
    for sub in SUBDIRS:
        folder = Path(root) / sub
        if all((folder / f"ptb.{s}.txt").is_file() for s in SPLITS):
            return folder
    raise FileNotFoundError(
        f"ptb.{{train,valid,test}}.txt not found under {root} (looked in {', '.join(SUBDIRS)})")


def locate(root: Path, download=False, *, root_source: str = "", **_) -> dict[str, Found]:
    """The three files under ``root`` (see :data:`SUBDIRS`), with their md5s; never downloads
    (Mikolov's archive has no stable official URL). MissingFilesError says where they go."""
    try:
        folder = find_dir(root)
    except FileNotFoundError:
        raise MissingFilesError(
            f"ptb: ptb.{{train,valid,test}}.txt not found under the data root {root} (root from: {root_source or 'argument'}; "
            f"looked in {', '.join(SUBDIRS)}); nothing is downloaded: put Mikolov's simple-examples/data/ptb.*.txt "
            f"at {Path(root) / 'ptb'}/") from None
    found = {}
    for split in SPLITS:
        path = folder / f"ptb.{split}.txt"
        rel = str(path.relative_to(root))  # find_dir's folders are root / sub
        found[rel] = Found(path, file_md5(path), FileSpec(rel, ""))
    return found


def read(located: dict[str, Found]) -> PTB:
    """The corpus of :func:`locate`'s files (the dataset registry's reader)."""
    paths = {Path(rel).name: f.path for rel, f in located.items()}
    return read_folder({split: paths[f"ptb.{split}.txt"] for split in SPLITS})


def read_folder(paths: dict[str, Path]) -> PTB:
    """The corpus of the ``train``, ``valid`` and ``test`` files, the vocabulary from train."""
    train_words = read_words(paths["train"])
    vocab = build_vocab(train_words)
    index = {w: i for i, w in enumerate(vocab)}
    return PTB(train=to_ids(train_words, index), valid=to_ids(read_words(paths["valid"]), index),
               test=to_ids(read_words(paths["test"]), index), vocab=vocab)


def load_ptb(root: str | Path) -> PTB:
    folder = find_dir(root)
    return read_folder({split: folder / f"ptb.{split}.txt" for split in SPLITS})


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(T, B): the token stream cut into ``batch_size`` contiguous columns, the tail dropped."""
    steps = ids.numel() // batch_size
    if steps < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for batch size {batch_size}")
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_batches(data: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input, target) slices of at most ``bptt`` steps; target is the input shifted by one token."""
    for start in range(0, data.shape[0] - 1, bptt):
        length = min(bptt, data.shape[0] - 1 - start)
        yield data[start:start + length], data[start + 1:start + 1 + length]
