"""The decoded uint8 arrays of a small split, stored once as .npy and memory-mapped afterwards.

Decoding Fashion-MNIST's 60,000 PNGs takes seconds at every start; the arrays it yields are
stored beside the dataset's tfds files (whose folder names its version), keyed by the split and
the output shape. Each file is written under a temporary name and renamed, so a killed run never
leaves a partial cache; the images file, written last, marks the entry complete.
"""

from __future__ import annotations

import hashlib
import re

from absl import logging
from etils import epath
import numpy as np

from ddpm_jax.atomic_files import atomic_write

# Bump when the decoding itself changes (resize filter, crop), so old entries are not read.
CACHE_VERSION = 1
FOLDER = "ddpm_jax_decoded"


def _stem(folder: epath.Path, split: str, key: str) -> epath.Path:
    """The entry's path without suffix: a readable slug of the split plus a hash of the key."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", split).strip("_")
    digest = hashlib.sha256(f"{CACHE_VERSION}|{split}|{key}".encode()).hexdigest()[:12]
    return folder / f"{slug}-{digest}"


def load(
    folder: epath.PathLike, split: str, key: str
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The cached arrays of a split, memory-mapped read-only, or None when not cached.

    Args:
        folder: the dataset's version folder (``builder.data_path``).
        split: the split as given ('train[:10%]').
        key: everything else the decoded arrays depend on, e.g. the output shape.

    Returns:
        images uint8 [N, H, W, C] and labels int32 [N] (None when unlabelled), or None.
    """
    stem = _stem(epath.Path(folder) / FOLDER, split, key)
    images_path = stem.with_name(stem.name + "-images.npy")
    if not images_path.exists():
        return None
    labels_path = stem.with_name(stem.name + "-labels.npy")
    labels = np.load(labels_path) if labels_path.exists() else None
    return np.load(images_path, mmap_mode="r"), labels


def store(
    folder: epath.PathLike,
    split: str,
    key: str,
    images: np.ndarray,
    labels: np.ndarray | None,
) -> None:
    """Stores a split's decoded arrays; a folder that cannot be written is skipped with a warning.

    Args:
        folder: the dataset's version folder (``builder.data_path``).
        split: the split as given.
        key: everything else the decoded arrays depend on.
        images: uint8 [N, H, W, C].
        labels: int32 [N], or None.
    """
    stem = _stem(epath.Path(folder) / FOLDER, split, key)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        if labels is not None:
            _save_atomically(stem.with_name(stem.name + "-labels.npy"), labels)
        _save_atomically(stem.with_name(stem.name + "-images.npy"), images)
    except OSError as err:
        logging.warning("not caching the decoded split %r in %s: %s", split, stem.parent, err)


def _save_atomically(path: epath.Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array)
