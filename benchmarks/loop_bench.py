"""Job: the efficiency of ``train.py``'s loop, and its start-up time to the first step.

Run by ``run.py --suite loop`` as ``python benchmarks/loop_bench.py PARAMS_JSON OUT_PATH``.
``mode="efficiency"``: ``train_lib.train_and_evaluate`` (the loop ``train.py`` runs, on synthetic
in-memory images, one checkpoint at the end) for each ``steps_per_call``, its steps/s read from
``metrics.jsonl`` (the first interval, which compiles, left out), over the steps/s of the bare
jitted ``train_step`` on one batch already on the device, measured before and after each run in
this process, and the compile time of the loop's jitted call for that K (``compile_s``: K
steps unrolled in one program, so it grows with K). ``mode="compile"``: that compile time
alone, for each K (a model too slow here to train, such as cifar10's). ``mode="startup"``:
seconds from this interpreter's first line to the first completed step (1 step, logged at once)
with the compilation cache at ``cache_dir`` (None: off).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before any import: start-up counts the imports

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import job_main, median_seconds, unet_fields  # noqa: E402
from configs import test as test_config  # noqa: E402
from ddpm_jax import data, train_lib, train_loop  # noqa: E402
from ddpm_jax.metric_writer import MetricWriter  # noqa: E402


def make_config(model: str, batch_size: int):
    """configs/test.py's settings (T = 20, Fashion-MNIST's shape) with ``model``'s U-Net."""
    config = test_config.get_config()
    _, fields = unet_fields(model)
    config.model.update(fields)
    config.training.update(batch_size=batch_size, sample_every=0)
    return config


def synthetic_source(image_shape: tuple[int, int, int],
                     n: int = 4096) -> data.ArraySource:
    images = np.random.default_rng(0).integers(0, 256, (n, *image_shape), dtype=np.uint8)
    return data.ArraySource(images)


def bare_step(config, image_shape):
    """One jitted ``train_step`` alone, run to completion: state donated, batch on the device."""
    model = train_lib.make_model(config, image_shape)
    optimizer = train_lib.make_optimizer(config)
    state = jax.jit(lambda k: train_lib.create_train_state(model, optimizer, k, image_shape))(
        jax.random.key(0))
    step = jax.jit(train_lib.make_train_step(
        model, train_lib.make_schedule_from_config(config), optimizer, config), donate_argnums=0)
    batch = jax.device_put(data.to_model_range(
        synthetic_source(image_shape).read(np.arange(config.training.batch_size))[0]))
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], {"image": batch}, jax.random.key(1))
        jax.block_until_ready(metrics)

    return run


def call_compile_seconds(config, image_shape) -> float:
    """Seconds to trace and compile the loop's one jitted call (``train_loop.make_train_call``)
    for ``config.training.steps_per_call`` K, with the compilation cache off."""
    model = train_lib.make_model(config, image_shape)
    optimizer = train_lib.make_optimizer(config)
    mesh = train_lib.data_mesh()
    state = jax.eval_shape(lambda: train_lib.create_train_state(
        model, optimizer, jax.random.key(0), image_shape))
    call = train_loop.make_train_call(train_lib.make_train_step(
        model, train_lib.make_schedule_from_config(config), optimizer, config),
        jax.random.key(1), mesh)
    k, b = config.training.steps_per_call, config.training.batch_size
    batches = {"image": jax.ShapeDtypeStruct((k, b, *image_shape), np.float32)}
    votes = jax.ShapeDtypeStruct((mesh.size,), np.bool_)
    start = time.perf_counter()
    call.lower(state, batches, votes).compile()
    return time.perf_counter() - start


def loop_steps_per_s(config, workdir: str) -> float:
    """Median steps/s of train_and_evaluate's logged intervals after the first."""
    train_lib.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    if len(lines) < 2:
        raise RuntimeError(f"expected >= 2 logged intervals, got {lines}")
    return statistics.median(line["steps_per_sec"] for line in lines[1:])


def measure(*, mode: str, config: str, batch_size: int, steps_per_call: list[int] = (),
            num_logs: int = 4, log_every: int = 8, repeats: int = 20,
            cache: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """``cache`` only labels a start-up run (off, cold, warm)."""
    image_shape = unet_fields(config)[0]
    source = synthetic_source(image_shape)
    # The loop reads synthetic images instead of a tfds split: same pipeline from there on.
    data.load_split = lambda *args, **kwargs: source
    cfg = make_config(config, batch_size)
    r: dict[str, Any] = dict(backend=jax.default_backend(), device=jax.devices()[0].device_kind)
    if mode == "startup":
        if cache_dir is None:
            jax.config.update("jax_enable_compilation_cache", False)
        else:  # what compilation_cache.enable_from_flags does for the CLIs
            jax.config.update("jax_compilation_cache_dir", cache_dir)
        first = {}
        write = MetricWriter.write
        MetricWriter.write = lambda self, step, scalars: (
            first.setdefault("s", time.perf_counter() - START), write(self, step, scalars))
        cfg.training.update(num_steps=1, log_every=1, checkpoint_every=1)
        with tempfile.TemporaryDirectory() as workdir:
            train_lib.train_and_evaluate(cfg, workdir)
        r["first_step_s"] = first["s"]
        return r
    jax.config.update("jax_enable_compilation_cache", False)
    r["runs"] = []
    if mode == "compile":
        for k in steps_per_call:
            cfg.training.update(steps_per_call=k)
            r["runs"].append(dict(steps_per_call=k,
                                  compile_s=call_compile_seconds(cfg, image_shape)))
        return r
    bare_run = bare_step(cfg, image_shape)
    bare_seconds = lambda: median_seconds(bare_run, warmup=2, repeats=repeats)
    for k in steps_per_call:
        every = log_every * k
        cfg.training.update(steps_per_call=k, log_every=every, num_steps=every * num_logs,
                            checkpoint_every=every * num_logs)
        before = bare_seconds()
        with tempfile.TemporaryDirectory() as workdir:
            rate = loop_steps_per_s(cfg, workdir)
        after = bare_seconds()
        bare = 2 / (before + after)
        r["runs"].append(dict(steps_per_call=k, loop_steps_per_s=rate, bare_steps_per_s=bare,
                              efficiency=rate / bare,
                              compile_s=call_compile_seconds(cfg, image_shape)))
    return r


if __name__ == "__main__":
    job_main(measure)
