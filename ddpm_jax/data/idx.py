"""MNIST-format (IDX) datasets prepared without TensorFlow: the shared half of their builders.

``IdxBuilder`` is mixed into a subclass of tfds's own builder (same name, version, features), so
what it writes reads back as the plain tfds dataset. It takes the four IDX files from a folder
when all are there, else through tfds's download manager: a file placed in
``<data_dir>/downloads/manual/`` is used as is, anything else is downloaded from the official URL
and checked against tfds's registered checksums. Images are PNG-encoded with Pillow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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

# {split: (images file, labels file)}, named alike by every IDX dataset and by Debian.
IDX_FILES = {
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
            f"{path} is not a uint8 IDX file (header {data[:4]!r}); expected MNIST-format "
            "*-ubyte.gz files"
        )
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] or [H, W, 3] image, encoded with Pillow (tfds would need TF)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def require_host(url: str) -> None:
    """Fails at once when ``url``'s host does not resolve, not after tfds's minutes of retries."""
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.getaddrinfo(host, None)
    except OSError as err:
        raise ConnectionError(f"cannot resolve {host} to download {url}: {err}") from err


class IdxBuilder:
    """Mixin for a subclass of tfds's ``mnist.MNIST`` family: generates from IDX files.

    Args:
        idx_dir: folder holding the four IDX files; when None or any is missing, they come
            through the download manager (manual directory, else ``url``).
        url: folder URL of the files; None keeps the builder's official ``URL``.
        url_infos: {file URL: ``tfds.download.checksums.UrlInfo``} checked on download (and
            naming the manual files); None uses tfds's registered checksums.
        **kwargs: ``tfds.core.DatasetBuilder`` arguments (data_dir, file_format, ...).
    """

    # An instance attribute below; tfds's default lookup goes through `code_path`, which needs
    # importlib_resources, a package tfds does not install.
    url_infos = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz (the official files) in the manual directory."
    )

    def __init__(
        self,
        *,
        idx_dir: os.PathLike[str] | str | None = None,
        url: str | None = None,
        url_infos: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        self._idx_dir = None if idx_dir is None else pathlib.Path(idx_dir)
        if url is not None:
            self.URL = url
        self.url_infos = None if url_infos is None else dict(url_infos)
        super().__init__(**kwargs)

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        names = [name for pair in IDX_FILES.values() for name in pair]
        paths = {name: (self._idx_dir or pathlib.Path()) / name for name in names}
        if self._idx_dir is None or not all(path.exists() for path in paths.values()):
            urls = {name: urllib.parse.urljoin(self.URL, name) for name in names}
            if not in_manual_dir(dl_manager, names):
                require_host(self.URL)
            paths = dl_manager.download(urls)
        return {
            split: self._generate_examples(paths[images], paths[labels])
            for split, (images, labels) in IDX_FILES.items()
        }

    def _generate_examples(  # pylint: disable=arguments-differ
        self, images_path: os.PathLike[str], labels_path: os.PathLike[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, PNG image and label) for each example of one pair of IDX files."""
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
                "labels; replace the files"
            )
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": png_bytes(image), "label": int(label)}


def in_manual_dir(dl_manager: tfds.download.DownloadManager, names: Iterable[str]) -> bool:
    """Whether every named file is in the download manager's manual directory (so the download
    manager will use them and no network is needed). The builder must set
    ``MANUAL_DOWNLOAD_INSTRUCTIONS``."""
    try:
        manual_dir = dl_manager.manual_dir
    except AssertionError:  # tfds's way of saying the directory is missing or empty
        return False
    return all((manual_dir / name).exists() for name in names)
