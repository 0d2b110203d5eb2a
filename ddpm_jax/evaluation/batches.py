"""The first N images of a split, in order, in padded global batches (shared by the metrics)."""

from __future__ import annotations

from collections.abc import Iterator
import itertools
import math

import numpy as np

from ddpm_jax import data
from ddpm_jax.data import ImageSource


def check_num_examples(source: ImageSource, num_examples: int | None) -> int:
    """``num_examples`` validated against the split's size; None means all of it."""
    if num_examples is None:
        return len(source)
    if not 1 <= num_examples <= len(source):
        raise ValueError(f"num_examples must be in [1, {len(source)}] (the split's size), "
                         f"got {num_examples}")
    return num_examples


def leading_batches(source: ImageSource, num_examples: int, *, batch_size: int,
                     process_index: int = 0, process_count: int = 1
                     ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(offset, batch) of the ``eval_batches`` that hold the first ``num_examples``, in order.

    ``offset`` is the position in the split of the batch's first row (of the global batch).
    """
    batches = data.eval_batches(source, batch_size=batch_size,
                                          process_index=process_index,
                                          process_count=process_count)
    try:
        for b, batch in enumerate(itertools.islice(batches, math.ceil(num_examples / batch_size))):
            yield b * batch_size, batch
    finally:
        batches.close()
