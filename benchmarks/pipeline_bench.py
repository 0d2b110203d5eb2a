"""Job: the input pipeline's throughput on random uint8 images held in memory.

Run by ``run.py`` as ``python benchmarks/pipeline_bench.py PARAMS_JSON OUT_PATH``; needs
tensorflow-datasets (``ddpm_jax.data`` imports it).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from common import job_main, median_seconds, unet_fields
from ddpm_jax import data

NUM_EXAMPLES = 50_000  # CIFAR-10's training split size


def measure(*, config: str, batch_size: int, repeats: int) -> dict[str, Any]:
    """Seconds per ``train_batch`` (with random flips) from an in-memory ``ArraySource``."""
    image_shape, _ = unet_fields(config)
    images = np.random.default_rng(0).integers(0, 256, (NUM_EXAMPLES, *image_shape), np.uint8)
    source = data.ArraySource(images)
    steps = itertools.count()
    batch = lambda: data.train_batch(source, seed=0, step=next(steps),
                                               batch_size=batch_size, random_flip=True)
    return dict(batch_s=median_seconds(batch, warmup=3, repeats=repeats))


if __name__ == "__main__":
    job_main(measure)
