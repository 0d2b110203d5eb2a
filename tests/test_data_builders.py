"""CIFAR-10 and MNIST prepared without TensorFlow, from small synthetic files in the official
layouts: placed in tfds's manual directory, or downloaded by tfds's download manager from a local
HTTP server on 127.0.0.1 with the checksums the test passes in."""

import functools
import gzip
import hashlib
import http.server
import io
import pathlib
import pickle
import tarfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ddpm_jax import data
from ddpm_jax.data import cifar10, idx, mnist

CIFAR_NAMES = [f"class{i}" for i in range(10)]


@pytest.fixture
def server(tmp_path):
    """(folder served, its URL) of an HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def url_info(path: pathlib.Path) -> tfds.download.checksums.UrlInfo:
    content = path.read_bytes()
    return tfds.download.checksums.UrlInfo(size=len(content),
                                           checksum=hashlib.sha256(content).hexdigest(),
                                           filename=path.name)


def prepare(builder):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False))


def examples(data_dir, name, split) -> list[tuple[bytes, int]]:
    """Sorted (image bytes, label) of a prepared split, read back as plain tfds."""
    records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return sorted((r["image"].tobytes(), int(r["label"])) for r in records)


# --------------------------------------------------------------------------------------------
# CIFAR-10: the python-pickle archive


def make_cifar_archive(path: pathlib.Path) -> dict[str, list[tuple[bytes, int]]]:
    """A cifar-10-python.tar.gz in the official layout: 5 train batches of 4 images, 3 test.

    Returns:
        {split: sorted (image bytes [32, 32, 3], label)}.
    """
    rng = np.random.default_rng(0)
    expected = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            content = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))

        add("batches.meta", {b"label_names": [n.encode() for n in CIFAR_NAMES]})
        batches = [(f"data_batch_{i}", "train", 4) for i in range(1, 6)]
        batches.append(("test_batch", "test", 3))
        for name, split, count in batches:
            rows = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, count).tolist()
            add(name, {b"batch_label": name.encode(), b"data": rows, b"labels": labels})
            images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            expected[split] += [(image.tobytes(), label) for image, label in zip(images, labels)]
    return {split: sorted(pairs) for split, pairs in expected.items()}


def test_cifar10_from_the_manual_directory(tmp_path):
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    expected = make_cifar_archive(manual / cifar10.ARCHIVE)
    builder = cifar10.Cifar10Pickle(data_dir=tmp_path / "tfds", file_format="array_record",
                                    url_info=url_info(manual / cifar10.ARCHIVE))
    assert builder.name == "cifar10" and str(builder.version) == "3.0.2"
    prepare(builder)  # no network: the official URL is never reached
    for split in ("train", "test"):
        assert examples(tmp_path / "tfds", "cifar10", split) == expected[split]
    info = tfds.builder("cifar10", data_dir=tmp_path / "tfds").info
    assert info.features["label"].names == CIFAR_NAMES
    source = data.load_split("cifar10", "test", data_dir=tmp_path / "tfds")
    assert source.image_shape == (32, 32, 3) and source.class_names == tuple(CIFAR_NAMES)
    images, labels = source.read(np.arange(3))
    assert sorted((i.tobytes(), int(l)) for i, l in zip(images, labels)) == expected["test"]


def test_cifar10_downloads_through_the_download_manager(tmp_path, server):
    served, url = server
    expected = make_cifar_archive(served / cifar10.ARCHIVE)
    options = dict(data_dir=tmp_path / "tfds", file_format="array_record",
                   url=url + cifar10.ARCHIVE)
    wrong = url_info(served / cifar10.ARCHIVE)
    wrong = tfds.download.checksums.UrlInfo(size=wrong.size, checksum="0" * 64,
                                            filename=wrong.filename)
    with pytest.raises(Exception, match="has wrong checksum"):
        prepare(cifar10.Cifar10Pickle(url_info=wrong, **options))
    prepare(cifar10.Cifar10Pickle(url_info=url_info(served / cifar10.ARCHIVE), **options))
    assert examples(tmp_path / "tfds", "cifar10", "train") == expected["train"]
    ids = tfds.data_source("cifar10", split="train", data_dir=tmp_path / "tfds", download=False)
    assert sorted(r["id"] for r in ids) == [f"train_{i:05d}".encode() for i in range(20)]


def test_cifar10_pickles_may_hold_only_numpy_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print in a CIFAR-10 "
                                                     "batch; expected only numpy arrays"):
        cifar10.read_batch(io.BytesIO(pickle.dumps({b"data": Evil()})))


# --------------------------------------------------------------------------------------------
# MNIST: IDX files


def make_idx_files(folder: pathlib.Path) -> dict[str, list[tuple[bytes, int]]]:
    """The four gzipped IDX files, 6 train and 4 test digits; {split: sorted (image, label)}."""
    rng = np.random.default_rng(1)
    expected = {}
    for split, count in (("train", 6), ("test", 4)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images_name, labels_name = idx.IDX_FILES[split]
        header = b"\x00\x00\x08\x03" + np.array([count, 28, 28], ">u4").tobytes()
        (folder / images_name).write_bytes(gzip.compress(header + images.tobytes()))
        header = b"\x00\x00\x08\x01" + np.array([count], ">u4").tobytes()
        (folder / labels_name).write_bytes(gzip.compress(header + labels.tobytes()))
        expected[split] = sorted((image[..., None].tobytes(), int(label))
                                 for image, label in zip(images, labels))
    return expected


def idx_url_infos(folder: pathlib.Path, url: str) -> dict:
    names = [name for pair in idx.IDX_FILES.values() for name in pair]
    return {url + name: url_info(folder / name) for name in names}


def test_mnist_from_the_manual_directory(tmp_path):
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    expected = make_idx_files(manual)
    builder = mnist.MnistIdx(data_dir=tmp_path / "tfds", file_format="array_record",
                             url_infos=idx_url_infos(manual, mnist.MnistIdx.URL))
    assert builder.name == "mnist" and str(builder.version) == "3.0.1"
    prepare(builder)
    for split in ("train", "test"):
        assert examples(tmp_path / "tfds", "mnist", split) == expected[split]


def test_mnist_downloads_through_the_download_manager(tmp_path, server):
    served, url = server
    expected = make_idx_files(served)
    prepare(mnist.MnistIdx(data_dir=tmp_path / "tfds", file_format="array_record", url=url,
                           url_infos=idx_url_infos(served, url)))
    for split in ("train", "test"):
        assert examples(tmp_path / "tfds", "mnist", split) == expected[split]
    source = data.load_split("mnist", "train", data_dir=tmp_path / "tfds")
    assert len(source) == 6 and source.class_names[:2] == ("0", "1")


def test_unreachable_mnist_says_where_to_place_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist.MnistIdx, "URL", "http://mnist.invalid/")
    with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared in .*ConnectionError: "
                                                r"cannot resolve mnist.invalid.*place the official "
                                                r"IDX files .* in .*/downloads/manual/"):
        data.load_split("mnist", data_dir=tmp_path)
