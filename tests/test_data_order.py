"""Deterministic batches of ``ddpm_jax.data.order``: the (seed, step) order, process slices,
flips, evaluation batches, prefetch, and their errors.

The tests run on a tiny in-memory source whose pixels spell out each example's index, so order,
coverage and flips can be read back from the batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, visualize

MARK = 250  # right-hand pixel of every tiny image; the left one is the example's index



def tiny_source(n: int, *, labelled: bool = True) -> data.ArraySource:
    """n images of shape [1, 2, 1] holding (index, MARK): a flip puts MARK first."""
    images = np.stack([np.arange(n), np.full(n, MARK)], axis=1).astype(np.uint8)
    labels = np.arange(n) % 3 if labelled else None
    return data.ArraySource(images.reshape(n, 1, 2, 1), labels, num_classes=3 if labelled else None)


def decode(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, flipped?) of a batch of tiny images."""
    pixels = visualize.to_uint8(batch["image"])[:, 0, :, 0]
    flipped = pixels[:, 0] == MARK
    return np.where(flipped, pixels[:, 1], pixels[:, 0]).astype(int), flipped


# --------------------------------------------------------------------------------------------
# Scaling


def test_model_range_round_trips_every_pixel_value():
    pixels = np.arange(256, dtype=np.uint8)
    x = data.to_model_range(pixels)
    assert x.dtype == np.float32 and x[0] == -1 and x[-1] == 1
    np.testing.assert_array_equal(visualize.to_uint8(x), pixels)
    # Under jit XLA may multiply by 1/127.5 (last-bit differences); the pixels still round-trip.
    jitted = jax.jit(data.to_model_range)(jnp.asarray(pixels))
    np.testing.assert_array_equal(visualize.to_uint8(jitted), pixels)


# --------------------------------------------------------------------------------------------
# Training batches


def test_train_batch_shape_dtype_and_range():
    batch = data.train_batch(tiny_source(10), seed=0, step=3, batch_size=4, random_flip=True)
    assert batch["image"].shape == (4, 1, 2, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    indices, _ = decode(batch)
    np.testing.assert_array_equal(batch["label"], indices % 3)
    unlabelled = data.train_batch(tiny_source(10, labelled=False), seed=0, step=0, batch_size=4)
    assert set(unlabelled) == {"image"}


def test_train_batch_is_a_pure_function_of_seed_and_step():
    def batch(seed, step):
        return data.train_batch(tiny_source(200), seed=seed, step=step, batch_size=16,
                              random_flip=True)["image"]

    np.testing.assert_array_equal(batch(3, 7), batch(3, 7))
    assert not np.array_equal(batch(3, 7), batch(3, 8))
    assert not np.array_equal(batch(3, 7), batch(4, 7))


@pytest.mark.parametrize("num_examples, batch_size", [(12, 4), (10, 4), (3, 8)])
def test_stream_is_a_concatenation_of_epoch_permutations(num_examples, batch_size):
    # (12, 4): whole epochs; (10, 4): batches straddle epochs; (3, 8): a batch spans 3 epochs.
    source, epochs = tiny_source(num_examples), 4
    steps = -(-epochs * num_examples // batch_size)  # enough to cover 4 epochs
    stream = np.concatenate([
        decode(data.train_batch(source, seed=5, step=s, batch_size=batch_size))[0]
        for s in range(steps)
    ])
    per_epoch = stream[: epochs * num_examples].reshape(epochs, num_examples)
    for order in per_epoch:
        np.testing.assert_array_equal(np.sort(order), np.arange(num_examples))
    assert len({tuple(order) for order in per_epoch}) > 1  # each epoch reshuffled
    np.testing.assert_array_equal(
        stream, data.train_indices(num_examples, seed=5, step=0, batch_size=steps * batch_size)
    )


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("step", [0, 2])  # step 2 of (N=10, B=8) straddles an epoch boundary
def test_process_slices_are_disjoint_and_make_the_global_batch(process_count, step):
    source = tiny_source(10)
    options = dict(seed=1, step=step, batch_size=8, random_flip=True)
    whole = data.train_batch(source, **options)
    parts = [
        data.train_batch(source, process_index=p, process_count=process_count, **options)
        for p in range(process_count)
    ]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])
    if step == 0:  # within one epoch, no index can repeat
        indices = np.concatenate([decode(part)[0] for part in parts])
        assert len(set(indices.tolist())) == 8


