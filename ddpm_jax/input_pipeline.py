"""tfds image datasets as deterministic, per-process batches in [-1, 1].

``load_split`` opens a split as an ``ImageSource``: random access to uint8 images and int32
labels. Splits whose decoded images fit in ``IN_MEMORY_MAX_BYTES`` are decoded once and held in
memory (``ArraySource``); larger ones are decoded at every read (``RecordSource``), which the
iterators do on a background thread.

Training reads an endless stream made of per-epoch permutations, so the batch of a step is a pure
function of (seed, step) and resuming needs only the step number. Each process takes a contiguous
slice of the global batch. Evaluation walks a split once, in order, padding the last batch and
marking the real examples with a mask.

Fashion-MNIST, the offline default, is prepared on first use by
``ddpm_jax.data.fashion_mnist.FashionMnistIdx`` from Debian's ``dataset-fashion-mnist`` files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import contextlib
import dataclasses
import functools
import itertools
import math
import os
import queue
import threading
import types
from typing import Any, Protocol, TypeVar
import weakref

import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from ddpm_jax.data.fashion_mnist import DEBIAN_DIR, FashionMnistIdx

# Splits whose decoded uint8 images take at most this many bytes are held in memory.
IN_MEMORY_MAX_BYTES = 1 << 30
# Feature holding the images, in every dataset.
IMAGE_KEY = "image"
# Examples decoded per read while filling memory: bounds the transient copies.
_DECODE_CHUNK = 4096
# First entropy word of the numpy seeds, so data order and flips never share a seed.
_ORDER_STREAM, _FLIP_STREAM = 0, 1

T = TypeVar("T")


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


KNOWN_DATASETS = types.MappingProxyType({
    "fashion_mnist": DatasetSpec((28, 28, 1), 10, random_flip=False),
    "mnist": DatasetSpec((28, 28, 1), 10, random_flip=False),
    "cifar10": DatasetSpec((32, 32, 3), 10, random_flip=True),
    # CelebA 64: the centred 140x140 of the 218x178 aligned faces, resized.
    "celeb_a": DatasetSpec((64, 64, 3), None, random_flip=True, label_key=None, center_crop=140),
})


class ImageSource(Protocol):
    """Random access to the examples of one split."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""

    @property
    def num_classes(self) -> int | None:
        """Number of class labels, or None when unlabelled."""

    def __len__(self) -> int:
        """Number of examples N."""

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Reads examples.

        Args:
            indices: int [n], each in [0, N); repeats allowed.

        Returns:
            images uint8 [n, H, W, C] and labels int32 [n] (None when unlabelled).
        """


class ArraySource:
    """An ``ImageSource`` over arrays in memory.

    Args:
        images: uint8 [N, H, W, C].
        labels: int [N], or None when unlabelled.
        num_classes: number of class labels, or None.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        num_classes: int | None = None,
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
        self._images = images
        self._labels = None if labels is None else labels.astype(np.int32)
        self._num_classes = num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._images.shape[1:]

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def __len__(self) -> int:
        return len(self._images)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        labels = None if self._labels is None else self._labels[indices]
        return self._images[indices], labels


class RecordSource:
    """An ``ImageSource`` that decodes tfds records at every read.

    Args:
        records: a tfds data source of the split (``builder.as_data_source(split)``).
        spec: the dataset's spec; ``read`` fits images to its ``image_shape``.
    """

    def __init__(self, records: Sequence[dict[str, Any]], spec: DatasetSpec):
        self._records = records
        self._spec = spec

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._spec.image_shape

    @property
    def num_classes(self) -> int | None:
        return self._spec.num_classes

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


def fit_image(
    image: np.ndarray, *, shape: tuple[int, int, int], center_crop: int | None = None
) -> np.ndarray:
    """Crops the centred square of an image and resizes it (Pillow bilinear, antialiased).

    Args:
        image: uint8 [h, w, C].
        shape: (H, W, C) wanted.
        center_crop: side of the centred square to keep; None keeps the largest.

    Returns:
        uint8 [H, W, C]; ``image`` itself when it already has that shape.
    """
    if image.shape == shape:
        return image
    height, width = image.shape[:2]
    side = center_crop or min(height, width)
    if side > min(height, width):
        raise ValueError(
            f"cannot crop a centred {side}x{side} square from a {height}x{width} image; "
            "use a center_crop no larger than the image"
        )
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    pil = Image.fromarray(square[..., 0] if square.shape[-1] == 1 else square)
    resized = pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(shape)


def load_into_memory(source: ImageSource) -> ArraySource:
    """Decodes a whole source once, in chunks, into memory.

    Args:
        source: any image source.

    Returns:
        An ``ArraySource`` holding the same examples in the same order.
    """
    images = np.empty((len(source), *source.image_shape), np.uint8)
    labels = []
    for start in range(0, len(source), _DECODE_CHUNK):
        indices = np.arange(start, min(start + _DECODE_CHUNK, len(source)))
        images[indices], chunk_labels = source.read(indices)
        labels.append(chunk_labels)
    labelled = bool(labels) and labels[0] is not None
    return ArraySource(
        images, np.concatenate(labels) if labelled else None, num_classes=source.num_classes
    )


