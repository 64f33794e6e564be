"""bnnrepro.data: readers of the official formats (on small generated archives in those exact
formats), md5 checks, error messages, downloads (with a fake fetch), splits and preprocessing."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import threading
import time
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import bnnrepro.data as data
from bnnrepro.data import archives, cifar, imagenet, mnist, svhn
from bnnrepro.data.preprocess import ZCA, gcn

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_ROOTS = [Path(p) for p in (os.environ.get("BNNREPRO_DATA"), SHARED_DATA) if p]
REAL_MNIST = next((r for r in REAL_ROOTS if (r / "MNIST/raw/train-images-idx3-ubyte.gz").is_file()), None)
DEBIAN_FASHION = Path(mnist.DEBIAN_FASHION_DIR)
REAL_REACHABLE, REAL_FETCH = archives.reachable, archives.fetch  # before the autouse fixture patches them


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Per-test user cache, no BNNREPRO_DATA, no network, no system Fashion-MNIST."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BNNREPRO_DATA", raising=False)
    monkeypatch.setattr(archives, "reachable", lambda url, timeout=0: "offline (test)")

    def no_fetch(url, dest, timeout=0):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(archives, "fetch", no_fetch)
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", str(tmp_path / "no-debian"))


# ---------------------------------------------------------------------------------------------
# Generators of the official formats


def write_idx(path: Path, arr: np.ndarray, magic: int, compress: bool = True) -> None:
    payload = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_mnist(root: Path, monkeypatch, *, folder="MNIST", n_train=60, n_test=20, compress=True, seed=0):
    """idx files like the official ones; the md5 table is pointed at them."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), 2051),
        "train-labels-idx1-ubyte": (rng.integers(0, 10, n_train, dtype=np.uint8), 2049),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), 2051),
        "t10k-labels-idx1-ubyte": (rng.integers(0, 10, n_test, dtype=np.uint8), 2049),
    }
    table = mnist.FASHION_MD5 if folder == "FashionMNIST" else mnist.MNIST_MD5
    for member, (arr, magic) in arrays.items():
        path = root / folder / "raw" / (member + (".gz" if compress else ""))
        write_idx(path, arr, magic, compress)
        payload = gzip.decompress(path.read_bytes()) if compress else path.read_bytes()
        digest = md5(path)
        entry = (digest if compress else "0" * 32, hashlib.md5(payload).hexdigest())
        if folder == "FashionMNIST":
            entry += ("f" * 32,)
        monkeypatch.setitem(table, member, entry)
    return {m: a for m, (a, _) in arrays.items()}


