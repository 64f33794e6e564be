"""Penn Treebank, word level (Mikolov's ``simple-examples/data/ptb.{train,valid,test}.txt``).

Each line's whitespace-separated words followed by ``<eos>``; the vocabulary comes from the training
split, ordered by decreasing count then alphabetically (as TensorFlow's PTB reader), so ids are
deterministic. The files already map rare words to ``<unk>``; a valid/test word missing from the
vocabulary becomes ``<unk>`` when the vocabulary has it, and is an error otherwise.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

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


def load_ptb(root: str | Path) -> PTB:
    folder = find_dir(root)
    train_words = read_words(folder / "ptb.train.txt")
    vocab = build_vocab(train_words)
    index = {w: i for i, w in enumerate(vocab)}
    return PTB(train=to_ids(train_words, index), valid=to_ids(read_words(folder / "ptb.valid.txt"), index),
               test=to_ids(read_words(folder / "ptb.test.txt"), index), vocab=vocab)


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
