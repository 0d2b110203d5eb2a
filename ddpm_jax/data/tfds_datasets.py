"""tfds image datasets as ``ImageSource``s, prepared on first use without TensorFlow when we can.

Fashion-MNIST, MNIST and CIFAR-10 are prepared by our own subclasses of tfds's builders (same
names, versions and features; no TensorFlow). Any other tfds image dataset is prepared by tfds
itself, which for most needs TensorFlow (the ``[tf]`` extra), or read as already prepared.
Splits small enough to hold in memory are decoded once and cached as .npy (``decoded_cache``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types

import tensorflow_datasets as tfds

from ddpm_jax.data import decoded_cache
from ddpm_jax.data.cifar10 import Cifar10Pickle
from ddpm_jax.data.fashion_mnist import DEBIAN_DIR, FashionMnistIdx
from ddpm_jax.data.mnist import MnistIdx
from ddpm_jax.data.sources import (IMAGE_KEY, DatasetSpec, ImageSource, RecordSource, decode_all,
                                   in_memory_like)

# Splits whose decoded uint8 images take at most this many bytes are held in memory.
IN_MEMORY_MAX_BYTES = 1 << 30

KNOWN_DATASETS = types.MappingProxyType({
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, random_flip=False),
    "mnist": DatasetSpec((28, 28, 1), 10, random_flip=False),
    "cifar10": DatasetSpec((32, 32, 3), 10, random_flip=True),
    # CelebA 64: the centred 140x140 of the 218x178 aligned faces, resized.
    "celeb_a": DatasetSpec((64, 64, 3), None, random_flip=True, label_key=None, center_crop=140),
})
# Datasets our own builders prepare without TensorFlow, and where their files come from.
_TF_FREE = {
    "mnist": "the official IDX files (train-images-idx3-ubyte.gz, ...)",
    "cifar10": "the official cifar-10-python.tar.gz",
}


def _spec_from_features(name: str, features: tfds.features.FeaturesDict) -> DatasetSpec:
    """The spec of a dataset outside ``KNOWN_DATASETS``, read from its tfds features."""
    if IMAGE_KEY not in features:
        raise ValueError(
            f"dataset {name!r} has no {IMAGE_KEY!r} feature (it has {sorted(features.keys())}); "
            "use a tfds image dataset"
        )
    label = features["label"] if "label" in features else None
    num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else None
    return DatasetSpec(
        tuple(features[IMAGE_KEY].shape),
        num_classes,
        random_flip=False,
        label_key=None if num_classes is None else "label",
    )


def _output_shape(name: str, spec: DatasetSpec, image_size: int | None) -> tuple[int, int, int]:
    """(H, W, C) the split will yield, validating ``image_size``."""
    if image_size is not None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        return (image_size, image_size, spec.image_shape[2])
    if None in spec.image_shape:
        raise ValueError(
            f"dataset {name!r} has images of varying shape {spec.image_shape}; pass image_size "
            "to crop and resize them to squares"
        )
    return spec.image_shape


def _builder(
    name: str, data_dir: os.PathLike[str] | str | None, fashion_mnist_dir: os.PathLike[str] | str
) -> tuple[tfds.core.DatasetBuilder, str]:
    """The array_record builder of a dataset, and how to fix a failed preparation."""
    options = dict(data_dir=data_dir, file_format="array_record")
    if name == FashionMnistIdx.name:
        builder = FashionMnistIdx(idx_dir=fashion_mnist_dir, **options)
        fix = (
            "install its files with `apt-get install dataset-fashion-mnist` (read from "
            f"{fashion_mnist_dir}) or allow downloads from the internet"
        )
        return builder, fix
    if name in _TF_FREE:
        builder = {"mnist": MnistIdx, "cifar10": Cifar10Pickle}[name](**options)
        fix = (
            f"place {_TF_FREE[name]} in {builder.data_dir_root}/downloads/manual/ or allow "
            "downloads from the internet"
        )
        return builder, fix
    try:
        builder = tfds.builder(name, **options)
    except tfds.core.DatasetNotFoundError as err:
        raise ValueError(
            f"unknown dataset {name!r}; expected 'folder', one of {sorted(KNOWN_DATASETS)} or "
            "any tfds image dataset name"
        ) from err
    fix = (
        f"tfds needs TensorFlow to prepare {name!r} (only {sorted(['fashion_mnist', *_TF_FREE])} "
        "are prepared without it): run `pip install 'ddpm_jax[tf]'`, or prepare it elsewhere "
        f"with `tfds build {name} --file_format=array_record` and copy it there"
    )
    return builder, fix


def split_error(split: str, what: str, num_examples: dict[str, int],
                error: Exception) -> ValueError:
    """The one-line error for a split spec tfds refused: a slice beyond the split's examples
    (tfds: 'Requested slice [:512] incompatible with 24 examples'), or an unknown split.

    Args:
        split: the spec as given ('train[:512]').
        what: the data, for the message ("dataset 'mnist'", "image folder /data/faces").
        num_examples: the examples of each split of the data.
        error: tfds's error.
    """
    sizes = ", ".join(f"{name!r} ({n} examples)" for name, n in sorted(num_examples.items()))
    if "incompatible with" in str(error):
        return ValueError(f"split {split!r} asks for more examples than the {what} holds: "
                          f"{sizes}; use a smaller slice, or a percentage like 'train[:90%]'")
    return ValueError(f"unknown split {split!r} of the {what}; expected one of {sizes}, "
                      "optionally sliced like 'train[:90%]'")


def prepare(builder: tfds.core.DatasetBuilder, *, fix: str) -> None:
    """Prepares a tfds dataset unless it already is; a failure says how to fix it."""
    if builder.is_prepared():
        return
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    except Exception as err:  # pylint: disable=broad-except  # raised again, explained
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise FileNotFoundError(
            f"tfds dataset {builder.name!r} is not prepared in {builder.data_dir} and preparing "
            f"it failed ({reason}); {fix}"
        ) from err


def open_tfds_split(
    name: str,
    split: str,
    *,
    data_dir: os.PathLike[str] | str | None = None,
    image_size: int | None = None,
    fashion_mnist_dir: os.PathLike[str] | str = DEBIAN_DIR,
) -> tuple[tfds.core.DatasetBuilder, RecordSource]:
    """Prepares a tfds image dataset if needed and opens one split, decoding at every read.

    Args: as ``ddpm_jax.data.load_split``.

    Returns:
        The dataset's builder and the split.
    """
    builder, fix = _builder(name, data_dir, fashion_mnist_dir)
    spec = KNOWN_DATASETS.get(name) or _spec_from_features(name, builder.info.features)
    spec = dataclasses.replace(spec, image_shape=_output_shape(name, spec, image_size))
    prepare(builder, fix=fix)
    try:
        records = builder.as_data_source(split=split)
    except ValueError as err:
        sizes = {key: info.num_examples for key, info in builder.info.splits.items()}
        raise split_error(split, f"tfds dataset {name!r}", sizes, err) from err
    label = builder.info.features[spec.label_key] if spec.label_key else None
    names = label.names if isinstance(label, tfds.features.ClassLabel) else None
    return builder, RecordSource(records, spec, class_names=names,
                                 description=f"tfds dataset {name!r} split {split!r}")


def load_tfds_split(
    name: str,
    split: str,
    *,
    data_dir: os.PathLike[str] | str | None = None,
    image_size: int | None = None,
    keep_in_memory: bool | None = None,
    fashion_mnist_dir: os.PathLike[str] | str = DEBIAN_DIR,
) -> ImageSource:
    """``open_tfds_split``, then decoded into memory when small (cached as .npy after the first
    time). Args as ``ddpm_jax.data.load_split``."""
    builder, source = open_tfds_split(name, split, data_dir=data_dir, image_size=image_size,
                                      fashion_mnist_dir=fashion_mnist_dir)
    if keep_in_memory is None:
        keep_in_memory = len(source) * math.prod(source.image_shape) <= IN_MEMORY_MAX_BYTES
    if not keep_in_memory:
        return source
    key = repr(source.spec)  # output shape, crop and label feature
    cached = decoded_cache.load(builder.data_path, split, key)
    if cached is None:
        cached = decode_all(source)
        decoded_cache.store(builder.data_path, split, key, *cached)
    return in_memory_like(source, *cached)
