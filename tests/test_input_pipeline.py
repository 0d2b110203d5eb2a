"""Input pipeline: Fashion-MNIST prepared from Debian's files, deterministic batches, errors.

Most tests run on a tiny in-memory source whose pixels spell out each example's index, so
order, coverage and flips can be read back from the batches. One session fixture prepares the
real Fashion-MNIST (~20 s) and another a tiny tfds dataset of odd-sized images (generic path).
"""

import gzip
import io
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from ddpm_jax import input_pipeline as ip, visualize
from ddpm_jax.data import fashion_mnist

MARK = 250  # right-hand pixel of every tiny image; the left one is the example's index


def tiny_source(n: int, *, labelled: bool = True) -> ip.ArraySource:
    """n images of shape [1, 2, 1] holding (index, MARK): a flip puts MARK first."""
    images = np.stack([np.arange(n), np.full(n, MARK)], axis=1).astype(np.uint8)
    labels = np.arange(n) % 3 if labelled else None
    return ip.ArraySource(images.reshape(n, 1, 2, 1), labels, num_classes=3 if labelled else None)


def decode(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, flipped?) of a batch of tiny images."""
    pixels = visualize.to_uint8(batch["image"])[:, 0, :, 0]
    flipped = pixels[:, 0] == MARK
    return np.where(flipped, pixels[:, 1], pixels[:, 0]).astype(int), flipped


def idx_examples(split: str) -> list[bytes]:
    """Sorted (image bytes + label) of a split, parsed straight from Debian's IDX files."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = fashion_mnist.DEBIAN_DIR
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28 * 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))


# --------------------------------------------------------------------------------------------
# Scaling


def test_model_range_round_trips_every_pixel_value():
    pixels = np.arange(256, dtype=np.uint8)
    x = ip.to_model_range(pixels)
    assert x.dtype == np.float32 and x[0] == -1 and x[-1] == 1
    np.testing.assert_array_equal(visualize.to_uint8(x), pixels)
    # Under jit XLA may multiply by 1/127.5 (last-bit differences); the pixels still round-trip.
    np.testing.assert_array_equal(visualize.to_uint8(jax.jit(ip.to_model_range)(jnp.asarray(pixels))),
                                  pixels)


# --------------------------------------------------------------------------------------------
# Training batches


def test_train_batch_shape_dtype_and_range():
    batch = ip.train_batch(tiny_source(10), seed=0, step=3, batch_size=4, random_flip=True)
    assert batch["image"].shape == (4, 1, 2, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    indices, _ = decode(batch)
    np.testing.assert_array_equal(batch["label"], indices % 3)
    unlabelled = ip.train_batch(tiny_source(10, labelled=False), seed=0, step=0, batch_size=4)
    assert set(unlabelled) == {"image"}


def test_train_batch_is_a_pure_function_of_seed_and_step():
    def batch(seed, step):
        return ip.train_batch(tiny_source(200), seed=seed, step=step, batch_size=16,
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
        decode(ip.train_batch(source, seed=5, step=s, batch_size=batch_size))[0]
        for s in range(steps)
    ])
    per_epoch = stream[: epochs * num_examples].reshape(epochs, num_examples)
    for order in per_epoch:
        np.testing.assert_array_equal(np.sort(order), np.arange(num_examples))
    assert len({tuple(order) for order in per_epoch}) > 1  # each epoch reshuffled
    np.testing.assert_array_equal(
        stream, ip.train_indices(num_examples, seed=5, step=0, batch_size=steps * batch_size)
    )


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("step", [0, 2])  # step 2 of (N=10, B=8) straddles an epoch boundary
def test_process_slices_are_disjoint_and_make_the_global_batch(process_count, step):
    source = tiny_source(10)
    options = dict(seed=1, step=step, batch_size=8, random_flip=True)
    whole = ip.train_batch(source, **options)
    parts = [
        ip.train_batch(source, process_index=p, process_count=process_count, **options)
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
            decode(ip.train_batch(source, seed=2, step=s, batch_size=50,
                                  random_flip=random_flip))[1]
            for s in range(20)
        ])

    on = flips(True)
    np.testing.assert_array_equal(on, flips(True))
    assert 0.45 < on.mean() < 0.55
    assert not flips(False).any()
    # Flips change pixels only, never which examples are drawn.
    flipped = ip.train_batch(source, seed=2, step=0, batch_size=50, random_flip=True)
    plain = ip.train_batch(source, seed=2, step=0, batch_size=50)
    np.testing.assert_array_equal(decode(flipped)[0], decode(plain)[0])


