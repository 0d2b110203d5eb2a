"""A folder of the user's images, prepared once into array_record and read like a tfds split.

Every image under the folder (recursive; extensions in ``IMAGE_EXTENSIONS``, any case; hidden
files and folders skipped; a GIF's first frame) is converted to grey or RGB (``to_channels``),
resized and centre-cropped as guided-diffusion does (``resize_and_center_crop``), and written as
raw uint8 pixels to ``images.array_record`` with ``labels.npy`` and ``meta.json`` beside it.
The examples are in a fixed pseudo-random order, each image's place given by a hash of its
relative path (as tfds shuffles at preparation), so a slice such as 'train[90%:]' is a sample of
every class, and stays one as images are added. The entry's folder is named by a hash of the
listing (relative paths, sizes, modification times) and the settings, so a second run decodes
nothing and any change prepares a new entry (older entries of the same folder are left in place
and named in a log line). It is built under a temporary name on a thread pool over every core and
renamed when complete.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import uuid

from absl import logging
from array_record.python import array_record_module
import numpy as np
from PIL import Image
from tqdm import tqdm

from ddpm_jax.data.images import MODES, folder_pixels

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
# Bump when the preparation changes what it writes, so old entries are not read.
# 2: examples in hashed-path order, all-digit class names in numeric order, meta "fingerprint".
FORMAT_VERSION = 2
RECORDS, LABELS, META = "images.array_record", "labels.npy", "meta.json"
# Images being decoded at once, per worker: bounds the memory held by finished, unwritten ones.
_WINDOW_PER_WORKER = 16
# Name prefix of the decoding threads.
DECODE_THREADS = "ddpm_jax_decode"


@dataclasses.dataclass(frozen=True)
class FolderSettings:
    """How a folder's images become examples.

    Attributes:
        image_size: side of the square images, >= 1.
        channels: 1 (grey) or 3 (RGB).
        labels_from_subdirs: whether the immediate subfolder of each image names its class.
        skip_bad_images: whether images that cannot be decoded are skipped (else an error).
    """

    image_size: int
    channels: int = 3
    labels_from_subdirs: bool = False
    skip_bad_images: bool = False

    def __post_init__(self):
        if self.image_size is None or self.image_size < 1:
            raise ValueError(
                f"data.image_size must be a positive integer for an image folder, got "
                f"{self.image_size}; pass e.g. --config.data.image_size=64"
            )
        if self.channels not in MODES:
            raise ValueError(f"data.channels must be one of {sorted(MODES)}, got {self.channels}")


def list_images(root: pathlib.Path) -> list[tuple[str, int, int]]:
    """(relative path, size in bytes, modification time in ns) of every image, sorted by path."""
    if root.is_file():
        raise NotADirectoryError(f"image folder {root} is a file, not a folder; set data.path "
                                 "to the folder that holds the images")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.path to a folder "
                                "of images")
    listing = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = pathlib.Path(folder, name)
            stat = path.stat()
            listing.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    if not listing:
        raise FileNotFoundError(f"image folder {root} holds no images; expected files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)} (any case)")
    return sorted(listing)


def shuffled(listing: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """``listing`` in a fixed pseudo-random order: by a hash of each relative path, so the order
    depends on nothing else and an added image leaves the others' order as it was."""
    return sorted(listing, key=lambda item: hashlib.sha256(item[0].encode()).digest())


