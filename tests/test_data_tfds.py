"""tfds datasets through ``ddpm_jax.data``: Fashion-MNIST prepared from Debian's files, any
prepared tfds image dataset, the decoded cache, and their errors.

One session fixture (conftest's ``fashion_dir``) prepares the real Fashion-MNIST (~20 s) and
another a tiny tfds dataset of odd-sized images (the generic path).
"""

import gzip
import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from ddpm_jax import data
from ddpm_jax.data import fashion_mnist, tfds_datasets


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
# Images and sources


def test_fit_image_crops_the_centre_and_resizes():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    out = data.fit_image(face, shape=(64, 64, 3), center_crop=140)
    expected = Image.fromarray(face[39:179, 19:159]).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(expected))
    digit = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert data.fit_image(digit, shape=(28, 28, 1)) is digit
    assert data.fit_image(digit, shape=(32, 32, 1)).shape == (32, 32, 1)
    with pytest.raises(ValueError, match="cannot crop a centred 140x140 square from a 28x28"):
        data.fit_image(digit, shape=(16, 16, 1), center_crop=140)


def test_known_datasets_table():
    assert data.KNOWN_DATASETS["fashion_mnist"].image_shape == (28, 28, 1)
    assert data.KNOWN_DATASETS["cifar10"].random_flip
    celeb_a = data.KNOWN_DATASETS["celeb_a"]
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
    source = data.load_split("tiny_images", "train", data_dir=tiny_tfds_dir, image_size=8)
    assert isinstance(source, data.ArraySource)
    assert len(source) == 9 and source.image_shape == (8, 8, 3) and source.num_classes == 4
    on_the_fly = data.load_split("tiny_images", "train", data_dir=tiny_tfds_dir, image_size=8,
                               keep_in_memory=False)
    assert isinstance(on_the_fly, data.RecordSource)
    indices = np.array([8, 0, 3, 3])
    for a, b in zip(source.read(indices), on_the_fly.read(indices)):
        np.testing.assert_array_equal(a, b)
    images, labels = source.read(np.arange(9))
    values = images[:, 4, 4, 0]  # tfds shuffled the constant images i of 10+i x 12 pixels
    assert (images == values[:, None, None, None]).all()
    np.testing.assert_array_equal(np.sort(values), np.arange(9))
    np.testing.assert_array_equal(labels, values % 4)


def test_decoded_split_is_cached_and_memory_mapped(tiny_tfds_dir, monkeypatch):
    first = data.load_split("tiny_images", "train[:7]", data_dir=tiny_tfds_dir, image_size=6)
    cached = (tiny_tfds_dir / "tiny_images" / "1.0.0" / "ddpm_jax_decoded").glob("train_7-*")
    assert sorted(p.name.rsplit("-", 1)[1] for p in cached) == ["images.npy", "labels.npy"]

    def no_decoding(source):
        raise AssertionError("decoded again")

    monkeypatch.setattr(tfds_datasets, "decode_all", no_decoding)
    again = data.load_split("tiny_images", "train[:7]", data_dir=tiny_tfds_dir, image_size=6)
    images, labels = again.read(np.arange(7))
    assert isinstance(again._images, np.memmap) and again.class_names == first.class_names
    for a, b in zip(first.read(np.arange(7)), (images, labels)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError, match="decoded again"):  # another shape, another entry
        data.load_split("tiny_images", "train[:7]", data_dir=tiny_tfds_dir, image_size=5)


def test_varying_image_sizes_need_image_size(tiny_tfds_dir):
    with pytest.raises(ValueError, match=r"'tiny_images' has images of varying shape .*image_size"):
        data.load_split("tiny_images", "train", data_dir=tiny_tfds_dir)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST from Debian's files


@pytest.mark.parametrize("split, size", [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_holds_exactly_the_idx_examples(fashion_dir, split, size):
    source = data.load_split("fashion_mnist", split, data_dir=fashion_dir)
    assert isinstance(source, data.ArraySource)
    assert len(source) == size and source.image_shape == (28, 28, 1) and source.num_classes == 10
    images, labels = source.read(np.arange(size))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert set(labels.tolist()) == set(range(10))
    prepared = sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))
    assert prepared == idx_examples(split)