def test_random_flip_is_deterministic_and_fair():
    source = tiny_source(100)

    def flips(random_flip):
        return np.concatenate([
            decode(data.train_batch(source, seed=2, step=s, batch_size=50,
                                  random_flip=random_flip))[1]
            for s in range(20)
        ])

    on = flips(True)
    np.testing.assert_array_equal(on, flips(True))
    assert 0.45 < on.mean() < 0.55
    assert not flips(False).any()
    # Flips change pixels only, never which examples are drawn.
    flipped = data.train_batch(source, seed=2, step=0, batch_size=50, random_flip=True)
    plain = data.train_batch(source, seed=2, step=0, batch_size=50)
    np.testing.assert_array_equal(decode(flipped)[0], decode(plain)[0])


def test_train_iterator_resumes_from_the_step_alone():
    source = tiny_source(10)
    options = dict(seed=4, batch_size=4, random_flip=True)
    iterator = data.train_iterator(source, start_step=5, **options)
    for step in range(5, 9):
        expected = data.train_batch(source, step=step, **options)
        got = next(iterator)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    iterator.close()


def test_prefetch_keeps_order_and_raises_errors():
    assert list(data.prefetch_in_background(range(100), size=3)) == list(range(100))

    def failing():
        yield 1
        raise RuntimeError("broken source")

    iterator = data.prefetch_in_background(failing(), size=1)
    assert next(iterator) == 1
    with pytest.raises(RuntimeError, match="broken source"):
        next(iterator)


# --------------------------------------------------------------------------------------------
# Evaluation batches


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_the_split_once_with_a_mask(process_count):
    source = tiny_source(10)
    per_process = [
        list(data.eval_batches(source, batch_size=4, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    assert all(len(batches) == 3 for batches in per_process)  # ceil(10 / 4)
    seen = []
    for b in range(3):
        batch = {key: np.concatenate([batches[b][key] for batches in per_process])
                 for key in per_process[0][b]}
        assert batch["image"].shape == (4, 1, 2, 1) and batch["mask"].dtype == bool
        indices, flipped = decode(batch)
        assert not flipped.any()
        np.testing.assert_array_equal(batch["label"], indices % 3)
        seen += indices[batch["mask"]].tolist()
    assert seen == list(range(10))
    last_mask = np.concatenate([batches[-1]["mask"] for batches in per_process])
    assert last_mask.tolist() == [True, True, False, False]


# --------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=10, process_count=3), "batch_size 10 is not divisible by process_count 3; "
                                           "use a multiple of 3"),
    (dict(batch_size=0), "batch_size must be positive, got 0"),
    (dict(batch_size=4, process_index=2, process_count=2), r"process_index 2 is not in \[0, "),
    (dict(batch_size=4, seed=-1), "seed and step must be >= 0, got seed=-1"),
])
def test_bad_batch_arguments(kwargs, message):
    options = dict(seed=0, step=0) | kwargs
    with pytest.raises(ValueError, match=message):
        data.train_batch(tiny_source(10), **options)
    with pytest.raises(ValueError, match=message):  # at the call, not at the first next()
        data.train_iterator(tiny_source(10), start_step=options.pop("step"), **options)


def test_eval_batch_size_not_divisible():
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by process_count 4"):
        data.eval_batches(tiny_source(10), batch_size=6, process_count=4)


def test_bad_array_source():
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, C\], got float32"):
        data.ArraySource(np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\) but the images need \(2,\)"):
        data.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3))
