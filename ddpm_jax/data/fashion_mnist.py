"""Fashion-MNIST as a tfds dataset, prepared without TensorFlow.

``FashionMnistIdx`` subclasses tfds's own Fashion-MNIST builder (same name, version and
features), so what it writes is read back as plain tfds ``fashion_mnist``. It reads the IDX files
of Debian's ``dataset-fashion-mnist`` package when they are there, else downloads the official
ones, and PNG-encodes the images with Pillow. Debian recompressed its .gz files, so tfds's
download checksums apply only to the download.
"""

from __future__ import annotations

from collections.abc import Iterator
import gzip
import io
import os
import pathlib
import socket
from typing import Any
import urllib.parse

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
# {split: (images file, labels file)}, named alike by Debian and the official download.
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: os.PathLike[str] | str) -> np.ndarray:
    """Reads a uint8 IDX file (the MNIST format), gzipped or not.

    Args:
        path: the file.

    Returns:
        uint8 array of the shape in the file's header, e.g. [N, 28, 28] or [N].
    """
    data = pathlib.Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(
            f"{path} is not a uint8 IDX file (header {data[:4]!r}); expected Fashion-MNIST's "
            "*-ubyte.gz files"
        )
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] image, encoded with Pillow (tfds would need TF)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _require_host(url: str) -> None:
    """Fails at once when ``url``'s host does not resolve, not after tfds's minutes of retries."""
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.getaddrinfo(host, None)
    except OSError as err:
        raise ConnectionError(f"cannot resolve {host} to download {url}: {err}") from err


class FashionMnistIdx(mnist.FashionMNIST, skip_registration=True):
    """tfds's Fashion-MNIST builder, generating from IDX files without TensorFlow.

    Args:
        idx_dir: folder holding the four IDX files (``train-images-idx3-ubyte.gz``, ...); when
            any is missing, the official files are downloaded instead.
        **kwargs: ``tfds.core.DatasetBuilder`` arguments (data_dir, file_format, ...).
    """

    name = "fashion_mnist"
    # tfds's checksum registry already lists the official URLs; the default lookup goes through
    # `code_path`, which needs importlib_resources, a package tfds does not install.
    url_infos = None

    def __init__(self, *, idx_dir: os.PathLike[str] | str = DEBIAN_DIR, **kwargs: Any):
        self._idx_dir = pathlib.Path(idx_dir)
        super().__init__(**kwargs)

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        names = [name for pair in _FILES.values() for name in pair]
        paths = {name: self._idx_dir / name for name in names}
        if not all(path.exists() for path in paths.values()):
            _require_host(self.URL)
            urls = {name: urllib.parse.urljoin(self.URL, name) for name in names}
            paths = dl_manager.download(urls)
        return {
            split: self._generate_examples(paths[images], paths[labels])
            for split, (images, labels) in _FILES.items()
        }

    def _generate_examples(  # pylint: disable=arguments-differ
        self, images_path: os.PathLike[str], labels_path: os.PathLike[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, PNG image and label) for each example of one pair of IDX files."""
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
                "labels; reinstall the files"
            )
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": _png(image), "label": int(label)}
