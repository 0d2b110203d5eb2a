"""An image folder as an ``ImageSource``: prepared on first use (``folder.prepare_folder``), then
random access to its array_record of raw pixels, sliced like a tfds split ('train[:90%]'); the
examples are in the preparation's fixed shuffled order, so a slice mixes every class."""

from __future__ import annotations

import json
import os
import pathlib
import types

from array_record.python import array_record_data_source
import numpy as np
import tensorflow_datasets as tfds

from ddpm_jax.data import folder
from ddpm_jax.data.sources import DescribedSource, ImageSource, load_into_memory
from ddpm_jax.data.tfds_datasets import split_error

# The one split of a folder: every image it holds.
SPLIT = "train"
# Under the tfds data dir unless data.cache_dir says otherwise.
DEFAULT_CACHE_FOLDER = "ddpm_jax_image_folders"


class FolderSource(DescribedSource):
    """An ``ImageSource`` reading a prepared folder entry.

    Args:
        entry: a folder returned by ``folder.prepare_folder``.
        rows: the entry's examples this source holds, int [N], in order.
    """

    def __init__(self, entry: pathlib.Path, rows: np.ndarray):
        meta = json.loads((entry / folder.META).read_text())
        names = meta["class_names"]
        super().__init__(num_classes=None if names is None else len(names), class_names=names,
                         description=f"image folder {meta['root']}",
                         fingerprint=meta["fingerprint"])
        records = str(entry / folder.RECORDS)
        self._records = array_record_data_source.ArrayRecordDataSource([records])
        self._rows = np.asarray(rows, np.int64)
        self._shape = tuple(meta["image_shape"])
        self._labels = np.load(entry / folder.LABELS) if names is not None else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        rows = self._rows[np.asarray(indices, np.int64)]
        records = self._records.__getitems__(rows.tolist())
        images = np.frombuffer(b"".join(records), np.uint8).reshape(len(rows), *self._shape)
        return images, None if self._labels is None else self._labels[rows]


def _rows(split: str, num_examples: int, root: pathlib.Path) -> np.ndarray:
    """The examples of a split spec ('train', 'train[:10%]', 'train[:8]+train[-8:]')."""
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
            {SPLIT: types.SimpleNamespace(num_examples=num_examples)})
    except (ValueError, AssertionError) as err:
        raise split_error(split, f"image folder {root}", {SPLIT: num_examples}, err) from err
    return np.concatenate([np.arange(num_examples)[i.from_:i.to] for i in instructions])


def default_cache_dir(data_dir: os.PathLike[str] | str | None) -> pathlib.Path:
    """Where prepared folders go by default: a folder in the tfds data dir."""
    data_dir = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser().absolute()
    return data_dir / DEFAULT_CACHE_FOLDER


def load_folder_split(
    path: os.PathLike[str] | str | None,
    split: str = SPLIT,
    *,
    settings: folder.FolderSettings,
    cache_dir: os.PathLike[str] | str,
    keep_in_memory: bool | None = None,
    in_memory_max_bytes: int,
) -> ImageSource:
    """Prepares an image folder unless cached, and opens a split of it.

    Args:
        path: the folder of images.
        split: 'train' or a slice of it.
        settings: how images become examples.
        cache_dir: where prepared folders live.
        keep_in_memory: whether to read all pixels into memory; None does so when they take at
            most ``in_memory_max_bytes``.
        in_memory_max_bytes: the threshold for None.

    Returns:
        The split.
    """
    if not path:
        raise ValueError("data.name='folder' needs data.path, the folder of images; pass e.g. "
                         "--config.data.path=/data/my_images")
    root = pathlib.Path(path).expanduser().resolve()
    entry = folder.prepare_folder(root, settings, pathlib.Path(cache_dir).expanduser())
    num_examples = json.loads((entry / folder.META).read_text())["num_examples"]
    source = FolderSource(entry, _rows(split, num_examples, root))
    if keep_in_memory is None:
        keep_in_memory = len(source) * int(np.prod(source.image_shape)) <= in_memory_max_bytes
    return load_into_memory(source) if keep_in_memory else source