def test_train_iterator_resumes_from_the_step_alone():
    source = tiny_source(10)
    options = dict(seed=4, batch_size=4, random_flip=True)
    iterator = ip.train_iterator(source, start_step=5, **options)
    for step in range(5, 9):
        expected = ip.train_batch(source, step=step, **options)
        got = next(iterator)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    iterator.close()


def test_prefetch_keeps_order_and_raises_errors():
    assert list(ip.prefetch_in_background(range(100), size=3)) == list(range(100))

    def failing():
        yield 1
        raise RuntimeError("broken source")

    iterator = ip.prefetch_in_background(failing(), size=1)
    assert next(iterator) == 1
    with pytest.raises(RuntimeError, match="broken source"):
        next(iterator)


# --------------------------------------------------------------------------------------------
# Evaluation batches


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_the_split_once_with_a_mask(process_count):
    source = tiny_source(10)
    per_process = [
        list(ip.eval_batches(source, batch_size=4, process_index=p, process_count=process_count))
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
# Images and sources


def test_fit_image_crops_the_centre_and_resizes():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    out = ip.fit_image(face, shape=(64, 64, 3), center_crop=140)
    expected = Image.fromarray(face[39:179, 19:159]).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(expected))
    digit = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert ip.fit_image(digit, shape=(28, 28, 1)) is digit
    assert ip.fit_image(digit, shape=(32, 32, 1)).shape == (32, 32, 1)
    with pytest.raises(ValueError, match="cannot crop a centred 140x140 square from a 28x28"):
        ip.fit_image(digit, shape=(16, 16, 1), center_crop=140)


def test_known_datasets_table():
    assert ip.KNOWN_DATASETS["fashion_mnist"].image_shape == (28, 28, 1)
    assert ip.KNOWN_DATASETS["cifar10"].random_flip
    celeb_a = ip.KNOWN_DATASETS["celeb_a"]
    assert celeb_a.image_shape == (64, 64, 3) and celeb_a.center_crop == 140
    assert celeb_a.num_classes is None and celeb_a.label_key is None


