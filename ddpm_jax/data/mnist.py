"""MNIST as a tfds dataset, prepared without TensorFlow.

``MnistIdx`` is tfds's own MNIST builder (same name, version and features) with ``IdxBuilder``'s
generation: the four IDX files from tfds's manual directory (``<data_dir>/downloads/manual/``)
when they are there, else downloaded from the official URL and checked against tfds's checksums.
"""

from __future__ import annotations

from tensorflow_datasets.image_classification import mnist

from ddpm_jax.data.idx import IdxBuilder


class MnistIdx(IdxBuilder, mnist.MNIST, skip_registration=True):
    """tfds's MNIST builder, generating from IDX files without TensorFlow (see ``IdxBuilder``)."""

    name = "mnist"
