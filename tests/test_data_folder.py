"""Image folders through ``ddpm_jax.data``: listing, colour and geometry, labels from subfolders,
the prepared cache (reuse, invalidation, atomicity) and every error, on generated images only."""

import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from configs import test as test_config
from ddpm_jax import data, evaluation, run_config, train_lib
from ddpm_jax.data import folder
from conftest import ROOT, run_cli

SIZE = 16
CLASSES = ["birds", "cats", "dogs"]


def center_crop_arr(pil_image, image_size):
    """guided-diffusion's guided_diffusion/image_datasets.py, function center_crop_arr, verbatim
    except for Pillow's enum names."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size),
                                     resample=Image.Resampling.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                                 resample=Image.Resampling.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


def noise(rng, height, width, channels=3):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_folder(root: pathlib.Path) -> dict[str, str]:
    """30 images of mixed formats, modes and sizes in nested class folders, plus files to ignore.

    Returns:
        {relative path: class} of every image that counts.
    """
    rng = np.random.default_rng(0)
    images = {}
    formats = [("png", "RGB"), ("JPG", "RGB"), ("webp", "RGB"), ("png", "L"), ("png", "RGBA"),
               ("gif", "P"), ("jpeg", "L"), ("bmp", "RGB"), ("PNG", "P"), ("webp", "RGBA")]
    for i in range(30):
        extension, mode = formats[i % len(formats)]
        label = CLASSES[i % 3]
        nested = "deep/" if i % 7 == 0 else ""  # the immediate subfolder still names the class
        relative = f"{label}/{nested}img_{i:02d}.{extension}"
        height, width = 20 + 3 * i, 24 + (5 * i) % 17
        pixels = noise(rng, height, width, {"L": 1, "RGBA": 4}.get(mode, 3))
        image = Image.fromarray(pixels)
        if mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative, **({"quality": 95} if extension.lower() in ("jpg", "jpeg")
                                       else {}))
        images[relative] = label
    # Ignored: hidden files and folders, other extensions.
    Image.fromarray(noise(rng, 20, 20)).save(root / "cats" / ".hidden.png")
    (root / "dogs" / ".thumbnails").mkdir()
    Image.fromarray(noise(rng, 20, 20)).save(root / "dogs" / ".thumbnails" / "t.png")
    (root / "cats" / "notes.txt").write_text("not an image")
    return images


@pytest.fixture
def image_folder(tmp_path) -> tuple[pathlib.Path, dict[str, str]]:
    root = tmp_path / "my_images"
    return root, make_folder(root)


@pytest.fixture
def decode_counter(monkeypatch) -> list[str]:
    """The files decoded from now on."""
    decoded, real = [], folder._decode

    def counting(path, settings):
        decoded.append(path)
        return real(path, settings)

    monkeypatch.setattr(folder, "_decode", counting)
    return decoded


def load(root, tmp_path, **kwargs):
    options = dict(image_size=SIZE, labels_from_subdirs=True, cache_dir=tmp_path / "cache")
    return data.load_split("folder", path=root, **(options | kwargs))


def entries(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


# --------------------------------------------------------------------------------------------
# Colour and geometry


@pytest.mark.parametrize("size", [(300, 200), (64, 200), (10, 7), (128, 128)])
def test_resize_and_center_crop_is_guided_diffusions_center_crop_arr(size):
    image = Image.fromarray(noise(np.random.default_rng(1), *size))
    np.testing.assert_array_equal(data.resize_and_center_crop(image, 32),
                                  center_crop_arr(image, 32))


def test_to_channels_composites_alpha_on_white_and_converts_every_mode():
    rng = np.random.default_rng(2)
    rgba = noise(rng, 6, 5, 4)
    got = np.asarray(data.to_channels(Image.fromarray(rgba), 3)).astype(float)
    alpha = rgba[..., 3:] / 255
    expected = rgba[..., :3] * alpha + np.array(data.BACKGROUND) * (1 - alpha)
    np.testing.assert_allclose(got, expected, atol=1)
    grey = noise(rng, 6, 5, 1)
    np.testing.assert_array_equal(np.asarray(data.to_channels(Image.fromarray(grey), 3)),
                                  np.repeat(grey[..., None], 3, axis=-1))
    wide = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    sixteen = data.to_channels(Image.fromarray(wide), 1)  # Pillow opens it as "I;16"
    np.testing.assert_array_equal(np.asarray(sixteen), np.round(wide / 257).astype(np.uint8))
    cmyk = Image.fromarray(noise(rng, 6, 5, 4), mode="CMYK")
    np.testing.assert_array_equal(np.asarray(data.to_channels(cmyk, 3)),
                                  np.asarray(cmyk.convert("RGB")))
    with pytest.raises(ValueError, match=r"channels must be one of \[1, 3\], got 2"):
        data.to_channels(cmyk, 2)


# --------------------------------------------------------------------------------------------
# The prepared folder


def test_folder_holds_exactly_its_images_with_labels_from_subfolders(image_folder, tmp_path):
    root, images = image_folder
    source = load(root, tmp_path)
    assert len(source) == len(images) == 30
    assert source.image_shape == (SIZE, SIZE, 3) and source.num_classes == 3
    assert source.class_names == tuple(CLASSES) and source.description == f"image folder {root}"
    pixels, labels = source.read(np.arange(len(source)))
    # Examples follow the hashed-path order (folder.shuffled), whatever the listing's order.
    order = [path for path, _, _ in folder.shuffled([(p, 0, 0) for p in reversed(images)])]
    np.testing.assert_array_equal(labels, [CLASSES.index(images[p]) for p in order])
    compared = 0
    for i, relative in enumerate(order):  # every RGB file: Pillow's own resize + crop
        with Image.open(root / relative) as image:
            if image.mode == "RGB":
                np.testing.assert_array_equal(pixels[i], center_crop_arr(image, SIZE))
                compared += 1
    assert compared == 12  # the PNG, JPEG, WebP and BMP files saved as RGB


def test_grey_channels_first_gif_frame_and_no_labels(tmp_path):
    root = tmp_path / "frames"
    root.mkdir()
    frames = [Image.fromarray(np.full((20, 20), value, np.uint8)) for value in (40, 200)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    source = load(root, tmp_path, channels=1, labels_from_subdirs=False, image_size=8)
    assert source.image_shape == (8, 8, 1) and source.num_classes is None
    images, labels = source.read(np.array([0]))
    assert labels is None and (images == 40).all()


def test_second_load_decodes_nothing_and_changes_prepare_anew(image_folder, tmp_path,
                                                              decode_counter, caplog):
    root, images = image_folder
    first = load(root, tmp_path)
    assert len(decode_counter) == len(images) and len(entries(tmp_path)) == 1
    decode_counter.clear()
    second = load(root, tmp_path, keep_in_memory=False)
    assert decode_counter == [] and len(entries(tmp_path)) == 1  # the same entry, reused
    assert isinstance(second, data.folder_source.FolderSource)
    for a, b in zip(first.read(np.arange(30)), second.read(np.arange(30))):
        np.testing.assert_array_equal(a, b)
    touched = root / sorted(images)[3]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    caplog.clear()
    load(root, tmp_path)
    assert len(decode_counter) == len(images) and len(entries(tmp_path)) == 2
    assert f"1 older prepared entries of {root}" in caplog.text  # named, for deleting by hand
    decode_counter.clear()
    load(root, tmp_path, image_size=8)  # a setting changed
    assert len(decode_counter) == len(images) and len(entries(tmp_path)) == 3


def test_a_killed_preparation_leaves_no_entry(image_folder, tmp_path, monkeypatch):
    root, _ = image_folder
    real, calls = folder._decode, []

    def dies_midway(path, settings):
        calls.append(path)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(path, settings)

    monkeypatch.setattr(folder, "_decode", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load(root, tmp_path)
    assert entries(tmp_path) == []
    monkeypatch.setattr(folder, "_decode", real)
    (tmp_path / "cache" / ".incomplete-my_images-0-killed").mkdir()  # a SIGKILLed one
    assert len(load(root, tmp_path)) == 30


def test_slices_and_batches_work_like_tfds_splits(image_folder, tmp_path):
    root, _ = image_folder
    whole = load(root, tmp_path)
    head = load(root, tmp_path, keep_in_memory=False)
    part = data.load_split("folder", "train[:4]+train[-2:]", path=root, image_size=SIZE,
                           labels_from_subdirs=True, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(part.read(np.arange(6))[0],
                                  whole.read(np.array([0, 1, 2, 3, 28, 29]))[0])
    options = dict(seed=3, step=5, batch_size=8, random_flip=True)  # step 5 straddles epochs
    for a, b in zip(data.train_batch(whole, **options).values(),
                    data.train_batch(head, **options).values()):
        np.testing.assert_array_equal(a, b)


def test_small_images_are_upsampled_with_a_count(tmp_path, caplog):
    root = tmp_path / "small"
    root.mkdir()
    for i, side in enumerate([4, 10, 40]):
        Image.fromarray(noise(np.random.default_rng(i), side, side)).save(root / f"{i}.png")
    source = load(root, tmp_path, labels_from_subdirs=False)
    assert len(source) == 3
    assert f"2 images of {root} are smaller than {SIZE} pixels and were upsampled" in caplog.text


# --------------------------------------------------------------------------------------------
# Bad input


def test_a_corrupt_file_is_named_or_skipped(image_folder, tmp_path, caplog):
    root, _ = image_folder
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=rf"cannot decode image {root}/cats/broken.png "
                                         r"\(UnidentifiedImageError: .*\); fix or remove it, or "
                                         r"set data.skip_bad_images=True to skip it"):
        load(root, tmp_path)
    assert entries(tmp_path) == []
    # The decoding pool is shut down with the error, not left to whoever drops the error's
    # traceback, which holds the suspended generator (at exit, in one of the pool's own threads:
    # "Exception ignored ... RuntimeError: cannot join current thread").
    try:
        load(root, tmp_path)
    except ValueError as err:
        kept = err  # the traceback stays alive, as it does while a CLI exits with the error
    assert not [t for t in threading.enumerate() if t.name.startswith(folder.DECODE_THREADS)]
    del kept
    source = load(root, tmp_path, skip_bad_images=True)
    assert len(source) == 30
    assert f"skipped 1 images of {root} that could not be decoded, e.g. cats/broken.png" in (
        caplog.text)


PREPARE_A_CORRUPT_FOLDER = """
import pathlib, sys
from ddpm_jax import data
root, cache = map(pathlib.Path, sys.argv[1:])
try:
    data.load_split("folder", path=root, image_size=8, cache_dir=cache)