def sorted_class_names(names: set[str]) -> list[str]:
    """Class names in label order: by number when every name is all digits ('2' before '10',
    so folders 0..K-1 get their own number as label), else as strings."""
    if all(name.isdigit() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def class_labels(root: pathlib.Path, paths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Labels from the immediate subfolder of each path: int32 [N] and the class names in label
    order (``sorted_class_names``)."""
    for path in paths:
        if "/" not in path:
            raise ValueError(f"{root / path} is not in a class subfolder; with data."
                             f"labels_from_subdirs=True every image must be in {root}/<class>/")
    classes = [path.split("/", 1)[0] for path in paths]
    names = sorted_class_names(set(classes))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[name] for name in classes], np.int32), names


def entry_name(root: pathlib.Path, listing: Sequence[tuple[str, int, int]],
               settings: FolderSettings) -> str:
    """The cache entry's folder name: the folder's name and a hash of listing and settings."""
    key = json.dumps([FORMAT_VERSION, dataclasses.asdict(settings), listing])
    return f"{root.name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def _decode(path: pathlib.Path, settings: FolderSettings) -> tuple[np.ndarray | None, bool, str]:
    """(uint8 [S, S, C] pixels or None, whether upsampled, why it failed) of one file."""
    try:
        with Image.open(path) as image:
            upsampled = min(image.size) < settings.image_size  # EXIF rotation keeps the sides
            pixels = folder_pixels(image, settings.image_size, settings.channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, False, f"{type(err).__name__}: {err}"
    return pixels, upsampled, ""


def _decoded_in_order(paths: Sequence[pathlib.Path],
                      settings: FolderSettings) -> Iterator[tuple[np.ndarray | None, bool, str]]:
    """``_decode`` of every path, in order, on a thread pool (Pillow releases the GIL)."""
    workers = os.cpu_count() or 1
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=DECODE_THREADS)
    try:
        pending = collections.deque()
        for path in paths:
            pending.append(pool.submit(_decode, path, settings))
            if len(pending) >= workers * _WINDOW_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the caller stops early (an error): nothing left queued or running
        pool.shutdown(wait=True, cancel_futures=True)


def prepare_folder(root: pathlib.Path, settings: FolderSettings,
                   cache_dir: pathlib.Path) -> pathlib.Path:
    """The prepared cache entry of an image folder, preparing it unless it exists.

    Args:
        root: the folder of images.
        settings: how images become examples.
        cache_dir: where entries live.

    Returns:
        The entry's folder, holding ``RECORDS``, ``META`` and (when labelled) ``LABELS``.
    """
    listing = list_images(root)
    paths = [path for path, _, _ in shuffled(listing)]
    labels, names = class_labels(root, paths) if settings.labels_from_subdirs else (None, None)
    entry = cache_dir / entry_name(root, listing, settings)
    if (entry / META).exists():
        return entry
    partial = cache_dir / f".incomplete-{entry.name}-{uuid.uuid4().hex}"
    try:
        partial.mkdir(parents=True)
    except OSError as err:
        raise ValueError(f"cannot write the prepared images to {cache_dir} ({err.strerror}); "
                         "set data.cache_dir to a writable folder") from err
    try:
        kept, upsampled, skipped = _write_records(root, paths, settings, partial / RECORDS)
        if labels is not None:
            np.save(partial / LABELS, labels[kept])
        meta = dict(root=str(root), num_examples=int(kept.sum()),
                    fingerprint=f"{len(listing)} files, listing {entry.name.rsplit('-', 1)[1]}",
                    image_shape=[settings.image_size, settings.image_size, settings.channels],
                    class_names=names, skipped=skipped, upsampled=upsampled)
        (partial / META).write_text(json.dumps(meta, indent=1))
        if not meta["num_examples"]:
            raise ValueError(f"no image in {root} could be decoded ({len(skipped)} skipped)")
        try:
            partial.rename(entry)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (entry / META).exists():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _note_older_entries(cache_dir, entry, root)
    return entry


def _note_older_entries(cache_dir: pathlib.Path, entry: pathlib.Path, root: pathlib.Path) -> None:
    """Logs the other complete entries of the same folder (an earlier listing or settings), which
    stay until deleted: another run may still read them."""
    older = [other for other in cache_dir.iterdir()
             if other.name.startswith(f"{root.name}-") and other != entry
             and (other / META).exists()
             and json.loads((other / META).read_text()).get("root") == str(root)]
    if older:
        size = sum(f.stat().st_size for other in older for f in other.iterdir()) / 2**20
        logging.warning("%d older prepared entries of %s (%.0f MiB) remain in %s: %s; delete them "
                        "(rm -r) when no run reads them", len(older), root, size, cache_dir,
                        ", ".join(sorted(other.name for other in older)))


def _write_records(root: pathlib.Path, paths: Sequence[str], settings: FolderSettings,
                   records: pathlib.Path) -> tuple[np.ndarray, int, list[str]]:
    """Decodes every image into ``records``; returns which were kept (bool [N]), how many were
    upsampled and the skipped paths. Raises on the first bad image unless skipping."""
    kept = np.zeros(len(paths), bool)
    upsampled, skipped = 0, []
    writer = array_record_module.ArrayRecordWriter(str(records), "group_size:1")
    try:
        decoded = _decoded_in_order([root / path for path in paths], settings)
        with contextlib.closing(decoded), tqdm(decoded, total=len(paths), unit="img",
                                               desc=f"preparing {root}",
                                               dynamic_ncols=True) as bar:
            for i, (pixels, small, error) in enumerate(bar):
                if pixels is None:
                    if not settings.skip_bad_images:
                        raise ValueError(f"cannot decode image {root / paths[i]} ({error}); fix "
                                         "or remove it, or set data.skip_bad_images=True to skip "
                                         "it")
                    skipped.append(paths[i])
                    continue
                writer.write(pixels.tobytes())
                kept[i], upsampled = True, upsampled + small
    finally:
        writer.close()
    if skipped:
        logging.warning("skipped %d images of %s that could not be decoded, e.g. %s",
                        len(skipped), root, skipped[0])
    if upsampled:
        logging.warning("%d images of %s are smaller than %d pixels and were upsampled",
                        upsampled, root, settings.image_size)
    return kept, upsampled, skipped