class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """9 labelled RGB images of varying sizes, PNG-encoded with Pillow (no TF needed)."""

    VERSION = tfds.core.Version("1.0.0")
    url_infos = None  # see FashionMnistIdx

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=4),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(9):
            image = np.full((10 + i, 12, 3), i, np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            yield i, {"image": buffer.getvalue(), "label": i % 4}


@pytest.fixture(scope="session")
def tiny_tfds_dir(tmp_path_factory) -> pathlib.Path:
    """A data dir holding TinyImages prepared as array_record (read back unregistered)."""
    data_dir = tmp_path_factory.mktemp("tiny_tfds")
    TinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_any_prepared_tfds_image_dataset_loads(tiny_tfds_dir):
    source = ip.load_split("tiny_images", "train", data_dir=tiny_tfds_dir, image_size=8)
    assert isinstance(source, ip.ArraySource)
    assert len(source) == 9 and source.image_shape == (8, 8, 3) and source.num_classes == 4
    on_the_fly = ip.load_split("tiny_images", "train", data_dir=tiny_tfds_dir, image_size=8,
                               keep_in_memory=False)
    assert isinstance(on_the_fly, ip.RecordSource)
    indices = np.array([8, 0, 3, 3])
    for a, b in zip(source.read(indices), on_the_fly.read(indices)):
        np.testing.assert_array_equal(a, b)
    images, labels = source.read(np.arange(9))
    values = images[:, 4, 4, 0]  # tfds shuffled the constant images i of 10+i x 12 pixels
    assert (images == values[:, None, None, None]).all()
    np.testing.assert_array_equal(np.sort(values), np.arange(9))
    np.testing.assert_array_equal(labels, values % 4)


def test_varying_image_sizes_need_image_size(tiny_tfds_dir):
    with pytest.raises(ValueError, match=r"'tiny_images' has images of varying shape .*image_size"):
        ip.load_split("tiny_images", "train", data_dir=tiny_tfds_dir)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST from Debian's files


@pytest.mark.parametrize("split, size", [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_holds_exactly_the_idx_examples(fashion_dir, split, size):
    source = ip.load_split("fashion_mnist", split, data_dir=fashion_dir)
    assert isinstance(source, ip.ArraySource)
    assert len(source) == size and source.image_shape == (28, 28, 1) and source.num_classes == 10
    images, labels = source.read(np.arange(size))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert set(labels.tolist()) == set(range(10))
    prepared = sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))
    assert prepared == idx_examples(split)


def test_fashion_mnist_reads_back_as_plain_tfds(fashion_dir):
    records = tfds.data_source("fashion_mnist", split="test", data_dir=fashion_dir, download=False)
    assert len(records) == 10_000 and records[0]["image"].shape == (28, 28, 1)
    source = ip.load_split("fashion_mnist", "test", data_dir=fashion_dir, keep_in_memory=False)
    assert isinstance(source, ip.RecordSource)
    image, label = source.read(np.array([0]))
    np.testing.assert_array_equal(image[0], records[0]["image"])
    assert label[0] == records[0]["label"]


def test_fashion_mnist_batches_match_across_sources(fashion_dir):
    options = dict(seed=0, step=468, batch_size=128, random_flip=True)  # straddles epochs 0 and 1
    in_memory = ip.train_batch(ip.load_split("fashion_mnist", "test", data_dir=fashion_dir),
                               **options)
    decoded = ip.train_batch(
        ip.load_split("fashion_mnist", "test", data_dir=fashion_dir, keep_in_memory=False),
        **options,
    )
    for key in in_memory:
        np.testing.assert_array_equal(in_memory[key], decoded[key])


def test_unknown_split(fashion_dir):
    with pytest.raises(ValueError, match=r"unknown split 'tran' of dataset 'fashion_mnist'; "
                                         r"expected one of \['test', 'train'\]"):
        ip.load_split("fashion_mnist", "tran", data_dir=fashion_dir)


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
        ip.train_batch(tiny_source(10), **options)
    with pytest.raises(ValueError, match=message):  # at the call, not at the first next()
        ip.train_iterator(tiny_source(10), start_step=options.pop("step"), **options)


def test_eval_batch_size_not_divisible():
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by process_count 4"):
        ip.eval_batches(tiny_source(10), batch_size=6, process_count=4)


def test_bad_array_source():
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, C\], got float32"):
        ip.ArraySource(np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\) but the images need \(2,\)"):
        ip.ArraySource(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3))


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'fashoin_mnist'; expected one of "
                                         r"\['celeb_a', 'cifar10', 'fashion_mnist', 'mnist'\] "
                                         "or any tfds image dataset name"):
        ip.load_split("fashoin_mnist", data_dir=tmp_path)


def test_non_positive_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size must be positive, got 0"):
        ip.load_split("fashion_mnist", data_dir=tmp_path, image_size=0)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    # A reserved, never-resolving host: fails fast whether or not the internet is reachable.
    monkeypatch.setattr(fashion_mnist.FashionMnistIdx, "URL", "http://fashion-mnist.invalid/")
    expected = (
        rf"'fashion_mnist' is not prepared in {tmp_path}/fashion_mnist/3.0.1 .*"
        r"ConnectionError: cannot resolve fashion-mnist.invalid.*"
        r"`apt-get install dataset-fashion-mnist` \(read from .*missing\)"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        ip.load_split("fashion_mnist", data_dir=tmp_path, fashion_mnist_dir=tmp_path / "missing")


def test_unprepared_dataset_names_the_tf_extra(tmp_path, monkeypatch):
    def no_tensorflow(self, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_tensorflow)
    expected = (
        rf"'cifar10' is not prepared in {tmp_path}/cifar10/.*No module named 'tensorflow'.*"
        r"pip install 'ddpm_jax\[tf\]'.*tfds build cifar10 --file_format=array_record"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        ip.load_split("cifar10", data_dir=tmp_path)