def cifar_batch(rng, n: int) -> dict:
    return {b"batch_label": b"generated", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the cPickle that made the official batches did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_cifar(root: Path, monkeypatch, *, n=12, as_tar=False, seed=0) -> dict:
    """Folder: Python-2-style pickles like the official files; tar: Python 3 protocol-2 pickles."""
    rng = np.random.default_rng(seed)
    batches = {name: cifar_batch(rng, n) for name in cifar.BATCH_MD5}
    dump = (lambda b: pickle.dumps(b, protocol=2)) if as_tar else py2_pickle
    blobs = {name: dump(b) for name, b in batches.items()}
    if as_tar:
        path = root / cifar.TAR_NAME
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in [("batches.meta", pickle.dumps({b"label_names": []}, 2)), *blobs.items()]:
                info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        monkeypatch.setitem(cifar.TAR_MD5, cifar.TAR_NAME, md5(path))
    else:
        for name, blob in blobs.items():
            path = root / cifar.FOLDER / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            monkeypatch.setitem(cifar.BATCH_MD5, name, md5(path))
    return batches


def make_svhn(root: Path, monkeypatch, sizes=None, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (sizes or {"train": 30, "test": 10, "extra": 8}).items():
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 = digit 0
        name = f"{split}_32x32.mat"
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / name, {"X": x, "y": y})
        monkeypatch.setitem(svhn.MD5, name, md5(root / name))
        out[split] = (x, y)
    return out


def make_imagenet(root: Path, classes=("n002", "n001", "n003"), n_train=(3, 4, 2), n_val=2) -> None:
    rng = np.random.default_rng(0)
    for c, k in zip(classes, n_train):
        for split, count in (("train", k), ("val", n_val)):
            folder = root / "imagenet" / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = int(rng.integers(10, 30)), int(rng.integers(10, 30))
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(folder / (f"{c}_{i}.JPEG" if i % 2 else f"{c}_{i}.png"))
    (root / "imagenet" / "train" / classes[0] / "notes.txt").write_text("not an image")


def listing(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))} | {
        str(root): root.stat().st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Registry, options, roots


def test_registry_and_names():
    assert data.names() == ["cifar10", "fashion_mnist", "imagenet", "mnist", "ptb", "svhn"]
    assert set(data.DATASETS) == set(data.names())
    defaults = {n: s.default_val_size for n, s in data.DATASETS.items()}
    assert defaults == {"mnist": 10_000, "fashion_mnist": 10_000, "cifar10": 5_000, "svhn": 6_000, "imagenet": 0, "ptb": 0}


def test_unknown_names_and_options_fail_before_io(tmp_path):
    with pytest.raises(ValueError, match="allowed: cifar10, fashion_mnist, imagenet, mnist, ptb, svhn"):
        data.load("mnist2", tmp_path)
    with pytest.raises(ValueError, match="allowed: scale, gcn, zca"):
        data.load("mnist", tmp_path, preprocessing="whiten")
    with pytest.raises(ValueError, match="allowed: auto, true, false"):
        data.load("mnist", tmp_path, download="sometimes")
    with pytest.raises(ValueError, match="use_extra"):
        data.load("mnist", tmp_path, use_extra=True)
    with pytest.raises(ValueError, match="train_subset"):
        data.load("mnist", tmp_path, train_subset=0)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


def test_resolve_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.resolve_root(None) == tmp_path / "xdg" / "bnnrepro" / "data"
    monkeypatch.setenv("BNNREPRO_DATA", str(tmp_path / "env"))
    assert data.resolve_root(None) == tmp_path / "env"
    assert data.resolve_root(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("BNNREPRO_DATA")
    assert data.resolve_root(None) == Path.home() / ".cache" / "bnnrepro" / "data"


def test_scale_pm1_is_the_exact_formula():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = data.scale_pm1(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, x.to(torch.float32).mul(2.0 / 255.0).sub(1.0))
    assert y.min().item() == -1.0 and y.max().item() == 1.0


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


def test_mnist_idx_gz_splits(tmp_path, monkeypatch):
    arrays = make_mnist(tmp_path / "root", monkeypatch)
    s = data.load("mnist", tmp_path / "root", download=False, val_size=10)
    train_images = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1)
    train_labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long()
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert s.train_x.shape == (50, 1, 28, 28) and s.val_x.shape == (10, 1, 28, 28)
    assert s.test_x.shape == (20, 1, 28, 28) and s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert torch.equal(s.train_x, train_images[:50]) and torch.equal(s.val_x, train_images[50:])
    assert torch.equal(s.train_y, train_labels[:50]) and torch.equal(s.val_y, train_labels[50:])
    assert torch.equal(s.test_x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert s.info["sizes"] == {"train": 50, "val": 10, "test": 20}
    rec = s.info["files"]["MNIST/raw/train-images-idx3-ubyte.gz"]
    assert rec["md5"] == mnist.MNIST_MD5["train-images-idx3-ubyte"][0]
    assert s.preprocess is data.scale_pm1

    sub = data.load("mnist", tmp_path / "root", download=False, val_size=0, train_subset=7)
    assert len(sub.train_x) == 7 and len(sub.val_x) == 0 and sub.val_x.shape[1:] == (1, 28, 28)
    assert torch.equal(sub.train_x, train_images[:7])


def test_mnist_decompressed_files_are_accepted(tmp_path, monkeypatch):
    make_mnist(tmp_path, monkeypatch, compress=False)
    s = data.load("mnist", tmp_path, download=False, val_size=5)
    assert len(s.train_x) == 55
    assert all(not p.endswith(".gz") for p in (r["path"] for r in s.info["files"].values()))


def test_mnist_resize(tmp_path, monkeypatch):
    make_mnist(tmp_path, monkeypatch)
    s = data.load("mnist", tmp_path, download=False, val_size=10, image_size=14)
    assert s.train_x.shape == (50, 1, 14, 14) and s.val_x.shape == (10, 1, 14, 14)
    assert s.test_x.dtype == torch.uint8 and s.input_shape == (1, 14, 14)


def test_fashion_mnist_torchvision_layout_and_debian_dir(tmp_path, monkeypatch):
    arrays = make_mnist(tmp_path / "root", monkeypatch, folder="FashionMNIST")
    s = data.load("fashion_mnist", tmp_path / "root", download=False, val_size=10)
    assert torch.equal(s.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    # The same archives in Debian's location, under "Debian" md5s, with an empty root.
    debian = tmp_path / "debian"
    shutil.copytree(tmp_path / "root" / "FashionMNIST" / "raw", debian)
    for member in mnist.MEMBERS:
        gz, raw, _ = mnist.FASHION_MD5[member]
        monkeypatch.setitem(mnist.FASHION_MD5, member, ("0" * 32, raw, gz))
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", str(debian))
    s2 = data.load("fashion_mnist", tmp_path / "empty", download=False, val_size=10)
    assert torch.equal(s2.train_x, s.train_x)
    assert s2.info["files"]["FashionMNIST/raw/t10k-images-idx3-ubyte.gz"]["path"].startswith(str(debian))
    assert not (tmp_path / "empty").exists()


def test_idx_magic_and_shape_are_checked(tmp_path, monkeypatch):
    make_mnist(tmp_path, monkeypatch)
    raw = tmp_path / "MNIST" / "raw"
    # labels where the images belong: md5 table says fine, the magic number does not
    shutil.copy(raw / "t10k-labels-idx1-ubyte.gz", raw / "t10k-images-idx3-ubyte.gz")
    gz = md5(raw / "t10k-images-idx3-ubyte.gz")
    monkeypatch.setitem(mnist.MNIST_MD5, "t10k-images-idx3-ubyte", (gz, "0" * 32))
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz: idx magic number 2049, expected 2051"):
        data.load("mnist", tmp_path, download=False, val_size=10)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 27), np.uint8), 2051)
    monkeypatch.setitem(mnist.MNIST_MD5, "t10k-images-idx3-ubyte", (md5(raw / "t10k-images-idx3-ubyte.gz"), ""))
    with pytest.raises(data.CorruptFileError, match="idx dims"):
        data.load("mnist", tmp_path, download=False, val_size=10)


