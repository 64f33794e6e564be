"""Top-1 and top-5 error: exact on hand-made logits, absent for a 2-class model, recorded by a smoke run."""
import json

import torch

from bnnrepro.train import fit
from bnnrepro.train.batches import evaluate
from conftest import compose


class Fixed(torch.nn.Module):
    """A 'model' whose output for input i is row i of ``logits`` (the input holds the row index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[x.long().reshape(-1)]


def _errors(logits, labels, batch_size=2):
    x = torch.arange(len(labels)).reshape(-1, 1)
    return evaluate(Fixed(logits), x, torch.tensor(labels), lambda b: b, batch_size)


def test_top1_and_top5_errors_of_known_logits():
    ranks = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]  # class c ranks c-th (0: top)
    logits = [ranks] * 4
    # label 0: right at top-1; 3: wrong at top-1, right at top-5; 4: the 5th, still top-5; 5: wrong at both
    result = _errors(logits, [0, 3, 4, 5])
    assert result["error"] == 75.0
    assert result["top5_error"] == 25.0


def test_ties_count_for_the_true_class():
    # six classes tie at the top: the true one is within the top 5 (and it is argmax's pick)
    result = _errors([[1.0] * 6 + [0.0] * 4], [0])
    assert result["error"] == 0.0 and result["top5_error"] == 0.0


def test_a_two_class_model_has_no_top5():
    result = _errors([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [0, 0, 0])
    assert abs(result["error"] - 100 / 3) < 1e-9
    assert result["top5_error"] is None


def test_smoke_run_records_top5(mnist_root, runs_dir):
    run = fit(compose(["+paper=bnn", "scale=smoke", "scale.train_subset=300", "scale.epochs=1",
                       "data.val_size=1000", "train.num_threads=1", "train.progress=false",
                       f"data.root={mnist_root}"]))
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        assert row["test_top5_error"] <= row["test_error"] and row["val_top5_error"] <= row["val_error"]
    assert summary["test_top5_error"] == rows[summary["best_epoch"] - 1]["test_top5_error"]
    assert summary["final_test_top5_error"] == rows[-1]["test_top5_error"]
    assert 0 <= summary["test_top5_error"] <= summary["test_error"]

    # bnnrepro eval: the torch engine gives the summary's number, the packed engine its own logits' top-5
    from bnnrepro import evaluate as eval_command

    opts = {"engine": "torch", "split": "test", "which": "best", "data.root": str(mnist_root), "batch_size": 1000}
    by_torch = eval_command.run(str(run), opts)
    by_packed = eval_command.run(str(run), {**opts, "engine": "packed"})
    assert by_torch["top5_error"] == summary["test_top5_error"]
    assert abs(by_packed["top5_error"] - by_torch["top5_error"]) <= 0.05  # float logits: a near-tie may differ
    assert by_packed["top5_error"] <= by_packed["error"]
