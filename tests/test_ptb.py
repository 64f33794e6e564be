"""The PTB reader on a small generated corpus."""
from __future__ import annotations

import pytest
import torch

from bnnrepro.data.ptb import EOS, batchify, bptt_batches, load_ptb

TRAIN = " the cat sat \n the dog sat \n a <unk> ran \n"
VALID = " the cat ran \n"
TEST = " a bird sat \n"  # 'bird' is not in the training vocabulary -> <unk>


def write(folder, train=TRAIN, valid=VALID, test=TEST):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"ptb.{split}.txt").write_text(text)


def test_vocab_and_ids(tmp_path):
    write(tmp_path)
    ptb = load_ptb(tmp_path)
    # counts: <eos> 3, sat 2, the 2, then a, cat, dog, ran, <unk> once each (ties alphabetical)
    assert ptb.vocab == [EOS, "sat", "the", "<unk>", "a", "cat", "dog", "ran"]
    ids = ptb.word_to_id
    assert ptb.train.tolist() == [ids[w] for w in "the cat sat <eos> the dog sat <eos> a <unk> ran <eos>".split()]
    assert ptb.valid.tolist() == [ids[w] for w in ["the", "cat", "ran", EOS]]
    assert ptb.test.tolist() == [ids["a"], ids["<unk>"], ids["sat"], ids[EOS]]
    assert ptb.train.dtype == torch.int64


def test_finds_subdirectory(tmp_path):
    write(tmp_path / "simple-examples" / "data")
    assert len(load_ptb(tmp_path).vocab) == 8


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="ptb"):
        load_ptb(tmp_path)


def test_unknown_word_without_unk_is_an_error(tmp_path):
    write(tmp_path, train="a b\n", valid="a c\n", test="b\n")
    with pytest.raises(ValueError, match="'c'"):
        load_ptb(tmp_path)


def test_batchify_and_bptt():
    ids = torch.arange(23)
    data = batchify(ids, 4)  # 5 steps per column, tail of 3 dropped
    assert data.shape == (5, 4)
    assert data[:, 1].tolist() == [5, 6, 7, 8, 9]
    batches = list(bptt_batches(data, 3))
    assert [x.shape[0] for x, _ in batches] == [3, 1]
    for x, y in batches:
        assert torch.equal(y, x + 1)
    with pytest.raises(ValueError):
        batchify(torch.arange(5), 4)