# ---------------------------------------------------------------------------------------------
# Errors: missing, corrupt, read-only roots


def test_missing_files_message_lists_everything(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(data.MissingFilesError) as err:
        data.load("mnist", root, download=False)
    msg = str(err.value)
    for member in mnist.MEMBERS:
        assert f"{member}.gz  md5 {mnist.MNIST_MD5[member][0]}" in msg
        assert str(root / "MNIST" / "raw" / f"{member}.gz") in msg
        assert f"https://ossci-datasets.s3.amazonaws.com/mnist/{member}.gz" in msg
    assert "download=False" in msg
    assert not root.exists()


@pytest.mark.parametrize("name, expected", [
    ("cifar10", ["cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                 "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]),
    ("svhn", ["train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat",
              "eb5a983be6a315427106f1b164d9cef3", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]),
    ("fashion_mnist", ["train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                       "dataset-fashion-mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz"]),
    ("imagenet", ["imagenet/train", "imagenet/val", "image-net.org", "1d675b47d978889d74fa0da5fadfb00e"]),
])
def test_missing_files_other_datasets(tmp_path, name, expected):
    with pytest.raises(data.MissingFilesError) as err:
        data.load(name, tmp_path / "root", download="auto")  # writable, but the network is "offline"
    for text in expected:
        assert text in str(err.value)


def test_svhn_missing_extra_is_named(tmp_path, monkeypatch):
    make_svhn(tmp_path, monkeypatch, {"train": 12, "test": 4})
    with pytest.raises(data.MissingFilesError, match="extra_32x32.mat  md5 a93ce644f1a588dc4d68dda5feec44a7"):
        data.load("svhn", tmp_path, download=False, use_extra=True, val_size=2)


def test_corrupt_file_names_file_and_both_md5s(tmp_path, monkeypatch):
    make_mnist(tmp_path, monkeypatch)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(data.CorruptFileError) as err:
        data.load("mnist", tmp_path, download=False, val_size=10)
    msg = str(err.value)
    assert str(path) in msg and md5(path) in msg and mnist.MNIST_MD5["train-labels-idx1-ubyte"][0] in msg
    assert "delete it" in msg


def test_read_only_root_is_never_written(tmp_path, monkeypatch):
    make_mnist(tmp_path / "ro", monkeypatch)
    ro = tmp_path / "ro"
    (ro / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    for p in [ro, *ro.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = listing(ro)
    try:
        with pytest.raises(data.MissingFilesError, match="root is not writable") as err:
            data.load("mnist", ro, download="auto", val_size=10)
        assert "t10k-labels-idx1-ubyte.gz" in str(err.value) and "train-images" not in str(err.value)
        with pytest.raises(data.MissingFilesError, match="root is not writable"):
            data.load("mnist", ro, download=True, val_size=10)
        assert listing(ro) == before
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_writable_respects_mode_bits_even_for_root(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    assert archives.writable(d) and archives.writable(d / "not" / "yet")
    d.chmod(0o555)
    try:
        assert not archives.writable(d) and not archives.writable(d / "sub")
    finally:
        d.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# md5 cache and downloads


def test_md5_cache_makes_second_load_skip_hashing(tmp_path, monkeypatch):
    make_mnist(tmp_path / "root", monkeypatch)
    calls = []
    real = archives.md5sum
    monkeypatch.setattr(archives, "md5sum", lambda p, *a: calls.append(p) or real(p, *a))
    data.load("mnist", tmp_path / "root", download=False, val_size=10)
    assert len(calls) == 4
    assert (tmp_path / "cache" / "bnnrepro" / "md5-cache.json").is_file()
    data.load("mnist", tmp_path / "root", download=False, val_size=10)
    assert len(calls) == 4
    path = tmp_path / "root" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert data.check("mnist", tmp_path / "root")["MNIST/raw/train-images-idx3-ubyte.gz"]["md5"]
    assert len(calls) == 5


def test_md5_cache_sees_an_edit_that_keeps_size_and_mtime(tmp_path, monkeypatch):
    """The hostile case: bytes changed in place, size and mtime restored; ctime gives it away."""
    make_mnist(tmp_path / "root", monkeypatch)
    data.check("mnist", tmp_path / "root")  # every md5 cached
    path = tmp_path / "root" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    st = path.stat()
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    time.sleep(0.01)  # ctime resolution
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(data.CorruptFileError, match="t10k-labels-idx1-ubyte.gz: md5"):
        data.check("mnist", tmp_path / "root")


def test_md5_cache_sees_a_file_replaced_by_another(tmp_path, monkeypatch):
    make_mnist(tmp_path / "root", monkeypatch)
    data.check("mnist", tmp_path / "root")
    raw = tmp_path / "root" / "MNIST" / "raw"
    a, b = raw / "t10k-labels-idx1-ubyte.gz", raw / "train-labels-idx1-ubyte.gz"
    st = a.stat()
    other = tmp_path / "other.gz"
    other.write_bytes(b.read_bytes()[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, a)  # same path, size and mtime; another inode
    with pytest.raises(data.CorruptFileError, match="t10k-labels"):
        data.check("mnist", tmp_path / "root")


def test_download_fetches_verifies_and_renames(tmp_path, monkeypatch):
    source = tmp_path / "server"
    make_mnist(source, monkeypatch)
    fetched = []

    def fake_fetch(url, dest, timeout=0):
        assert dest.parent == tmp_path / "root" / "MNIST" / "raw" and dest.name.endswith(".part")
        fetched.append(url)
        shutil.copy(source / "MNIST" / "raw" / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(archives, "reachable", lambda url, timeout=0: None)
    monkeypatch.setattr(archives, "fetch", fake_fetch)
    s = data.load("mnist", tmp_path / "root", download="auto", val_size=10)
    assert len(s.train_x) == 50 and len(fetched) == 4
    assert fetched[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    assert sorted(p.name for p in (tmp_path / "root" / "MNIST" / "raw").iterdir()) == sorted(
        f"{m}.gz" for m in mnist.MEMBERS)


def test_download_with_wrong_md5_keeps_nothing(tmp_path, monkeypatch):
    def bad_fetch(url, dest, timeout=0):
        dest.write_bytes(b"<html>not the archive</html>")

    monkeypatch.setattr(archives, "reachable", lambda url, timeout=0: None)
    monkeypatch.setattr(archives, "fetch", bad_fetch)
    with pytest.raises(data.DataError, match="could not download cifar-10-python.tar.gz") as err:
        data.load("cifar10", tmp_path, download=True)
    assert "expected c58f30108f718f92721af3b95e74349a" in str(err.value)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


def test_real_fetch_from_a_local_http_server(tmp_path, monkeypatch):
    served = tmp_path / "served"
    make_mnist(tmp_path / "made", monkeypatch)
    shutil.copytree(tmp_path / "made" / "MNIST" / "raw", served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(mnist, "MNIST_URLS", (f"http://127.0.0.1:{server.server_port}/",))
        monkeypatch.setattr(archives, "reachable", REAL_REACHABLE)
        monkeypatch.setattr(archives, "fetch", REAL_FETCH)
        s = data.load("mnist", tmp_path / "root", val_size=10)  # download="auto", writable root
        assert len(s.train_x) == 50
        assert all(r["path"].startswith(str(tmp_path / "root")) for r in s.info["files"].values())
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_server_fails_fast():
    start = time.monotonic()
    reason = REAL_REACHABLE("http://127.0.0.1:9/nothing", timeout=1.0)  # discard port: refused
    assert reason and time.monotonic() - start < 2.0


def test_damaged_local_file_fails_before_any_download(tmp_path, monkeypatch):
    make_mnist(tmp_path, monkeypatch)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    monkeypatch.setattr(archives, "reachable", lambda url, timeout=0: None)  # "online"; fetch still fails
    with pytest.raises(data.CorruptFileError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", tmp_path, download=True, val_size=10)


def test_download_false_never_touches_the_network(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(archives, "reachable", boom)
    with pytest.raises(data.MissingFilesError):
        data.load("svhn", tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar_pickles_and_tar_give_the_same_splits(tmp_path, monkeypatch):
    batches = make_cifar(tmp_path / "a", monkeypatch)
    make_cifar(tmp_path / "b", monkeypatch, as_tar=True)
    a = data.load("cifar10", tmp_path / "a", download=False, val_size=6)
    b = data.load("cifar10", tmp_path / "b", download=False, val_size=6)
    assert a.train_x.shape == (54, 3, 32, 32) and a.val_x.shape == (6, 3, 32, 32) and a.test_x.shape == (12, 3, 32, 32)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    first = batches["data_batch_1"][b"data"][0]
    assert torch.equal(a.train_x[0, 0], torch.from_numpy(first[:1024].reshape(32, 32)))   # red plane
    assert torch.equal(a.train_x[0, 2], torch.from_numpy(first[2048:].reshape(32, 32)))   # blue plane
    last = batches["data_batch_5"]
    assert a.val_y.tolist() == last[b"labels"][-6:]
    assert list(b.info["files"]) == ["cifar-10-python.tar.gz"]


def test_cifar_partial_folder_lists_missing_batches(tmp_path, monkeypatch):
    make_cifar(tmp_path, monkeypatch)
    (tmp_path / cifar.FOLDER / "data_batch_3").unlink()
    (tmp_path / cifar.FOLDER / "test_batch").unlink()
    with pytest.raises(data.MissingFilesError) as err:
        data.load("cifar10", tmp_path, download=True)
    msg = str(err.value)
    assert f"data_batch_3  md5 {cifar.BATCH_MD5['data_batch_3']}" in msg and "test_batch" in msg
    assert "data_batch_1" not in msg and "cifar-10-python.tar.gz" in msg


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    make_cifar(tmp_path, monkeypatch)
    evil = tmp_path / cifar.FOLDER / "data_batch_2"
    evil.write_bytes(pickle.dumps({b"data": os.system}))
    monkeypatch.setitem(cifar.BATCH_MD5, "data_batch_2", md5(evil))
    with pytest.raises(data.CorruptFileError, match="posix.system is not allowed"):
        data.load("cifar10", tmp_path, download=False, val_size=6)


# ---------------------------------------------------------------------------------------------
# SVHN


def test_svhn_mat_layout_labels_and_extra(tmp_path, monkeypatch):
    mats = make_svhn(tmp_path, monkeypatch)
    s = data.load("svhn", tmp_path, download=False, val_size=5)
    x, y = mats["train"]
    assert s.train_x.shape == (25, 3, 32, 32) and s.val_x.shape == (5, 3, 32, 32) and len(s.test_x) == 10
    assert torch.equal(s.train_x[3], torch.from_numpy(x[:, :, :, 3].transpose(2, 0, 1).copy()))
    expected = torch.from_numpy(y[:, 0].astype(np.int64)) % 10
    assert torch.equal(torch.cat([s.train_y, s.val_y]), expected)
    assert 0 <= s.train_y.min() and s.train_y.max() <= 9

    e = data.load("svhn", tmp_path, download=False, val_size=5, use_extra=True)
    assert len(e.train_x) == 25 + 8 and torch.equal(e.val_x, s.val_x)  # extra joins the training part only
    assert torch.equal(e.train_x[25:], torch.from_numpy(mats["extra"][0].transpose(3, 2, 0, 1).copy()))
    assert e.info["extra_in_train"] == 8


# ---------------------------------------------------------------------------------------------
# ImageNet folders


def test_imagenet_folder_decodes_resized_center_crops(tmp_path):
    make_imagenet(tmp_path)
    s = data.load("imagenet", tmp_path, image_size=8)
    assert s.num_classes == 3 and s.input_shape == (3, 8, 8)
    assert s.train_x.shape == (9, 3, 8, 8) and s.train_x.dtype == torch.uint8 and len(s.val_x) == 0
    assert s.test_x.shape == (6, 3, 8, 8) and s.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    # class-interleaved: sorted classes n001 (4 images), n002 (3), n003 (2) -> 0 1 2 0 1 2 0 1 0
    assert s.train_y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 0]
    sub = data.load("imagenet", tmp_path, image_size=8, train_subset=3)
    assert sub.train_y.tolist() == [0, 1, 2] and torch.equal(sub.train_x, s.train_x[:3])
    assert sub.info["files"]["train"]["images"] == 3 and sub.info["resized_to"] == 8


def test_imagenet_memory_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    make_imagenet(tmp_path)
    monkeypatch.setenv(imagenet.MAX_BYTES_ENV, "1000")
    monkeypatch.setattr(imagenet, "decode_image", lambda *a: pytest.fail("decoded before the check"))
    with pytest.raises(data.DataError, match="train_subset"):
        data.load("imagenet", tmp_path, image_size=16)


def test_imagenet_bad_image_is_named(tmp_path):
    make_imagenet(tmp_path)
    bad = tmp_path / "imagenet" / "val" / "n003" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(data.CorruptFileError, match="broken.jpg"):
        data.load("imagenet", tmp_path, image_size=8)


# ---------------------------------------------------------------------------------------------
# Preprocessing


def test_gcn_per_image_zero_mean_unit_std():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    x[0] = 77
    g = gcn(x).flatten(1)
    assert torch.equal(g[0], torch.zeros_like(g[0]))
    assert torch.allclose(g[1:].mean(1), torch.zeros(15), atol=1e-5)
    assert torch.allclose(g[1:].pow(2).mean(1), torch.ones(15), atol=1e-4)


def _correlated_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images: strongly correlated pixels, so whitening has work to do."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand(n, 3, 8, 8, generator=g)
    return (x / x.max() * 255).round().to(torch.uint8)


def test_zca_whitens_the_training_data():
    x = _correlated_images(3000)
    d = x[0].numel()
    raw_cov = torch.cov(gcn(x).flatten(1).double().T)
    assert raw_cov.diagonal().std() > 0 and (raw_cov - torch.diag(raw_cov.diagonal())).abs().max() > 0.3

    zca = ZCA.fit(x, filter_bias=1e-4)
    cov = torch.cov(zca(x).flatten(1).double().T)
    # GCN leaves each image with zero mean, so the all-ones direction carries no variance:
    # whitened covariance = identity on the rest.
    ones = torch.full((d, 1), d ** -0.5, dtype=torch.float64)
    projector = torch.eye(d, dtype=torch.float64) - ones @ ones.T
    assert torch.allclose(cov, projector, atol=2e-2)
    # ZCA (not just any whitening): W is symmetric
    assert torch.allclose(zca.matrix, zca.matrix.T, atol=1e-5)

    # The default filter bias shrinks each direction by l / (l + bias), all in (0, 1].
    default = ZCA.fit(x)
    evals = torch.linalg.eigvalsh(torch.cov(default(x).flatten(1).double().T))
    assert evals.max() <= 1.0 + 1e-3 and evals[1:].min() > 0


def test_load_with_gcn_and_zca(tmp_path, monkeypatch):
    make_cifar(tmp_path, monkeypatch, n=40)
    # resized to 8x8 so that the 192x192 covariance keeps the test fast (32x32: 3072x3072)
    s = data.load("cifar10", tmp_path, download=False, val_size=20, preprocessing="zca", image_size=8)
    assert s.train_x.dtype == torch.uint8  # stored data stays uint8
    out = s.preprocess(s.val_x[:5])
    assert out.dtype == torch.float32 and out.shape == (5, 3, 8, 8)
    assert s.info["preprocessing"]["name"] == "zca" and s.info["preprocessing"]["filter_bias"] == 0.1
    assert pickle.loads(pickle.dumps(s.preprocess))(s.val_x[:5]).allclose(out)
    g = data.load("cifar10", tmp_path, download=False, val_size=20, preprocessing="gcn")
    assert torch.equal(g.preprocess(g.test_x), gcn(g.test_x))


# ---------------------------------------------------------------------------------------------
# The real archives, when present


@pytest.mark.skipif(REAL_MNIST is None, reason="real MNIST not found (BNNREPRO_DATA or ../shared/data)")
def test_real_mnist():
    before = listing(REAL_MNIST)
    s = data.load("mnist", REAL_MNIST, download="auto")
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (50_000, 10_000, 10_000)
    assert s.train_x.shape[1:] == (1, 28, 28) and s.train_x.dtype == torch.uint8
    assert s.train_y.dtype == torch.int64 and s.train_y.min() == 0 and s.train_y.max() == 9
    assert set(s.test_y.unique().tolist()) == set(range(10))
    for member in mnist.MEMBERS:
        assert s.info["files"][f"MNIST/raw/{member}.gz"]["md5"] == mnist.MNIST_MD5[member][0]
    x = s.preprocess(s.train_x[:2000])
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert listing(REAL_MNIST) == before


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "DEBIAN_FASHION_DIR", str(DEBIAN_FASHION))
    s = data.load("fashion_mnist", tmp_path / "root", download=False)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (50_000, 10_000, 10_000)
    assert s.train_y.max() == 9
    assert not (tmp_path / "root").exists()
