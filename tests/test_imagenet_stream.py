"""ImageNet that streams (data.loader=stream) on a generated ImageFolder of real JPEGs: batches, the
augmentation's seeding, the evaluation transform, training through it (one process and a 2-process
gloo torchrun), and the multistep LR schedule of the ImageNet presets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnnrepro import data
from bnnrepro.config import validate
from bnnrepro.data import imagenet, stream
from bnnrepro.errors import ConfigError
from bnnrepro.train import fit
from bnnrepro.train.batches import batches, epoch_order
from conftest import compose
from test_schedules import _lrs

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 4, 2  # 6 classes: top-5 is measured


def make_jpegs(root: Path) -> None:
    """``<root>/imagenet/{train,val}/<class>/<image>.JPEG``: smooth gradients plus noise, of varied
    sizes and shapes (one far from square), so crops differ from each other and from the centre."""
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            folder = root / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (20, 120) if (c, i) == (0, 0) else (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
                yy, xx = np.mgrid[0:h, 0:w]
                img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 40 * c)], -1)
                img = (img + rng.integers(0, 50, img.shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"img_{i}.JPEG", quality=90)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    make_jpegs(root)
    return root


def _stream(root, size=32, **kw):
    return data.load("imagenet", root, image_size=size, loader="stream", **kw)


def _all(x: stream.ImageStream, batch=10) -> torch.Tensor:
    n = len(x)
    return torch.cat(list(x.batches(torch.arange(n).split(batch))))


def test_stream_yields_uint8_images_and_their_labels_in_the_epoch_order(jpegs):
    s = _stream(jpegs, workers=2, augment="resized_crop_flip")
    assert isinstance(s.train_x, stream.ImageStream) and s.train_x.shape == (24, 3, 32, 32) and len(s.test_x) == 12
    assert s.num_classes == CLASSES and s.input_shape == (3, 32, 32)
    assert s.info["loader"] == {"name": "stream", "workers": 2, "augment": "resized_crop_flip"}
    raw = list(s.train_x.batches([torch.tensor([3, 0, 7]), torch.tensor([], dtype=torch.int64), [23]]))
    assert [b.shape for b in raw] == [(3, 3, 32, 32), (0, 3, 32, 32), (1, 3, 32, 32)]
    assert all(b.dtype == torch.uint8 for b in raw)
    order = epoch_order(24, 0, 1)
    got = list(batches(s.train_x, s.train_y, 10, s.preprocess, order))
    assert [xb.shape[0] for xb, _ in got] == [10, 10, 4]
    assert all(xb.dtype == torch.float32 and -1 <= xb.min() and xb.max() <= 1 for xb, _ in got)
    assert torch.equal(torch.cat([yb for _, yb in got]), s.train_y[order])
    assert sorted(s.test_y.tolist()) == [c for c in range(CLASSES) for _ in range(VAL_PER_CLASS)]


def test_evaluation_images_are_decode_images_and_the_memory_paths(jpegs):
    s = _stream(jpegs, workers=2, augment="resized_crop_flip")  # augmentation is the train split's only
    memory = data.load("imagenet", jpegs, image_size=32)
    test = _all(s.test_x, batch=5)
    assert torch.equal(test, memory.test_x)
    files = s.test_x.files
    assert torch.equal(test[7], torch.from_numpy(np.ascontiguousarray(
        imagenet.decode_image(files.base / files.relpaths[7], 32))))
    assert torch.equal(_all(s.test_x), test)  # deterministic: a second pass, other batches
    plain = _stream(jpegs)  # augment none: the train split as the memory path holds it
    assert torch.equal(_all(plain.train_x), memory.train_x)
    # a validation cut from train is evaluated, so not augmented
    cut = _stream(jpegs, val_size=6, augment="resized_crop_flip")
    assert torch.equal(_all(cut.val_x), memory.train_x[18:])


def test_augmentation_is_drawn_from_seed_epoch_and_image_only(jpegs):
    def epoch_images(seed, epoch, workers=0):
        x = _stream(jpegs, workers=workers, augment="resized_crop_flip", seed=seed).train_x
        x.set_epoch(epoch)
        return _all(x)

    a = epoch_images(0, 1)
    assert torch.equal(a, epoch_images(0, 1, workers=2))  # the same whatever the workers
    assert not torch.equal(a, epoch_images(1, 1)) and not torch.equal(a, epoch_images(0, 2))
    x = _stream(jpegs, augment="resized_crop_flip").train_x
    x.set_epoch(1)
    shuffled = list(x.batches([torch.tensor([5, 2]), torch.tensor([9])]))
    assert torch.equal(torch.cat(shuffled), a[[5, 2, 9]])  # an image's crop does not depend on its batch
    # crops differ from image to image and from the centre crop
    assert not torch.equal(a, _all(_stream(jpegs).train_x))


def test_resized_crop_box_stays_inside_in_area_and_ratio():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (64, 64), (40, 90)]:
        for _ in range(200):
            left, top, w, h = stream.resized_crop_box(width, height, rng)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            assert 0.08 * width * height * 0.9 <= w * h <= width * height
            assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # no try fits a 1000 x 10 strip: the centre crop with the ratio clamped to 4/3
    assert stream.resized_crop_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)


def test_random_crop_flip_is_a_crop_of_the_resized_image(jpegs):
    path = sorted((jpegs / "imagenet" / "train").rglob("*.JPEG"))[3]
    full = imagenet.decode_image(path, 32, crop=False)
    seen_flip = set()
    for i in range(20):
        out = stream.decode_random_crop(path, 32, stream.image_rng(0, 1, i))
        assert out.shape == (3, 32, 32)
        windows = [full[:, t:t + 32, l:l + 32] for t in range(full.shape[1] - 31) for l in range(full.shape[2] - 31)]
        flips = [np.array_equal(out, win) for win in windows], [np.array_equal(out, win[:, :, ::-1]) for win in windows]
        assert any(flips[0]) or any(flips[1])
        seen_flip.add(any(flips[1]) and not any(flips[0]))
    assert seen_flip == {True, False}


@pytest.mark.parametrize("overrides, message", [
    (["data.loader=stream"], r"data.loader=stream decodes image folders per batch \(imagenet\); mnist .* allowed: memory"),
    (["data.augment=resized_crop_flip"], r"data.augment=resized_crop_flip needs data.loader=stream"),
    (["data.loader=bytes"], r"data.loader='bytes' is not allowed; allowed: memory, stream"),
    (["data.augment=jitter"], r"allowed: none, resized_crop_flip, random_crop_flip"),
    (["data=imagenet", "data.workers=-1"], r"data.workers=-1 must be an integer >= 0"),
    (["data=imagenet", "data.preprocessing=zca"], r"zca .* with data.loader=stream allowed: scale, gcn"),
    (["optim.schedule=multistep", "optim.milestones=[30,20]", "train.epochs=40"], r"must be strictly increasing"),
    (["optim.schedule=multistep", "optim.milestones=[10,40]", "train.epochs=40"], r"from 1 to train.epochs - 1 = 39"),
    (["optim.schedule=multistep", "optim.milestones=[0]"], r"from 1 to train.epochs - 1"),
    (["optim.milestones=[10]"], r"optim.milestones=\[10\] is used by optim.schedule=multistep only, not exponential"),
    (["optim.schedule=multisteps"], r"allowed: exponential, step, multistep, constant"),
    (["optim.weight_decay_on=conv"], r"optim.weight_decay_on='conv' is not allowed; allowed: all, fc_weights"),
])
def test_bad_loader_and_schedule_fields_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


def test_imagenet_presets_stream_and_memory_stays_the_default_elsewhere():
    for preset in ("+experiment=dorefa_alexnet", "+experiment=qnn_alexnet"):
        cfg = compose([preset])
        validate(cfg)
        assert (cfg.data.loader, cfg.data.augment) == ("stream", "resized_crop_flip")
        # the documented pipeline check on MNIST keeps the memory loader
        assert compose([preset, "data=mnist", "data.image_size=64"]).data.loader == "memory"
    cfg = compose(["+paper=bnn"])
    assert (cfg.data.loader, cfg.data.augment, list(cfg.optim.milestones)) == ("memory", "none", [])


def test_dorefa_alexnet_multistep_is_tensorpacks_and_compresses():
    """tensorpack alexnet-dorefa.py: 2e-4, 4e-5 from epoch 61, 8e-6 from epoch 76 (of 90)."""
    cfg = compose(["+experiment=dorefa_alexnet"])
    assert cfg.optim.weight_decay == 5e-6
    assert _lrs(cfg) == pytest.approx([2e-4] * 60 + [4e-5] * 15 + [8e-6] * 15)
    # 90 epochs squeezed into 7: milestones 4.67 and 5.83 act after epochs 5 and 6
    assert _lrs(compose(["+experiment=dorefa_alexnet", "scale.epochs=7", "scale.schedule=compress"])) == \
        pytest.approx([2e-4] * 5 + [4e-5] + [8e-6])
    qnn = _lrs(compose(["+experiment=qnn_alexnet"]))
    assert qnn[19] == 5e-3 and qnn[20] == pytest.approx(5e-3 * 0.2115) and qnn[-1] == pytest.approx(1e-5, rel=1e-3)


def test_dorefa_alexnet_decays_the_fc_weights_only():
    """tensorpack: regularize_cost('fc.*/W', l2_regularizer(5e-6)): fc0, fc1, fct; no conv, bias, BN."""
    from bnnrepro.optim import build_optimizer
    from bnnrepro.train.factory import build_model

    cfg = compose(["+experiment=dorefa_alexnet", "data.image_size=64", "scale=smoke"])
    model = build_model(cfg, (3, 64, 64), 10)
    groups = build_optimizer(model, cfg.optim).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 5e-6 for p in g["params"]}
    fc = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(fc) == 3 and decayed == {id(w) for w in fc}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.0 for g in groups if not any(id(p) in decayed for p in g["params"]))
    everything = build_optimizer(model, compose(["+experiment=dorefa_alexnet", "optim.weight_decay_on=all"]).optim)
    assert all(g["weight_decay"] == 5e-6 for g in everything.param_groups)


# the float MLP with SGD of test_distributed.py, on 16 x 16 crops of the generated JPEGs
FLOAT_NET = ["data=imagenet", "data.image_size=16", "scale=smoke", "scale.epochs=1", "train.batch_size=10",
             "train.eval_batch_size=5", "train.num_threads=1", "train.progress=false", "quant.weight=identity",
             "quant.activation=htanh", "optim.name=sgd", "optim.lr=0.01", "model.dropout_in=0",
             "model.dropout_hidden=0", "data.workers=1"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_one_epoch_of_alexnet_on_the_stream_and_the_memory_path_agree(jpegs, runs_dir):
    """DoReFa's AlexNet (its stochastic gradient quantizer draws from the global generator) trains on
    the stream exactly as on the memory path when the stream does not augment; with augmentation
    it trains, and its test error is measured at top-1 and top-5."""
    common = ["+experiment=dorefa_alexnet", f"data.root={jpegs}", "data.image_size=64", "scale=smoke",
              "scale.epochs=1", "train.batch_size=8", "train.eval_batch_size=6", "train.num_threads=1",
              "train.progress=false", "data.workers=1"]
    memory = fit(compose(common + ["run_name=memory", "data.loader=memory", "data.augment=none"]))
    plain = fit(compose(common + ["run_name=plain", "data.augment=none"]))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(_rows(plain)) == strip(_rows(memory))
    augmented = fit(compose(common + ["run_name=augmented"]))
    row = _rows(augmented)[0]
    assert row["train_loss"] != _rows(plain)[0]["train_loss"]
    assert np.isfinite(row["train_loss"]) and 0 <= row["test_top5_error"] <= row["test_error"] <= 100
    summary = json.loads((augmented / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train_examples"] == 24
    assert summary["data"]["loader"]["augment"] == "resized_crop_flip"
    from bnnrepro import evaluate

    alone = evaluate.run(str(augmented), {"batch_size": 5})  # `bnnrepro eval` streams it too
    assert alone["n"] == 12 and alone["error"] == summary["test_error"]
    assert alone["top5_error"] == summary["test_top5_error"]


def test_two_process_torchrun_on_the_jpegs_follows_one_process(jpegs, runs_dir):
    """The issue's CI acceptance: 2 gloo processes (torchrun) train an epoch on the streamed JPEGs.
    Each image's crop is drawn from (seed, epoch, image), and each rank decodes its shard of every
    global batch, so the 2 processes see the single process's augmented batches: the curves agree to
    float rounding."""
    common = FLOAT_NET + [f"data.root={jpegs}"]
    one = fit(compose(common + ["run_name=one"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "bnnrepro", "train", *common, "run_name=two", "device=cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = runs_dir / "two"
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["data"]["loader"] == {"name": "stream", "workers": 1, "augment": "resized_crop_flip"}
    (a,), (b,) = _rows(one), _rows(two)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
    assert b["test_error"] == a["test_error"] and b["test_top5_error"] == a["test_top5_error"]


def test_a_streamed_run_resumes_exactly(jpegs, runs_dir):
    """The epoch order and every crop are functions of (seed, epoch, image): a run stopped after
    epoch 1 of 2 and resumed trains epoch 2 on the uninterrupted run's images, to the bit."""
    import shutil

    full = fit(compose(FLOAT_NET + [f"data.root={jpegs}", "scale.epochs=2", "data.workers=0", "run_name=full"]))
    cut = runs_dir / "cut"
    shutil.copytree(full, cut)
    (cut / "summary.json").unlink()
    os.replace(cut / "previous.pt", cut / "last.pt")
    config = cut / "config.yaml"
    config.write_text(config.read_text().replace("run_name: full", "run_name: cut"))
    fit(compose([f"resume={cut}"]))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(_rows(cut)) == strip(_rows(full)) and len(_rows(full)) == 2
    from bnnrepro.train.loop import _resume_overrides

    assert _resume_overrides([f"resume={cut}", "data.workers=3"]) == ["data.workers"]  # computes nothing


def test_a_corrupt_jpeg_decoded_by_a_worker_is_named(jpegs, tmp_path):
    import shutil

    shutil.copytree(jpegs / "imagenet", tmp_path / "imagenet")
    (tmp_path / "imagenet" / "train" / "n00000002" / "zz_broken.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    s = _stream(tmp_path, workers=1, augment="resized_crop_flip")
    with pytest.raises(data.CorruptFileError, match="zz_broken.JPEG: cannot decode image"):
        _all(s.train_x)
