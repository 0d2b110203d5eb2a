"""CIFAR-10 as a tfds dataset, prepared without TensorFlow.

``Cifar10Pickle`` subclasses tfds's own ``cifar10`` builder (same name, version and features), so
what it writes reads back as plain tfds ``cifar10``. It reads the official python-pickle archive
``cifar-10-python.tar.gz`` with numpy: from tfds's manual directory
(``<data_dir>/downloads/manual/``) when the file is there, else downloaded from the official URL
through tfds's download manager and checked against its SHA-256. Images are PNG-encoded with
Pillow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import pickle
import tarfile
from typing import Any, BinaryIO

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar

from ddpm_jax.data.idx import in_manual_dir, png_bytes, require_host

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
# Size and SHA-256 of the official archive (its published MD5 is c58f30108f718f92721af3b95e74349a).
URL_INFO = tfds.download.checksums.UrlInfo(
    size=170_498_071,
    checksum="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    filename=ARCHIVE,
)
# Members of the archive: {split: batch files}, and the label names.
_BATCHES = {
    "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
    "test": ["cifar-10-batches-py/test_batch"],
}
_META = "cifar-10-batches-py/batches.meta"
# What the pickles may build: numpy arrays (numpy 1 and 2 paths) and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global but numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name} in a CIFAR-10 batch; expected only numpy arrays"
            )
        return super().find_class(module, name)


def read_batch(file: BinaryIO) -> dict[bytes, Any]:
    """One pickled CIFAR-10 batch (a dict with bytes keys such as b"data" and b"labels")."""
    return _NumpyOnlyUnpickler(file, encoding="bytes").load()


class Cifar10Pickle(cifar.Cifar10, skip_registration=True):
    """tfds's CIFAR-10 builder, generating from the python-pickle archive without TensorFlow.

    Args:
        url: the archive's URL; None keeps the official ``URL``.
        url_info: its expected size, SHA-256 and file name (the name also finds it in the
            manual directory); None keeps the official archive's ``URL_INFO``.
        **kwargs: ``tfds.core.DatasetBuilder`` arguments (data_dir, file_format, ...).
    """

    name = "cifar10"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place the official {ARCHIVE} in the manual directory."
    url_infos = None  # an instance attribute below

    def __init__(
        self,
        *,
        url: str = URL,
        url_info: tfds.download.checksums.UrlInfo = URL_INFO,
        **kwargs: Any,
    ):
        self._url = url
        self.url_infos: Mapping[str, Any] = {url: url_info}
        super().__init__(**kwargs)

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        if not in_manual_dir(dl_manager, [self.url_infos[self._url].filename]):
            require_host(self._url)
        archive = dl_manager.download(self._url)
        with tarfile.open(archive) as tar:
            meta = read_batch(tar.extractfile(_META))
        self.info.features["label"].names = [name.decode() for name in meta[b"label_names"]]
        return {
            split: self._generate_examples(archive, split) for split in _BATCHES
        }

    def _generate_examples(  # pylint: disable=arguments-differ
        self, archive: Any, split: str
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, id, PNG image and label) of each example of a split, in the archive's order."""
        index = 0  # the key tfds shuffles by, as in tfds's own builder
        with tarfile.open(archive) as tar:
            for member in _BATCHES[split]:
                batch = read_batch(tar.extractfile(member))
                images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                labels = batch[b"labels"]
                if len(images) != len(labels):
                    raise ValueError(
                        f"{member} of {archive} has {len(images)} images but {len(labels)} "
                        "labels; replace the archive"
                    )
                for image, label in zip(images.transpose(0, 2, 3, 1), labels):
                    yield index, {"id": f"{split}_{index:05d}", "image": png_bytes(image),
                                  "label": int(label)}
                    index += 1