except ValueError as err:
    sys.exit(f"error: {err}")
"""


@pytest.mark.slow
def test_a_corrupt_file_leaves_stderr_clean(tmp_path):
    """The one-line error, and nothing from the decoding threads after it, in every run."""
    root = tmp_path / "images"
    root.mkdir()
    for i in range(64):
        Image.fromarray(noise(np.random.default_rng(i), 24, 24)).save(root / f"{i:02d}.png")
    (root / "00.png").write_bytes(b"\x89PNG not really")  # first in line: 63 others queued
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", PREPARE_A_CORRUPT_FOLDER, str(root),
                                 str(tmp_path / "cache")], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = [line for line in result.stderr.splitlines()
                 if line.strip() and "preparing" not in line]  # tqdm's bar
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: cannot decode image {root}/00.png")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(path=None), ValueError, r"data.name='folder' needs data.path, the folder of images"),
    (dict(path="{tmp}/absent"), FileNotFoundError, r"image folder {tmp}/absent does not exist"),
    (dict(path="{tmp}/empty"), FileNotFoundError,
     r"image folder {tmp}/empty holds no images; expected files ending in .bmp, .gif"),
    (dict(image_size=None), ValueError, r"data.image_size must be a positive integer for an "
                                        r"image folder, got None"),
    (dict(channels=4), ValueError, r"data.channels must be one of \[1, 3\], got 4"),
    (dict(path="{tmp}/flat"), ValueError, r"{tmp}/flat/a.png is not in a class subfolder; with "
                                          r"data.labels_from_subdirs=True every image must be in"),
    (dict(split="test"), ValueError, r"unknown split 'test' of the image folder {tmp}/flat; "
                                     r"expected one of 'train' \(1 examples\)"),
    (dict(split="train[:512]"), ValueError,
     r"split 'train\[:512\]' asks for more examples than the image folder {tmp}/flat holds: "
     r"'train' \(1 examples\); use a smaller slice"),
    (dict(path="{tmp}/flat/a.png"), NotADirectoryError,
     r"image folder {tmp}/flat/a.png is a file, not a folder; set data.path to the folder"),
])
def test_bad_folder_settings(tmp_path, kwargs, error, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    (tmp_path / "flat").mkdir()
    Image.fromarray(noise(np.random.default_rng(0), 20, 20)).save(tmp_path / "flat" / "a.png")
    options = dict(path=tmp_path / "flat", image_size=SIZE, labels_from_subdirs=True,
                   cache_dir=tmp_path / "cache")
    if kwargs.get("split"):
        options["labels_from_subdirs"] = False
    options |= {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                for k, v in kwargs.items()}
    split = options.pop("split", "train")
    with pytest.raises(error, match=message.format(tmp=tmp_path)):
        data.load_split("folder", split, **options)


def test_unwritable_cache_dir(image_folder, tmp_path):
    root, _ = image_folder
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(ValueError, match=rf"cannot write the prepared images to {tmp_path}/file/"
                                         r"cache \(Not a directory\); set data.cache_dir to a "
                                         r"writable folder"):
        load(root, tmp_path, cache_dir=tmp_path / "file" / "cache")


def test_fewer_images_than_a_batch_names_the_folder(image_folder, tmp_path):
    root, _ = image_folder
    source = load(root, tmp_path)
    with pytest.raises(ValueError, match=rf"image folder {root} has 30 examples, fewer than one "
                                         r"global batch of 32; add examples or lower "
                                         r"training.batch_size"):
        data.train_iterator(source, seed=0, batch_size=32)


def test_folder_options_are_refused_for_tfds_datasets(tmp_path):
    with pytest.raises(ValueError, match=r"data.channels, data.path apply only to "
                                         r"data.name='folder', not to the tfds dataset 'mnist'"):
        data.load_split("mnist", data_dir=tmp_path, path=tmp_path, channels=3)


# --------------------------------------------------------------------------------------------
# Class names of a run


def test_class_names_round_trip_and_labels_by_name(tmp_path):
    data.write_class_names(tmp_path, ["birds", "cats"])
    names = data.read_class_names(tmp_path)
    assert names == ["birds", "cats"] and data.read_class_names(tmp_path / "none") is None
    assert data.parse_labels(["cats", "0", "1"], names) == [1, 0, 1]
    with pytest.raises(ValueError, match=r"unknown label 'dgos': expected an integer class label; "
                                         r"the run's classes \(labels.json\) are 0=birds, 1=cats"):
        data.parse_labels(["dgos"], names)
    with pytest.raises(ValueError, match=r"unknown label 'cats': expected an integer class "
                                         r"label$"):
        data.parse_labels(["cats"], None)


def test_digit_class_folders_sort_numerically_and_labels_name_them(tmp_path):
    """Folders 0..10: the labels are the folders' numbers, and a label that is a class name means
    that class, also with an older run's string order (0, 1, 10, 2, ...)."""
    root = tmp_path / "digits"
    for k in range(11):
        (root / str(k)).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 20 * k, np.uint8)).save(root / str(k) / "a.png")
    source = load(root, tmp_path, channels=1, image_size=4)
    assert source.class_names == tuple(str(k) for k in range(11))
    images, labels = source.read(np.arange(11))
    np.testing.assert_array_equal(images[:, 0, 0, 0], 20 * labels)  # folder k has label k
    string_order = sorted(str(k) for k in range(11))
    assert data.parse_labels(["2", "10", "0"], string_order) == [3, 2, 0]
    assert data.parse_labels(["12"], string_order) == [12]  # not a name: an index (checked later)


