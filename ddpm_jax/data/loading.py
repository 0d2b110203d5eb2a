"""``load_split``: one entry point for every source (tfds dataset or image folder)."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import itertools
import os

import jax
import orbax.checkpoint as ocp

from ddpm_jax.data.fashion_mnist import DEBIAN_DIR
from ddpm_jax.data.folder import FolderSettings
from ddpm_jax.data.folder_source import default_cache_dir, load_folder_split
from ddpm_jax.data.sources import ImageSource
from ddpm_jax.data.tfds_datasets import IN_MEMORY_MAX_BYTES, load_tfds_split

# ``load_split``'s name for a folder of the user's own images.
FOLDER = "folder"


PREPARE_TIMEOUT_S = 6 * 3600  # how long the other processes wait for process 0 to prepare data
_barrier_ids = itertools.count()  # every process enters the same barriers in the same order


def _wait_for_every_process(what: str) -> None:
    """A barrier of the distributed runtime's coordination service, not a collective: a gloo
    all-gather used as a barrier fails after gloo's connect timeout when process 0 takes longer
    than that to prepare the dataset, while this one waits up to ``PREPARE_TIMEOUT_S`` (a dead
    peer still ends it, through the heartbeat)."""
    barrier = ocp.multihost.get_barrier_sync_fn()
    barrier(key=f"ddpm_jax:{what}:{next(_barrier_ids)}".replace(" ", "_"),
            timeout_ms=PREPARE_TIMEOUT_S * 1000)


@contextlib.contextmanager
def _process_zero_first(what: str) -> Iterator[None]:
    """Runs the block on process 0 before the other processes run it (a no-op for one process);
    every process must enter it. Process 0 releases the others even when its block raises, so
    they meet the same error instead of waiting."""
    first = jax.process_index() == 0
    if jax.process_count() > 1 and not first:
        _wait_for_every_process(what)
    try:
        yield
    finally:
        if jax.process_count() > 1 and first:
            _wait_for_every_process(what)


def load_split(
    name: str = "fashion_mnist",
    split: str = "train",
    *,
    data_dir: os.PathLike[str] | str | None = None,
    image_size: int | None = None,
    keep_in_memory: bool | None = None,
    fashion_mnist_dir: os.PathLike[str] | str = DEBIAN_DIR,
    path: os.PathLike[str] | str | None = None,
    channels: int | None = None,
    labels_from_subdirs: bool = False,
    cache_dir: os.PathLike[str] | str | None = None,
    skip_bad_images: bool = False,
) -> ImageSource:
    """Opens one split of a tfds image dataset or of an image folder, preparing it on first use.

    With several processes every process calls it; process 0 prepares the data (and the decoded
    cache) while the others wait.

    Args:
        name: 'folder' for the images under ``path``; a key of ``KNOWN_DATASETS``; or any tfds
            dataset with its images under 'image' (and class labels, if any, under 'label').
        split: a split, slices allowed ('train', 'test[:10%]'); a folder has only 'train'.
        data_dir: the tfds data dir; None or '' means tfds's default ($TFDS_DATA_DIR, else
            ~/tensorflow_datasets), never the working directory.
        image_size: side of the square images to yield, cropping the centre and resizing when
            the dataset's differ; None keeps a tfds dataset's default shape. Required for folders.
        keep_in_memory: whether to decode the split once into memory; None does so when the
            decoded images take at most ``IN_MEMORY_MAX_BYTES``.
        fashion_mnist_dir: where Fashion-MNIST's IDX files are.
        path: the folder of images (folders only).
        channels: 3 (RGB, None's meaning) or 1 (grey) (folders only).
        labels_from_subdirs: take each image's immediate subfolder as its class (folders only).
        cache_dir: where prepared folders are kept; None or '': a folder in the tfds data dir.
        skip_bad_images: skip files that cannot be decoded instead of failing (folders only).

    Returns:
        The split, yielding images of shape ``image_shape``.
    """
    # '' (an empty flag, an unset shell variable) is the default: tfds would read it as '.'.
    data_dir, cache_dir = data_dir or None, cache_dir or None
    if name != FOLDER:
        folder_only = dict(path=path, channels=channels, labels_from_subdirs=labels_from_subdirs,
                           cache_dir=cache_dir, skip_bad_images=skip_bad_images)
        given = sorted(key for key, value in folder_only.items() if value not in (None, False))
        if given:
            raise ValueError(f"data.{', data.'.join(given)} apply only to data.name='folder', "
                             f"not to the tfds dataset {name!r}; remove them")
    with _process_zero_first(f"dataset {name} prepared"):
        if name == FOLDER:
            settings = FolderSettings(image_size=image_size, channels=channels or 3,
                                      labels_from_subdirs=labels_from_subdirs,
                                      skip_bad_images=skip_bad_images)
            return load_folder_split(path, split, settings=settings,
                                     cache_dir=cache_dir or default_cache_dir(data_dir),
                                     keep_in_memory=keep_in_memory,
                                     in_memory_max_bytes=IN_MEMORY_MAX_BYTES)
        return load_tfds_split(name, split, data_dir=data_dir, image_size=image_size,
                               keep_in_memory=keep_in_memory, fashion_mnist_dir=fashion_mnist_dir)
