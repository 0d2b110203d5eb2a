"""Random access to the uint8 images and int32 labels of one split: the ``ImageSource`` protocol.

``ArraySource`` holds (or memory-maps) decoded arrays; ``RecordSource`` decodes tfds records at
every read; ``ddpm_jax.data.folder.FolderSource`` reads a prepared image folder.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
from typing import Any, Protocol

import numpy as np

from ddpm_jax.data.images import fit_image

# Feature holding the images, in every tfds dataset.
IMAGE_KEY = "image"
# Examples decoded per read while filling memory: bounds the transient copies.
_DECODE_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a tfds image dataset.

    Attributes:
        image_shape: (H, W, C) of the images it yields by default; H and W are None for a dataset
            of varying image sizes.
        num_classes: number of class labels, or None when unlabelled.
        random_flip: whether random horizontal flips suit it (the training default).
        label_key: feature holding the class label, or None when unlabelled.
        center_crop: side of the centred square kept before resizing; None keeps the largest.
    """

    image_shape: tuple[int | None, int | None, int]
    num_classes: int | None
    random_flip: bool
    label_key: str | None = "label"
    center_crop: int | None = None


class ImageSource(Protocol):
    """Random access to the examples of one split."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""

    @property
    def num_classes(self) -> int | None:
        """Number of class labels, or None when unlabelled."""

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each label 0..K-1, or None when unknown or unlabelled."""

    @property
    def description(self) -> str:
        """What the examples are, for messages: "image folder /data/faces"."""

    @property
    def fingerprint(self) -> str | None:
        """What identifies the examples beyond the config (an image folder's listing), for a
        resumed run to notice they changed; None when the config names them exactly."""

    def __len__(self) -> int:
        """Number of examples N."""

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Reads examples.

        Args:
            indices: int [n], each in [0, N); repeats allowed.

        Returns:
            images uint8 [n, H, W, C] and labels int32 [n] (None when unlabelled).
        """


class DescribedSource:
    """The descriptive half of an ``ImageSource``, shared by the sources here.

    Args:
        num_classes: number of class labels, or None.
        class_names: the name of each label, or None.
        description: what the examples are, for messages.
        fingerprint: what identifies the examples beyond the config, or None.
    """

    def __init__(self, *, num_classes: int | None, class_names: Sequence[str] | None,
                 description: str, fingerprint: str | None = None):
        self._num_classes = num_classes
        self._class_names = None if class_names is None else tuple(class_names)
        self._description = description
        self._fingerprint = fingerprint

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._class_names

    @property
    def description(self) -> str:
        return self._description

    @property
    def fingerprint(self) -> str | None:
        return self._fingerprint


class ArraySource(DescribedSource):
    """An ``ImageSource`` over arrays in memory (or memory-mapped).

    Args:
        images: uint8 [N, H, W, C].
        labels: int [N], or None when unlabelled.
        num_classes: number of class labels, or None.
        class_names: the name of each label, or None.
        description: what the examples are, for messages.
        fingerprint: what identifies the examples beyond the config, or None.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        description: str = "an in-memory split",
        fingerprint: str | None = None,
    ):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}; "
                "convert them with astype(np.uint8) and add a channel axis"
            )
        if labels is not None and labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels have shape {labels.shape} but the images need {images.shape[:1]}; "
                "pass one label per image"
            )
        super().__init__(num_classes=num_classes, class_names=class_names,
                         description=description, fingerprint=fingerprint)
        self._images = images
        self._labels = None if labels is None else labels.astype(np.int32)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._images.shape[1:]

    def __len__(self) -> int:
        return len(self._images)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        labels = None if self._labels is None else self._labels[indices]
        return self._images[indices], labels


class RecordSource(DescribedSource):
    """An ``ImageSource`` that decodes tfds records at every read.

    Args:
        records: a tfds data source of the split (``builder.as_data_source(split)``).
        spec: the dataset's spec; ``read`` fits images to its ``image_shape``.
        class_names: the name of each label, or None.
        description: what the examples are, for messages.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        spec: DatasetSpec,
        *,
        class_names: Sequence[str] | None = None,
        description: str = "a tfds split",
    ):
        super().__init__(num_classes=spec.num_classes, class_names=class_names,
                         description=description)
        self._records = records
        self._spec = spec

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's spec, with the output ``image_shape``."""
        return self._spec

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._spec.image_shape

    def __len__(self) -> int:
        return len(self._records)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        examples = self._records.__getitems__([int(i) for i in indices])
        fit = functools.partial(
            fit_image, shape=self.image_shape, center_crop=self._spec.center_crop
        )
        images = np.stack([fit(example[IMAGE_KEY]) for example in examples])
        label_key = self._spec.label_key
        if label_key is None:
            return images, None
        return images, np.array([example[label_key] for example in examples], np.int32)


def decode_all(source: ImageSource) -> tuple[np.ndarray, np.ndarray | None]:
    """Every example of a source, decoded in chunks.

    Args:
        source: any image source.

    Returns:
        images uint8 [N, H, W, C] and labels int32 [N] (None when unlabelled), in order.
    """
    images = np.empty((len(source), *source.image_shape), np.uint8)
    labels = []
    for start in range(0, len(source), _DECODE_CHUNK):
        indices = np.arange(start, min(start + _DECODE_CHUNK, len(source)))
        images[indices], chunk_labels = source.read(indices)
        labels.append(chunk_labels)
    labelled = bool(labels) and labels[0] is not None
    return images, np.concatenate(labels) if labelled else None


def load_into_memory(source: ImageSource) -> ArraySource:
    """Decodes a whole source once into memory.

    Args:
        source: any image source.

    Returns:
        An ``ArraySource`` holding the same examples in the same order.
    """
    images, labels = decode_all(source)
    return in_memory_like(source, images, labels)


def in_memory_like(
    source: ImageSource, images: np.ndarray, labels: np.ndarray | None
) -> ArraySource:
    """An ``ArraySource`` of decoded ``images`` and ``labels``, described as ``source`` is."""
    return ArraySource(images, labels, num_classes=source.num_classes,
                       class_names=source.class_names, description=source.description,
                       fingerprint=source.fingerprint)
