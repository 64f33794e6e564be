"""Does the language-model loop learn real English? PTB is not on this machine, so this trains the
QNN PTB LSTM preset on the GNU GPL version 3 (``/usr/share/common-licenses/GPL-3``, shipped by
Debian's base-files package on every Debian/Ubuntu system) and compares its test perplexity with
the unigram perplexity of the same split.

    PYTHONPATH=. python scripts/lm_real_text.py [--epochs 12] [--text FILE] [--out DIR] [key=value ...]

The corpus, written in PTB's format (``ptb.{train,valid,test}.txt``: one line per source line, a
leading space, words separated by spaces, ``<unk>`` for rare words, lines ending in `` \\n``):

* tokens: each non-empty line lowercased, its words (letters, with an inner apostrophe) and numbers
  (each written ``N``, as PTB does); punctuation dropped, as in PTB;
* split by lines, interleaved so the three have the same mix of sections: of every 10 non-empty
  lines (in file order), the 9th goes to valid, the 10th to test, the other 8 to train;
* vocabulary from train: words seen at least twice in train; every other word becomes ``<unk>`` in
  all three splits (so ``<unk>`` is itself a trained word, as in PTB).

The unigram baseline is the maximum-likelihood unigram of the train tokens (``<eos>`` included),
scored on the test tokens the loop scores (:func:`scored`). The runs are the preset
(``+experiment=qnn_ptb_lstm``: 1 x 300 LSTM, bptt 35, clip 0.25, Adam 1e-3) with 4 columns
(``train.batch_size=4``: the text is ~5k tokens), one thread, ``--epochs`` epochs, at 32/32 and 4/4
bits. Every extra ``key=value`` is a config override for both runs (e.g. ``model.hidden=[128]``). Prints one line per model and the
baseline; the runs stay under ``--out`` (default: a temporary folder, removed).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

TEXT = Path("/usr/share/common-licenses/GPL-3")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+")
MIN_COUNT = 2
# ~5k training tokens: 4 columns give ~35 steps an epoch (the preset's 20 columns, 7)
DEFAULTS = ["train.batch_size=4"]
MODELS = {"float LSTM (32/32)": ["quant.w_bits=32", "quant.a_bits=32"],
          "4-bit LSTM (W4/A4)": ["quant.w_bits=4", "quant.a_bits=4"]}


def tokenize(line: str) -> list[str]:
    return ["N" if w.isdigit() else w for w in WORD.findall(line.lower())]


def split_lines(text: str) -> dict[str, list[list[str]]]:
    lines = [t for t in (tokenize(line) for line in text.splitlines()) if t]
    splits: dict[str, list[list[str]]] = {"train": [], "valid": [], "test": []}
    for i, words in enumerate(lines):
        splits["valid" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(words)
    return splits


def write_corpus(text: str, folder: Path) -> dict[str, list[list[str]]]:
    """The PTB-format files under ``folder``; returns the splits as written (rare words <unk>)."""
    splits = split_lines(text)
    counts = Counter(w for words in splits["train"] for w in words)
    keep = {w for w, n in counts.items() if n >= MIN_COUNT}
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, lines in splits.items():
        written[name] = [[w if w in keep else "<unk>" for w in words] for words in lines]
        (folder / f"ptb.{name}.txt").write_text("".join(f" {' '.join(words)} \n" for words in written[name]))
    return written


def scored(tokens: list[str]) -> list[str]:
    """The tokens of a split the loop scores: it reads the split in ``eval_columns`` contiguous
    columns (the tail dropped) and predicts every token of a column but its first."""
    import torch

    from bnnrepro.data.ptb import batchify
    from bnnrepro.train.lm import eval_columns

    columns = batchify(torch.arange(len(tokens)), eval_columns(len(tokens)))
    return [tokens[i] for i in columns[1:].t().reshape(-1).tolist()]


def unigram_perplexity(splits: dict[str, list[list[str]]]) -> float:
    stream = lambda name: [w for words in splits[name] for w in words + ["<eos>"]]  # noqa: E731
    counts = Counter(stream("train"))
    total = sum(counts.values())
    test = scored(stream("test"))
    return math.exp(-sum(math.log(counts[w] / total) for w in test) / len(test))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, default=TEXT, help=f"an English text file (default {TEXT})")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None, help="keep the corpus and runs here")
    args, overrides = ap.parse_known_args(argv)
    if not args.text.is_file():
        print(f"{args.text} not found (Debian's base-files package ships it)", file=sys.stderr)
        return 2
    from bnnrepro.compose import compose
    from bnnrepro.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        splits = write_corpus(args.text.read_text(encoding="utf-8"), out / "data" / "ptb")
        sizes = {k: sum(len(w) + 1 for w in v) for k, v in splits.items()}
        vocab = len({w for words in splits["train"] for w in words} | {"<eos>"})
        print(f"{args.text}: tokens train {sizes['train']} / valid {sizes['valid']} / test {sizes['test']}, "
              f"vocabulary {vocab} (words seen >= {MIN_COUNT} times in train, the rest <unk>)")
        print(f"unigram test perplexity {unigram_perplexity(splits):.2f}")
        for label, bits in MODELS.items():
            cfg = compose(["+experiment=qnn_ptb_lstm", f"data.root={out / 'data'}", f"runs_dir={out / 'runs'}",
                           f"train.epochs={args.epochs}", "train.num_threads=1", "train.progress=false",
                           *DEFAULTS, *bits, *overrides])
            run = fit(cfg)
            s = json.loads((run / "summary.json").read_text())
            print(f"{label}: test perplexity {s['test_perplexity']:.2f} at best-valid epoch {s['best_epoch']} "
                  f"(valid {s['val_perplexity']:.2f}; last epoch test {s['final_test_perplexity']:.2f}), "
                  f"next-word error {s['test_error']:.1f}%, {s['wall_time_s']:.0f} s, run {run.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