def test_a_slice_mixes_the_classes_and_keeps_its_order_as_images_are_added(tmp_path):
    """train[:50%] of 20 'a' images then 20 'b' images (in path order) holds both classes, and
    an added image leaves the others' order as it was."""
    root = tmp_path / "two"
    for k in range(40):
        (root / "ab"[k // 20]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(np.random.default_rng(k), 4, 4)).save(
            root / "ab"[k // 20] / f"{k:02d}.png")
    half = data.load_split("folder", "train[:50%]", path=root, image_size=4,
                           labels_from_subdirs=True, cache_dir=tmp_path / "cache")
    _, labels = half.read(np.arange(len(half)))
    assert len(labels) == 20 and 5 <= labels.sum() <= 15, labels  # binomial(20, 1/2): p < 0.05
    before = load(root, tmp_path, image_size=4).read(np.arange(40))[0]
    Image.fromarray(noise(np.random.default_rng(99), 4, 4)).save(root / "b" / "new.png")
    after = load(root, tmp_path, image_size=4).read(np.arange(41))[0]
    kept = [i for i, image in enumerate(after) if any((image == b).all() for b in before)]
    assert len(kept) == 40
    np.testing.assert_array_equal(after[kept], before)


def test_labels_from_subdirs_without_num_classes_is_refused_before_training(image_folder,
                                                                            tmp_path):
    root, _ = image_folder
    config = test_config.get_config()
    config.data.update(name="folder", path=str(root), image_size=28, train_split="train",
                       labels_from_subdirs=True, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"^data.labels_from_subdirs=True gives K=3 classes but "
                                         r"config.model.num_classes is None \(an unconditional "
                                         r"model\); pass --config.model.num_classes=3"):
        train_lib.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_after_the_folder_changed_says_so(image_folder, tmp_path, monkeypatch):
    """A run on a folder given by relative paths records them absolute (and nothing lands in the
    working directory); resuming after an image was added needs --allow_config_changes, after a
    class folder was renamed it is refused."""
    root, _ = image_folder
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = test_config.get_config()
    config.data.update(name="folder", path="../my_images", image_size=28, train_split="train",
                       labels_from_subdirs=True, cache_dir="../cache")
    config.model.num_classes = 3
    config.training.update(num_steps=2, checkpoint_every=2, sample_every=0)
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(config, workdir)
    assert os.listdir(cwd) == []
    saved = json.loads((workdir / "config.json").read_text())["data"]
    assert (saved["path"], saved["cache_dir"]) == (str(root), str(tmp_path / "cache"))
    saved = (workdir / "config.json").read_bytes()
    Image.fromarray(noise(np.random.default_rng(1), 20, 20)).save(root / "cats" / "new.png")
    config.training.num_steps = 4
    with pytest.raises(ValueError, match=r"resuming .* with a changed training setup: "
                                         r"data.fingerprint: '30 files, listing \w+' -> "
                                         r"'31 files, listing \w+'\. Pass --allow_config_changes"):
        train_lib.train_and_evaluate(config, workdir)
    (root / "birds").rename(root / "ants")
    with pytest.raises(ValueError, match=r"holds checkpoints of another model, diffusion or "
                                         r"classes; changed: class_names: \['birds', 'cats', "
                                         r"'dogs'\] -> \['ants', 'cats', 'dogs'\]"):
        train_lib.train_and_evaluate(config, workdir)
    assert (workdir / "config.json").read_bytes() == saved


def test_num_classes_must_match_the_folder(image_folder, tmp_path):
    root, _ = image_folder
    config = test_config.get_config()
    config.model.num_classes = 4
    with pytest.raises(ValueError, match=f"^config.model.num_classes=4 but the image folder "
                                         f"{root} has 3 classes$"):
        run_config.check_num_classes(config, load(root, tmp_path))


def test_reference_statistics_of_a_folder(image_folder, tmp_path):
    """FID's reference for a folder run reads the folder as training did; its cache is keyed by
    the folder's path and settings."""
    root, images = image_folder
    mean_colour = evaluation.FeatureFunction("mean colour", lambda x: x.mean(axis=(1, 2)), 8)
    options = dict(path=root, image_size=SIZE, cache_dir=tmp_path / "cache")
    cache = str(tmp_path / "reference.npz")
    reference = evaluation.reference_statistics(mean_colour, dataset="folder", split="train",
                                                cache=cache, **options)
    assert reference.features.shape == (len(images), 3)
    assert reference.provenance["path"] == str(root) and reference.provenance["image_size"] == SIZE
    source = data.load_split("folder", **options)
    pixels, _ = source.read(np.arange(len(source)))
    expected = mean_colour(pixels.astype(np.float32) / 127.5 - 1)
    np.testing.assert_allclose(reference.features, expected, rtol=1e-6)
    smaller = evaluation.reference_statistics(mean_colour, dataset="folder", split="train",
                                              cache=cache, **(options | dict(image_size=8)))
    assert smaller.provenance["image_size"] == 8  # another setting is not served from the cache
    assert not np.array_equal(smaller.features, reference.features)


# --------------------------------------------------------------------------------------------
# End to end: train.py, sample.py and evaluate.py on a folder


@pytest.mark.slow
def test_train_and_sample_on_a_folder_of_images(image_folder, tmp_path):
    root, _ = image_folder
    workdir = tmp_path / "run"
    result = run_cli("train.py", "--config", "configs/test.py", "--workdir", str(workdir),
                     "--config.data.name=folder", f"--config.data.path={root}",
                     "--config.data.image_size=28", "--config.data.train_split=train",
                     "--config.data.labels_from_subdirs=True",
                     f"--config.data.cache_dir={tmp_path / 'cache'}",
                     "--config.model.num_classes=3", "--config.training.num_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "checkpoints" / "2").exists()
    labels = json.loads((workdir / "labels.json").read_text())
    assert labels == {"0": "birds", "1": "cats", "2": "dogs"}
    out = tmp_path / "samples"
    result = run_cli("sample.py", "--workdir", str(workdir), "--out", str(out),
                     "--num_samples=3", "--labels=cats,dogs,0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "sample_settings.json").read_text())["labels"] == [1, 2, 0]
    assert np.load(out / "samples.npz")["images"].shape == (3, 28, 28, 3)
    result = run_cli("sample.py", "--workdir", str(workdir), "--labels=dgos")
    assert result.returncode != 0
    assert "unknown label 'dgos'" in result.stderr and "0=birds, 1=cats, 2=dogs" in result.stderr
    # evaluate.py reads the run's folder at its size (bits/dim needs the model's image shape).
    result = run_cli("evaluate.py", "--workdir", str(workdir), "--metrics", "bpd",
                     "--bpd_split", "train", "--bpd_examples", "4", "--bpd_estimator", "mc",
                     "--bpd_timesteps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    bpd = json.loads((workdir / "metrics.json").read_text())["bpd"]
    assert bpd["num_examples"] == 4 and np.isfinite(bpd["bpd"])
