"""Data-parallel training (torchrun, DDP, gloo on CPU) and the GPU-path knobs, tested on CPU.

- 2 processes follow the loss curve of 1 process with the same global batch (uneven shards included);
- only rank 0 writes: one run directory, the same files a single process writes;
- a distributed run resumes exactly (every rank's RNG state is in the checkpoint);
- bf16 autocast and channels_last run on CPU and keep latent weights fp32.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnrepro import runs as run_files
from bnnrepro.train import fit, load_model
from conftest import compose

# The float (identity weights, htanh) MLP with SGD: no sign to flip, no Adam normalization of near-zero
# gradients, no max-pool argmax, so 1 and 2 processes agree to float rounding. (With sign weights and
# Adam, a last-bit difference in a near-zero gradient becomes a full Adam step and can flip a binary
# weight; in a conv net, a last-bit difference can move a max-pool's argmax between near-equal values.
# Such curves agree closely, not to rounding, so the cross-process equivalence is checked on this
# net, and BatchNorm2d's global statistics by test_global_batchnorm_matches_batchnorm.)
# Global batch 99 over 290 examples: shards of 50/49, 50/49, 46/46 -- the weighting by shard size is
# exercised. No dropout: each rank draws its own masks.
FLOAT_NET = ["+paper=bnn", "scale=smoke", "scale.train_subset=290", "scale.epochs=2",
             "data.val_size=1000", "train.batch_size=99", "train.num_threads=1", "train.progress=false",
             "quant.weight=identity", "quant.activation=htanh", "optim.name=sgd", "optim.lr=0.01",
             "model.dropout_in=0", "model.dropout_hidden=0"]


def _torchrun(args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "bnnrepro", "train", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("shape", [(8, 5), (8, 5, 3), (8, 5, 4, 4)])
def test_global_batchnorm_matches_batchnorm(shape, monkeypatch):
    """GlobalBatchNorm's arithmetic (outputs, input/parameter gradients, running statistics, unbiased
    variance, momentum) equals torch's BatchNorm on the same batch. One process: its all-reduce over a
    1-rank gloo group is the identity, so the batch is the "global" batch."""
    import torch.distributed as dist
    import torch.nn as nn

    from bnnrepro.train.distributed import GlobalBatchNorm, convert_batchnorm

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)  # take the distributed branch
        cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
        torch.manual_seed(0)
        ref = cls(5, eps=1e-4, momentum=0.1)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
        glob = convert_batchnorm(nn.Sequential(cls(5, eps=1e-4, momentum=0.1)))[0]
        assert isinstance(glob, GlobalBatchNorm)
        glob.load_state_dict(ref.state_dict())
        x = torch.randn(*shape, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        w = torch.randn(*shape)
        for _ in range(2):
            out_ref, out = ref(x), glob(x2)
            (out_ref * w).sum().backward()
            (out * w).sum().backward()
            torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(glob.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(glob.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(glob, name), getattr(ref, name), rtol=1e-6, atol=1e-7)
        glob.eval()
        ref.eval()
        torch.testing.assert_close(glob(x2), ref(x), rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_one_process_and_only_rank0_writes(mnist_root, runs_dir):
    common = FLOAT_NET + [f"data.root={mnist_root}"]
    one = fit(compose(common + ["run_name=one"]))
    out = _torchrun(common + ["run_name=two"])
    assert out.returncode == 0, out.stderr[-3000:]
    two = runs_dir / "two"
    # one rank reports; one run directory; the files of a single-process run, nothing more
    assert [line for line in out.stdout.splitlines() if line.startswith("run: ")] == [f"run: {two}"]
    assert sorted(p.name for p in runs_dir.iterdir()) == ["one", "two"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert out.stderr.count("epoch    1/2") == 1  # rank 1 prints nothing per epoch
    a, b = _rows(one), _rows(two)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)
        assert rb["test_loss"] == pytest.approx(ra["test_loss"], rel=1e-4)
        assert abs(rb["val_error"] - ra["val_error"]) <= 0.2 and abs(rb["test_error"] - ra["test_error"]) <= 0.05
        assert abs(rb["test_top5_error"] - ra["test_top5_error"]) <= 0.05  # summed over ranks as top-1
        assert rb["lr"] == ra["lr"]
    ma, mb = (run_files.load_checkpoint(r / "last.pt")["model"] for r in (one, two))
    assert ma.keys() == mb.keys()  # no DDP "module." prefix, BatchNorm keys unchanged
    for key in ma:
        assert torch.allclose(ma[key].float(), mb[key].float(), rtol=1e-4, atol=1e-5), key
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["train_examples"] == 290
    state = run_files.load_checkpoint(two / "last.pt")
    assert len(state["rng"]["ranks"]) == 2  # every rank's generators, for an exact resume
    model, _ = load_model(two)  # a DDP run's checkpoint is a plain model's
    assert not any("Sync" in type(m).__name__ or "Global" in type(m).__name__ for m in model.modules())


def test_distributed_run_resumes_exactly(mnist_root, runs_dir):
    """BNN with dropout (each rank's own RNG stream) and shift-based BN (statistics per shard):
    resuming after epoch 2 of 3 under torchrun gives exactly the uninterrupted distributed run, and
    the test error it reports is the one its checkpoint gives when evaluated alone."""
    common = ["+paper=bnn", "scale=smoke", "scale.train_subset=400", "scale.epochs=3", "data.val_size=1000",
              "model.batchnorm=shift", "train.num_threads=1", "train.progress=false", f"data.root={mnist_root}"]
    out = _torchrun(common + ["run_name=full"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "shift normalizes each rank's shard with its own statistics" in out.stderr
    full, cut = runs_dir / "full", runs_dir / "cut"
    from bnnrepro import data
    from bnnrepro.train.batches import evaluate

    model, _ = load_model(full, which="last")
    splits = data.load("mnist", mnist_root, val_size=1000, train_subset=400)
    alone = evaluate(model, splits.test_x, splits.test_y, splits.preprocess, 1000)
    assert alone["error"] == _rows(full)[-1]["test_error"]
    # the state of a run killed during epoch 3: epoch 2's checkpoint, epoch 3 not finished
    shutil.copytree(full, cut)
    (cut / "summary.json").unlink()
    os.replace(cut / "previous.pt", cut / "last.pt")
    config = cut / "config.yaml"
    config.write_text(config.read_text().replace("run_name: full", "run_name: cut"))
    out = _torchrun([f"resume={cut}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stderr and "after epoch 2" in out.stderr
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(_rows(full)) == strip(_rows(cut))
    ma, mb = (run_files.load_checkpoint(r / "last.pt")["model"] for r in (full, cut))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_bf16_autocast_and_channels_last_on_cpu(mnist_root, runs_dir):
    """The GPU knobs run on CPU: bf16 autocast on a conv BNN with channels_last; latent weights,
    optimizer state and checkpoints stay fp32; the binarized weights the convs see are exactly +-1."""
    cfg = compose(["+paper=bnn", "model=bnn_convnet", "scale=smoke", "scale.train_subset=300", "scale.epochs=1",
                   "data.val_size=1000", "train.num_threads=1", "train.progress=false", "train.amp=bf16",
                   "train.channels_last=true", f"data.root={mnist_root}", "run_name=bf16"])
    run = fit(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["images_per_s"] > 0
    state = run_files.load_checkpoint(run / "last.pt")
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    assert all(s["exp_avg"].dtype == torch.float32 for s in state["optimizer"]["state"].values())

    from bnnrepro.nn import QuantConv2d

    model, _ = load_model(run, which="last")
    model = model.to(memory_format=torch.channels_last).train()
    seen = {}
    conv = next(m for m in model.modules() if isinstance(m, QuantConv2d))
    conv.register_forward_hook(lambda m, inp, out: seen.update(out=out.dtype, w=m.weight.dtype))
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert seen == {"out": torch.bfloat16, "w": torch.float32}  # bf16 compute, fp32 latent weights
    assert torch.isfinite(y.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = conv.quantized_weight()  # the quantizer runs on the fp32 latent weight
    assert q.dtype == torch.float32 and set(q.unique().tolist()) <= {-1.0, 1.0}  # exact in bf16 too


def test_compile_knob_wraps_the_training_forward(mnist_root, runs_dir, monkeypatch):
    """train.compile=true hands the training model to torch.compile (here the cheap 'eager' backend:
    dynamo traces the quantizers' autograd Functions, no C++ compiler needed); results unchanged."""
    calls = []
    real = torch.compile

    def compile_eager(model, **kwargs):
        calls.append(type(model).__name__)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    common = ["+paper=bnn", "scale=smoke", "scale.train_subset=200", "scale.epochs=1", "data.val_size=500",
              "train.num_threads=1", "train.progress=false", "model.dropout_in=0", "model.dropout_hidden=0",
              f"data.root={mnist_root}"]
    plain = fit(compose(common + ["run_name=plain"]))
    compiled = fit(compose(common + ["run_name=compiled", "train.compile=true"]))
    assert calls == ["Sequential"]
    a, b = _rows(plain)[0], _rows(compiled)[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
