"""Fashion-MNIST as a tfds dataset, prepared without TensorFlow.

``FashionMnistIdx`` is tfds's own Fashion-MNIST builder (same name, version and features) with
``IdxBuilder``'s generation: it reads the IDX files of Debian's ``dataset-fashion-mnist`` package
when they are there, else the manual directory or the official download. Debian recompressed its
.gz files, so tfds's download checksums apply only to the download.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from tensorflow_datasets.image_classification import mnist

from ddpm_jax.data.idx import IdxBuilder

DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


class FashionMnistIdx(IdxBuilder, mnist.FashionMNIST, skip_registration=True):
    """tfds's Fashion-MNIST builder, generating from IDX files without TensorFlow.

    Args:
        idx_dir: folder holding the four IDX files (``train-images-idx3-ubyte.gz``, ...); when
            any is missing, they come through tfds's download manager.
        **kwargs: ``IdxBuilder`` and ``tfds.core.DatasetBuilder`` arguments.
    """

    name = "fashion_mnist"

    def __init__(self, *, idx_dir: os.PathLike[str] | str | None = DEBIAN_DIR, **kwargs: Any):
        super().__init__(idx_dir=idx_dir, **kwargs)
