"""Start-up of ``ddpm_jax.data``: preparing an image folder, and the decoded cache of Fashion-MNIST.

    python benchmarks/data_bench.py --json benchmarks/results/data.json

1. Generates ``--num_images`` smooth 256x256 JPEGs (quality 90) into ``--work_dir`` (once; kept
   for later runs), then times ``load_split("folder", image_size=64)`` three times: the first
   prepares the cache entry (decode, resize, crop, write; a thread pool over every core), the
   second and third open it (nothing decoded). Reports images/s of the preparation.
2. Prepares Fashion-MNIST from Debian's IDX files into ``--work_dir`` (once), then times opening
   its 60,000-image train split: decoding every PNG into memory as before the decoded cache
   (``decode_all`` of the records), the first ``load_split`` (decodes and writes the .npy cache),
   and the second (memory-maps it).

Times are wall seconds of one process; on a shared machine they are noisy (say so when quoting).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import time
from typing import Any, Callable

import numpy as np
from PIL import Image

from ddpm_jax import data
from ddpm_jax.data import decoded_cache, fashion_mnist, tfds_datasets
from ddpm_jax.data.sources import decode_all


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def generate_jpegs(folder: pathlib.Path, count: int, side: int) -> None:
    """``count`` smooth colour JPEGs of side x side (bicubic-upsampled 8x8 noise), unless there."""
    if folder.exists() and len(list(folder.glob("*.jpg"))) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        coarse.resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg",
                                                                   quality=90)


def folder_startup(work_dir: pathlib.Path, *, num_images: int, image_size: int) -> dict[str, Any]:
    images = work_dir / "jpegs"
    generate_jpegs(images, num_images, 256)
    cache = work_dir / "folder_cache"
    shutil.rmtree(cache, ignore_errors=True)
    load = lambda: data.load_split("folder", path=images, image_size=image_size, cache_dir=cache)
    first_s, source = timed(load)
    second_s, _ = timed(load)
    third_s, _ = timed(load)
    assert len(source) == num_images
    return dict(num_images=num_images, image_side=256, image_size=image_size,
                workers=os.cpu_count(), first_s=first_s, images_per_s=num_images / first_s,
                second_s=second_s, third_s=third_s)


def fashion_mnist_startup(work_dir: pathlib.Path) -> dict[str, Any]:
    tfds_dir = work_dir / "tfds"
    builder = fashion_mnist.FashionMnistIdx(data_dir=tfds_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()
    shutil.rmtree(builder.data_path / decoded_cache.FOLDER, ignore_errors=True)
    before_s, _ = timed(lambda: decode_all(
        tfds_datasets.open_tfds_split("fashion_mnist", "train", data_dir=tfds_dir)[1]))
    first_s, _ = timed(lambda: data.load_split("fashion_mnist", "train", data_dir=tfds_dir))
    second_s, source = timed(lambda: data.load_split("fashion_mnist", "train", data_dir=tfds_dir))
    assert len(source) == 60_000
    return dict(before_s=before_s, first_s=first_s, second_s=second_s,
                speedup=before_s / second_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_images", type=int, default=10_000)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--work_dir", default="/tmp/ddpm_jax_data_bench")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    work_dir = pathlib.Path(args.work_dir)
    results = dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        folder=folder_startup(work_dir, num_images=args.num_images, image_size=args.image_size),
        fashion_mnist=fashion_mnist_startup(work_dir),
    )
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
