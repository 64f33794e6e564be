"""Images per second of the streaming ImageNet loader (``data.loader=stream``) on this machine.

Writes an ImageFolder of generated ImageNet-like JPEGs (500 x 375 and 375 x 500, smooth colour
fields plus noise, quality 90: about the size and decode cost of an average ILSVRC-2012 photo)
unless the folder exists, then times full passes of the loader over it -- the training transform
(random-resized crop + flip) and the evaluation transform (resize 256, centre crop 224) -- with the
loop's batching (``train.batches``, ``preprocess`` included), nothing else running in it:

    python scripts/stream_throughput.py [--root /tmp/jpegs] [--images 512] [--workers 2] [--size 224]

Prints one JSON line: images/s of each transform (the best of ``--passes`` timed passes, after a
warm-up pass: page cache, worker start), the CPU time each image took (this process and its
workers: on a machine shared with other work, ``cores * 1000 / cpu_ms_per_image`` is what the cores
would give alone), the load average, the worker count, the CPU and its core count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bnnrepro import data
from bnnrepro.train.batches import batches, epoch_order


def make_folder(root: Path, images: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    for k in range(images):
        split = "val" if (k // classes) % 4 == 3 else "train"
        folder = root / "imagenet" / split / f"n{k % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (375, 500) if k % 3 else (500, 375)
        low = rng.integers(0, 256, (h // 25, w // 25, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        img = (img + rng.integers(-20, 21, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{k}.JPEG", quality=90)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (a pass's workers end with it)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def rate(x, y, preprocess, batch_size: int, passes: int) -> tuple[float, float]:
    """(images/s of the best timed pass, CPU milliseconds per image over the timed passes)."""
    best, cpu, seen = 0.0, 0.0, 0
    for epoch in range(passes + 1):
        if isinstance(x, data.ImageStream):
            x.set_epoch(epoch)
        t0, c0 = time.perf_counter(), _cpu_s()
        n = sum(xb.shape[0] for xb, _ in batches(x, y, batch_size, preprocess, epoch_order(len(x), 0, epoch)))
        if epoch:  # the first pass warms up
            best = max(best, n / (time.perf_counter() - t0))
            cpu, seen = cpu + _cpu_s() - c0, seen + n
    return best, 1000 * cpu / seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/bnnrepro-stream-jpegs")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--passes", type=int, default=2)
    args = p.parse_args()
    root = Path(args.root)
    if not (root / "imagenet").is_dir():
        make_folder(root, args.images)
    torch.set_num_threads(1)
    s = data.load("imagenet", root, image_size=args.size, loader="stream", workers=args.workers,
                  augment="resized_crop_flip")
    train, train_cpu = rate(s.train_x, s.train_y, s.preprocess, args.batch_size, args.passes)
    test, test_cpu = rate(s.test_x, s.test_y, s.preprocess, args.batch_size, args.passes)
    jpeg = sorted((root / "imagenet").rglob("*.JPEG"))
    print(json.dumps({
        "train_images_per_s": round(train, 1), "eval_images_per_s": round(test, 1),
        "train_cpu_ms_per_image": round(train_cpu, 2), "eval_cpu_ms_per_image": round(test_cpu, 2),
        "load_average_1min": os.getloadavg()[0],
        "train_images": len(s.train_x), "eval_images": len(s.test_x), "image_size": args.size,
        "mean_jpeg_kb": round(sum(f.stat().st_size for f in jpeg) / len(jpeg) / 1024, 1),
        "workers": args.workers, "batch_size": args.batch_size, "cpu": cpu_name(), "cores": os.cpu_count(),
        "pillow": Image.__version__}))


if __name__ == "__main__":
    main()