def to_model_range(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """Maps uint8 pixels to the model's range.

    Args:
        images: uint8 [...], numpy or JAX.

    Returns:
        float32 [...] in [-1, 1]: x / 127.5 - 1.
    """
    return images.astype(np.float32) / 127.5 - 1.0


def _process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """This process's rows [p*B/P, (p+1)*B/P) of a global batch, validated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} is not in [0, process_count={process_count}); "
            "pass jax.process_index() and jax.process_count()"
        )
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by process_count {process_count}; "
            f"use a multiple of {process_count}"
        )
    per_process = batch_size // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of the examples in one epoch: read-only int64 [num_examples]."""
    permutation = np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(num_examples)
    permutation.flags.writeable = False
    return permutation


def train_indices(
    num_examples: int,
    *,
    seed: int,
    step: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """The example indices of one process's share of the training batch of a step.

    The global batch of step s holds positions [s*B, (s+1)*B) of an endless stream that
    concatenates per-epoch permutations of the N examples, epoch e's drawn from (seed, e); a
    batch may straddle epochs. Process p takes rows [p*B/P, (p+1)*B/P).

    Args:
        num_examples: size N of the split.
        seed: data-order seed, >= 0.
        step: training step, >= 0.
        batch_size: global batch size B, divisible by P.
        process_index: this process p, in [0, P).
        process_count: number of processes P.

    Returns:
        int64 [B/P] indices in [0, N).
    """
    rows = _process_rows(batch_size, process_index, process_count)
    if num_examples < 1:
        raise ValueError(f"cannot draw batches from {num_examples} examples; use a non-empty split")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    positions = step * batch_size + np.arange(rows.start, rows.stop)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        in_epoch = epochs == epoch
        indices[in_epoch] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[in_epoch]]
    return indices


def _batch(images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """A batch: ``image`` float32 in [-1, 1], and ``label`` int32 when labelled."""
    batch = {"image": to_model_range(images)}
    if labels is not None:
        batch["label"] = labels
    return batch


def train_batch(
    source: ImageSource,
    *,
    seed: int,
    step: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    random_flip: bool = False,
) -> dict[str, np.ndarray]:
    """One process's share of the training batch of a step.

    A pure function of its arguments: the examples are those of ``train_indices``, and with
    ``random_flip`` each example of the global batch is mirrored left-right with probability 1/2,
    drawn from (seed, step, position in the batch).

    Args:
        source: the training split.
        seed: data-order seed, >= 0.
        step: training step, >= 0.
        batch_size: global batch size B, divisible by P.
        process_index: this process p, in [0, P).
        process_count: number of processes P.
        random_flip: whether to mirror images at random.

    Returns:
        ``image`` float32 [B/P, H, W, C] in [-1, 1], and ``label`` int32 [B/P] when the source
        is labelled.
    """
    indices = train_indices(
        len(source),
        seed=seed,
        step=step,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    images, labels = source.read(indices)
    if random_flip:
        rows = _process_rows(batch_size, process_index, process_count)
        draws = np.random.default_rng([_FLIP_STREAM, seed, step]).random(batch_size)
        flip = draws[rows] < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    return _batch(images, labels)


def prefetch_in_background(items: Iterable[T], *, size: int) -> Iterator[T]:
    """Iterates over ``items`` on a background thread, up to ``size`` items ahead.

    The thread starts at once and stops when the returned iterator is exhausted, closed or
    garbage-collected. An exception raised by ``items`` reaches the consumer.

    Args:
        items: any iterable; only the background thread touches it.
        size: how many items may wait, >= 1.

    Returns:
        An iterator over the same items, in order.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
            put((True, None))
        except Exception as err:  # pylint: disable=broad-except  # raised again by consume()
            put((True, err))

    def consume() -> Iterator[T]:
        try:
            while True:
                done, item = ready.get()
                if done:
                    if item is not None:
                        raise item
                    return
                yield item
        finally:
            stop.set()

    threading.Thread(target=produce, daemon=True).start()
    iterator = consume()
    weakref.finalize(iterator, stop.set)
    return iterator


def train_iterator(
    source: ImageSource,
    *,
    seed: int,
    start_step: int = 0,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    random_flip: bool = False,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """``train_batch`` for steps start_step, start_step + 1, ..., built on a background thread.

    Args:
        source: the training split.
        seed: data-order seed, >= 0.
        start_step: the first step; resuming needs only this.
        batch_size: global batch size B, divisible by P.
        process_index: this process p, in [0, P).
        process_count: number of processes P.
        random_flip: whether to mirror images at random.
        prefetch: batches made ahead, >= 1.

    Returns:
        An endless iterator of ``train_batch`` results.
    """
    options = dict(batch_size=batch_size, process_index=process_index, process_count=process_count)
    # Validates now rather than at the first next(), on the background thread.
    train_indices(len(source), seed=seed, step=start_step, **options)
    batch = functools.partial(train_batch, source, seed=seed, random_flip=random_flip, **options)
    batches = (batch(step=step) for step in itertools.count(start_step))
    return prefetch_in_background(batches, size=prefetch)


def eval_batches(
    source: ImageSource,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """The whole split once, in order, in batches of one shape.

    Global batch b holds examples [b*B, (b+1)*B); the last is padded with copies of the final
    example, marked False in ``mask``. Process p takes rows [p*B/P, (p+1)*B/P) of each, so every
    process yields ceil(N / B) batches.

    Args:
        source: the split to evaluate on.
        batch_size: global batch size B, divisible by P.
        process_index: this process p, in [0, P).
        process_count: number of processes P.
        prefetch: batches made ahead on a background thread, >= 1.

    Returns:
        An iterator of ``image`` float32 [B/P, H, W, C] in [-1, 1], ``label`` int32 [B/P] when
        labelled, and ``mask`` bool [B/P], True for real examples.
    """
    rows = _process_rows(batch_size, process_index, process_count)
    num_examples = len(source)

    def batch(start: int) -> dict[str, np.ndarray]:
        positions = start + np.arange(rows.start, rows.stop)
        images, labels = source.read(np.minimum(positions, num_examples - 1))
        return {**_batch(images, labels), "mask": positions < num_examples}

    batches = map(batch, range(0, num_examples, batch_size))
    return prefetch_in_background(batches, size=prefetch)


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
    if name == FashionMnistIdx.name:
        builder = FashionMnistIdx(
            idx_dir=fashion_mnist_dir, data_dir=data_dir, file_format="array_record"
        )
        fix = (
            "install its files with `apt-get install dataset-fashion-mnist` (read from "
            f"{fashion_mnist_dir}) or allow downloads from the internet"
        )
        return builder, fix
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.DatasetNotFoundError as err:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {sorted(KNOWN_DATASETS)} or any tfds "
            "image dataset name"
        ) from err
    fix = (
        "run `pip install 'ddpm_jax[tf]'` so tfds can prepare it, or prepare it elsewhere with "
        f"`tfds build {name} --file_format=array_record` and copy it there"
    )
    return builder, fix


def _prepare(builder: tfds.core.DatasetBuilder, *, fix: str) -> None:
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


@contextlib.contextmanager
def _process_zero_first(what: str) -> Iterator[None]:
    """Runs the block on process 0 before the other processes run it (a no-op for one process);
    every process must enter it. Process 0 releases the others even when its block raises, so
    they meet the same error instead of waiting."""
    first = jax.process_index() == 0
    if jax.process_count() > 1 and not first:
        multihost_utils.sync_global_devices(what)
    try:
        yield
    finally:
        if jax.process_count() > 1 and first:
            multihost_utils.sync_global_devices(what)


def load_split(
    name: str = "fashion_mnist",
    split: str = "train",
    *,
    data_dir: os.PathLike[str] | str | None = None,
    image_size: int | None = None,
    keep_in_memory: bool | None = None,
    fashion_mnist_dir: os.PathLike[str] | str = DEBIAN_DIR,
) -> ImageSource:
    """Opens one split of a tfds image dataset, preparing the dataset on first use.

    With several processes every process calls it; process 0 prepares the dataset while the
    others wait.

    Args:
        name: a key of ``KNOWN_DATASETS``, or any tfds dataset with its images under 'image'
            (and its class labels, if any, under 'label').
        split: a tfds split, slices allowed ('train', 'test[:10%]').
        data_dir: the tfds data dir; None means tfds's default ($TFDS_DATA_DIR, else
            ~/tensorflow_datasets).
        image_size: side of the square images to yield, cropping the centre and resizing when
            the dataset's differ; None keeps the dataset's default shape.
        keep_in_memory: whether to decode the split once into memory; None does so when the
            decoded images take at most ``IN_MEMORY_MAX_BYTES``.
        fashion_mnist_dir: where Fashion-MNIST's IDX files are.

    Returns:
        The split, yielding images of shape ``image_shape``.
    """
    with _process_zero_first(f"dataset {name} prepared"):
        builder, fix = _builder(name, data_dir, fashion_mnist_dir)
        spec = KNOWN_DATASETS.get(name) or _spec_from_features(name, builder.info.features)
        spec = dataclasses.replace(spec, image_shape=_output_shape(name, spec, image_size))
        _prepare(builder, fix=fix)
    try:
        records = builder.as_data_source(split=split)
    except ValueError as err:
        raise ValueError(
            f"unknown split {split!r} of dataset {name!r}; expected one of "
            f"{sorted(builder.info.splits)}, optionally sliced like 'train[:10%]'"
        ) from err
    source = RecordSource(records, spec)
    if keep_in_memory is None:
        keep_in_memory = len(source) * math.prod(spec.image_shape) <= IN_MEMORY_MAX_BYTES
    return load_into_memory(source) if keep_in_memory else source
