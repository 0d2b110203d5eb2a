"""Deterministic batches: the order of a step is a pure function of (seed, step).

Training reads an endless stream made of per-epoch permutations, so resuming needs only the step
number. Each process takes a contiguous slice of the global batch. Evaluation walks a split once,
in order, padding the last batch and marking the real examples with a mask. Every source (tfds,
image folder, in memory) goes through these functions.
"""

from __future__ import annotations

from collections.abc import Iterator
import functools
import itertools

import jax
import numpy as np

from ddpm_jax.data.prefetch import prefetch_in_background
from ddpm_jax.data.sources import ImageSource

# First entropy word of the numpy seeds, so data order and flips never share a seed.
_ORDER_STREAM, _FLIP_STREAM = 0, 1


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


def check_holds_a_batch(source: ImageSource, *, batch_size: int) -> None:
    """Raises a one-line error naming the source when it holds fewer than ``batch_size``
    examples (every epoch would repeat examples within a batch)."""
    if len(source) < batch_size:
        raise ValueError(
            f"{source.description} has {len(source)} examples, fewer than one global batch of "
            f"{batch_size}; add examples or lower training.batch_size"
        )


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
        source: the training split, holding at least one global batch.
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
    check_holds_a_batch(source, batch_size=batch_size)
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
