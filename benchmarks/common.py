"""What every benchmark job shares: the model specs, timing, memory and the job protocol.

A job is one process that measures one configuration and writes a JSON object to the path given
as its last argument; ``run.py`` starts it with the XLA flags under test, so flags and compile
caches never leak from one configuration into the next.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any, Callable

# ddpm_jax.models.UNet fields and image shapes. "tiny" is configs/test.py's model (for smoke
# tests), "small" configs/fashion_mnist.py's, "cifar10" configs/cifar10.py's: Ho et al.'s
# 35.7M-parameter U-Net. Copied because configs/ needs ml_collections, which the GPU machine lacks.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_shape=(28, 28, 1), base_channels=8, channel_mults=(1, 2),
                 num_res_blocks=1, attn_resolutions=(14,), dropout=0.0, num_groups=4),
    "small": dict(image_shape=(28, 28, 1), base_channels=32, channel_mults=(1, 2, 2),
                  num_res_blocks=1, attn_resolutions=(7,), dropout=0.0, num_groups=8),
    "cifar10": dict(image_shape=(32, 32, 3), base_channels=128, channel_mults=(1, 2, 2, 2),
                    num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, num_groups=32),
}
NUM_TIMESTEPS = 1000  # training schedule length, as in every config
LEARNING_RATE, GRAD_CLIP, EMA_DECAY = 2e-4, 1.0, 0.9999  # configs/default.py's optimiser
MIN_SNR_GAMMA = 5.0  # the demo's loss weighting (configs/fashion_mnist.py)


def unet_fields(config: str) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """(image_shape, UNet keyword arguments) of a named model."""
    fields = dict(MODELS[config])
    return tuple(fields.pop("image_shape")), fields


def median_seconds(fn: Callable[[], Any], *, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``fn`` must return only once its work is done (block on JAX results inside it).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds it took)``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def peak_host_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def job_main(measure: Callable[..., dict[str, Any]]) -> None:
    """Entry point of a job: ``job.py PARAMS_JSON OUT_PATH`` writes ``measure(**params)``."""
    params, out_path = json.loads(sys.argv[1]), sys.argv[2]
    result = measure(**params)
    result["peak_host_gb"] = peak_host_gb()
    with open(out_path, "w") as f:
        json.dump(result, f)
