"""Input: sources (tfds datasets, image folders, arrays in memory), the deterministic
(seed, step) order and process slicing, background prefetch, and TensorFlow-free preparation.

    source = data.load_split("fashion_mnist", "train")          # or name="folder", path=...
    batches = data.train_iterator(source, seed=0, batch_size=128)

Modules: ``sources`` (the ``ImageSource`` protocol, in-memory and tfds-record sources),
``order`` (batches as a pure function of (seed, step)), ``prefetch``, ``images`` (colour and
geometry), ``folder`` / ``folder_source`` (image folders), ``tfds_datasets`` and
``decoded_cache`` (tfds datasets), ``fashion_mnist`` / ``mnist`` / ``cifar10`` (builders),
``loading`` (``load_split``), ``class_names`` (``labels.json``).
"""

from ddpm_jax.data.class_names import parse_labels, read_class_names, write_class_names
from ddpm_jax.data.folder import IMAGE_EXTENSIONS, FolderSettings
from ddpm_jax.data.images import BACKGROUND, fit_image, resize_and_center_crop, to_channels
from ddpm_jax.data.loading import FOLDER, load_split
from ddpm_jax.data.order import (check_holds_a_batch, eval_batches, to_model_range, train_batch,
                                 train_indices, train_iterator)
from ddpm_jax.data.prefetch import prefetch_in_background
from ddpm_jax.data.sources import (ArraySource, DatasetSpec, ImageSource, RecordSource,
                                   load_into_memory)
from ddpm_jax.data.tfds_datasets import IN_MEMORY_MAX_BYTES, KNOWN_DATASETS

__all__ = [
    "ArraySource", "BACKGROUND", "DatasetSpec", "FOLDER", "FolderSettings", "IMAGE_EXTENSIONS",
    "IN_MEMORY_MAX_BYTES", "ImageSource", "KNOWN_DATASETS", "RecordSource", "check_holds_a_batch",
    "eval_batches",
    "fit_image", "load_into_memory", "load_split", "parse_labels", "prefetch_in_background",
    "read_class_names", "resize_and_center_crop", "to_channels", "to_model_range", "train_batch",
    "train_indices", "train_iterator", "write_class_names",
]