def test_fashion_mnist_reads_back_as_plain_tfds(fashion_dir):
    records = tfds.data_source("fashion_mnist", split="test", data_dir=fashion_dir, download=False)
    assert len(records) == 10_000 and records[0]["image"].shape == (28, 28, 1)
    source = data.load_split("fashion_mnist", "test", data_dir=fashion_dir, keep_in_memory=False)
    assert isinstance(source, data.RecordSource)
    image, label = source.read(np.array([0]))
    np.testing.assert_array_equal(image[0], records[0]["image"])
    assert label[0] == records[0]["label"]


def test_fashion_mnist_batches_match_across_sources(fashion_dir):
    options = dict(seed=0, step=468, batch_size=128, random_flip=True)  # straddles epochs 0 and 1
    in_memory = data.train_batch(data.load_split("fashion_mnist", "test", data_dir=fashion_dir),
                               **options)
    decoded = data.train_batch(
        data.load_split("fashion_mnist", "test", data_dir=fashion_dir, keep_in_memory=False),
        **options,
    )
    for key in in_memory:
        np.testing.assert_array_equal(in_memory[key], decoded[key])


def test_unknown_split(fashion_dir):
    with pytest.raises(ValueError, match=r"unknown split 'tran' of the tfds dataset "
                                         r"'fashion_mnist'; expected one of 'test' \(10000 "
                                         r"examples\), 'train' \(60000 examples\)"):
        data.load_split("fashion_mnist", "tran", data_dir=fashion_dir)


def test_a_slice_beyond_the_split_says_so(fashion_dir):
    with pytest.raises(ValueError, match=r"split 'test\[:20000\]' asks for more examples than "
                                         r"the tfds dataset 'fashion_mnist' holds: 'test' "
                                         r"\(10000 examples\), 'train' \(60000 examples\); use "
                                         r"a smaller slice"):
        data.load_split("fashion_mnist", "test[:20000]", data_dir=fashion_dir)


def test_an_empty_data_dir_is_the_default_never_the_working_directory(fashion_dir, tmp_path,
                                                                     monkeypatch):
    """--config.data.data_dir= (or an unset shell variable) reads tfds's default data dir, as
    the folder cache does, and writes nothing where the command runs."""
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(fashion_dir))
    monkeypatch.chdir(tmp_path)
    source = data.load_split("fashion_mnist", "test[:8]", data_dir="")
    assert len(source) == 8 and os.listdir(tmp_path) == []
    assert data.folder_source.default_cache_dir("") == fashion_dir / "ddpm_jax_image_folders"


# --------------------------------------------------------------------------------------------
# Bad inputs


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'fashoin_mnist'; expected 'folder', "
                                         r"one of \['celeb_a', 'cifar10', 'fashion_mnist', "
                                         r"'mnist'\] "
                                         "or any tfds image dataset name"):
        data.load_split("fashoin_mnist", data_dir=tmp_path)


def test_non_positive_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size must be positive, got 0"):
        data.load_split("fashion_mnist", data_dir=tmp_path, image_size=0)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    # A reserved, never-resolving host: fails fast whether or not the internet is reachable.
    monkeypatch.setattr(fashion_mnist.FashionMnistIdx, "URL", "http://fashion-mnist.invalid/")
    expected = (
        rf"'fashion_mnist' is not prepared in {tmp_path}/fashion_mnist/3.0.1 .*"
        r"ConnectionError: cannot resolve fashion-mnist.invalid.*"
        r"`apt-get install dataset-fashion-mnist` \(read from .*missing\)"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        data.load_split("fashion_mnist", data_dir=tmp_path, fashion_mnist_dir=tmp_path / "missing")


def test_unprepared_dataset_names_the_tf_extra(tmp_path, monkeypatch):
    def no_tensorflow(self, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_tensorflow)
    expected = (
        rf"'celeb_a' is not prepared in {tmp_path}/celeb_a/.*No module named 'tensorflow'.*"
        r"tfds needs TensorFlow to prepare 'celeb_a' \(only \['cifar10', 'fashion_mnist', "
        r"'mnist'\] are prepared without it\): run `pip install 'ddpm_jax\[tf\]'`.*"
        r"tfds build celeb_a --file_format=array_record"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        data.load_split("celeb_a", data_dir=tmp_path)
