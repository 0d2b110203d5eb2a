"""Job: one U-Net configuration in JAX: training step, forward pass and sampler.

Run by ``run.py`` as ``python benchmarks/jax_bench.py PARAMS_JSON OUT_PATH`` under the XLA
flags being compared. Imports neither ``train_lib`` nor ``ddpm_jax.data`` (they need
tensorflow-datasets and ml_collections, which the GPU machine lacks), so the training step is
assembled here from the same library pieces as ``train_lib.make_train_step``.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import numpy as np
from jax.sharding import Mesh

from common import (EMA_DECAY, GRAD_CLIP, LEARNING_RATE, NUM_TIMESTEPS, job_main,
                    median_seconds, timed, unet_fields)
from ddpm_jax import losses, sampling, train_loop
from ddpm_jax.models import UNet
from ddpm_jax.schedules import Schedule, make_schedule


def make_train_step(model: UNet, schedule: Schedule, optimizer: optax.GradientTransformation, *,
                    ema: bool = True, draws: bool = True, loss_weighting: str = "none"):
    """``step(state, x0, key) -> (state, loss)`` with ``state = (params, ema_params, opt_state)``.

    The work of ``train_lib.make_train_step`` with its default config: L_simple with eps target,
    dropout, clipped Adam (``optimizer``) and the EMA update. The switches take parts out for
    ``compare_bench``'s table of the step's parts: ``ema=False`` skips the EMA update,
    ``draws=False`` replaces the draws of t and the noise by t = T / 2 and the batch reversed,
    ``loss_weighting`` is ``losses.training_loss_given``'s (the demo's: ``'min_snr'``).
    """
    def train_step(state, x0, key):
        params, ema_params, opt_state = state
        loss_key, dropout_key = jax.random.split(key)
        if draws:
            t, noise = losses.draw_t_and_noise(schedule, loss_key, x0)
        else:
            t, noise = jnp.full(x0.shape[:1], schedule.num_timesteps // 2), x0[::-1]

        def loss_fn(p):
            denoise_fn = lambda x, t: model.apply({"params": p}, x, t, train=True,
                                                  rngs={"dropout": dropout_key})
            return jnp.mean(losses.training_loss_given(denoise_fn, schedule, x0, t, noise,
                                                       loss_weighting=loss_weighting))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema:
            ema_params = optax.incremental_update(params, ema_params, 1.0 - EMA_DECAY)
        return (params, ema_params, opt_state), loss

    return train_step


def compile_timed(fn: Callable, *args, donate_argnums=()) -> tuple[Any, float, float]:
    """(compiled ``jax.jit(fn)`` for ``args``, trace+compile seconds, XLA's flop count)."""
    jitted = jax.jit(fn, donate_argnums=donate_argnums)
    compiled, seconds = timed(lambda: jitted.lower(*args).compile())
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return compiled, seconds, float((cost or {}).get("flops", math.nan))


def matmul_gflops(size: int, dtype: jnp.dtype, *, repeats: int) -> float:
    """Achieved GFLOP/s of a [size, size] @ [size, size] matmul in ``dtype``: the peak we compare
    against."""
    a, b = jax.random.normal(jax.random.key(0), (2, size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    seconds = median_seconds(lambda: matmul(a, b).block_until_ready(), warmup=2,
                             repeats=repeats)
    return 2 * size ** 3 / seconds / 1e9


class Setup(NamedTuple):
    """A model with its parameters, a batch and everything a training step needs."""

    model: UNet
    schedule: Schedule
    optimizer: optax.GradientTransformation
    params: Any
    x0: jax.Array  # [B, H, W, C] in [-1, 1]
    t: jax.Array  # [B] timesteps
    key: jax.Array

    def train_state(self):
        """(params, ema_params, opt_state), sharing no buffer with ``self``, so it can be
        donated."""
        copy = lambda: jax.tree.map(jnp.copy, self.params)
        return copy(), copy(), self.optimizer.init(self.params)


def setup(config: str, batch_size: int, dtype: str) -> Setup:
    """The model ``config`` of ``common.MODELS`` computing in ``dtype``, and a random batch."""
    image_shape, fields = unet_fields(config)
    model = UNet(**fields, dtype=jnp.dtype(dtype))
    key = jax.random.key(0)
    x0 = jax.random.uniform(key, (batch_size, *image_shape), minval=-1.0, maxval=1.0)
    t = jnp.full((batch_size,), NUM_TIMESTEPS // 2)
    params = jax.jit(model.init)(key, x0[:1], t[:1])["params"]
    optimizer = optax.chain(optax.clip_by_global_norm(GRAD_CLIP), optax.adam(LEARNING_RATE))
    return Setup(model, make_schedule("linear", NUM_TIMESTEPS), optimizer, params, x0, t, key)


def compile_train_step(s: Setup, *, donate: bool = True,
                       **step_options) -> tuple[Callable[[], None], float, float]:
    """(one training step on ``s``'s batch, run to completion; compile seconds; XLA's flops).

    Each call continues from the state the previous one left (its buffers donated, unless
    ``donate=False``). ``step_options``: ``make_train_step``'s switches.
    """
    step, seconds, flop = compile_timed(
        make_train_step(s.model, s.schedule, s.optimizer, **step_options), s.train_state(), s.x0,
        s.key, donate_argnums=0 if donate else ())
    holder = [s.train_state()]

    def run():
        holder[0], loss = step(holder[0], s.x0, s.key)
        jax.block_until_ready((holder[0], loss))

    return run, seconds, flop


def loop_form(step: Callable) -> Callable:
    """``make_train_step``'s step as ``train_loop`` takes it: batch ``{"image": x0}``, metrics
    ``{"loss": loss}``."""
    def train_step(state, batch, key):
        state, loss = step(state, batch["image"], key)
        return state, {"loss": loss}

    return train_step


def compile_multi_step(s: Setup, steps_per_call: int) -> Callable[[], None]:
    """K = ``steps_per_call`` training steps in one jitted call, as ``train.py``'s loop runs them
    (``train_loop.make_multi_step``, unrolled), on K copies of ``s``'s batch, state donated."""
    multi = jax.jit(train_loop.make_multi_step(
        loop_form(make_train_step(s.model, s.schedule, s.optimizer))), donate_argnums=0)
    batches = {"image": jnp.stack([s.x0] * steps_per_call)}
    holder = [s.train_state()]

    def run():
        holder[0], metrics = multi(holder[0], batches, s.key)
        jax.block_until_ready((holder[0], metrics))

    run()  # compiles
    return run


def loop_step_seconds(s: Setup, steps_per_call: int, *, intervals: int) -> float:
    """Seconds per step of train.py's loop pieces (``ddpm_jax.train_loop``) around ``s``'s step:
    host batches stacked K at a time and put on the device two calls ahead, K steps per jitted
    call, the loss left on the device and fetched every 8 steps (or every call when K > 8).
    Median over ``intervals`` fetch-to-fetch intervals, after one that compiles."""
    multi = jax.jit(train_loop.make_multi_step(
        loop_form(make_train_step(s.model, s.schedule, s.optimizer))), donate_argnums=0)
    host = np.asarray(s.x0)
    batches = train_loop.device_prefetch(
        iter(lambda: {"image": host}, None),
        train_loop.stacked_sharding(Mesh(np.asarray(jax.devices()[:1]), ("data",))),
        steps_per_call=steps_per_call)
    every = max(8 // steps_per_call, 1)  # calls per fetch
    state, pending, times = s.train_state(), train_loop.PendingMetrics(), []
    for call in range((intervals + 1) * every + 1):
        if call % every == 0:
            pending.fetch()
            pending.clear()
            times.append(time.perf_counter())
        state, metrics = multi(state, next(batches), s.key)
        pending.append(call * steps_per_call, metrics)
    return float(statistics.median(np.diff(times)[1:])) / (every * steps_per_call)


def compile_forward(s: Setup) -> tuple[Callable[[], None], float, float]:
    """(one forward pass of ``s``'s batch, run to completion; compile seconds; XLA's flops)."""
    forward, seconds, flop = compile_timed(lambda p, x, t: s.model.apply({"params": p}, x, t),
                                           s.params, s.x0, s.t)
    return lambda: forward(s.params, s.x0, s.t).block_until_ready(), seconds, flop


def measure(*, config: str, batch_size: int, dtype: str, repeats: int, warmup: int,
            sample_steps: int, sample_repeats: int, compile_timesteps: list[int],
            peak_size: int, steps_per_call: list[int] = ()) -> dict[str, Any]:
    """Every JAX measurement of one configuration; times in seconds."""
    jax.config.update("jax_enable_compilation_cache", False)  # compile times must be real
    s = setup(config, batch_size, dtype)
    model, params, x0, key = s.model, s.params, s.x0, s.key
    r: dict[str, Any] = dict(
        backend=jax.default_backend(), device=jax.devices()[0].device_kind,
        params=sum(p.size for p in jax.tree.leaves(params)))
    r["peak_gflops"] = matmul_gflops(peak_size, jnp.dtype(dtype), repeats=repeats)

    train, r["train_compile_s"], flop = compile_train_step(s)
    r["train_step_s"] = median_seconds(train, warmup=warmup, repeats=repeats)
    r["train_gflops"] = flop / r["train_step_s"] / 1e9
    r["loop_efficiency"] = {}
    for k in steps_per_call:
        loop_s = loop_step_seconds(s, k, intervals=max(repeats // 2, 2))
        r["loop_efficiency"][str(k)] = median_seconds(train, warmup=1, repeats=repeats) / loop_s
    forward, r["forward_compile_s"], flop = compile_forward(s)
    r["forward_s"] = median_seconds(forward, warmup=warmup, repeats=repeats)
    r["forward_gflops"] = flop / r["forward_s"] / 1e9

    def sampler(num_timesteps: int) -> Callable:
        """The full ancestral chain of a ``num_timesteps`` schedule (the cost of any T-step
        sampler: respacing changes only the schedule's values)."""
        schedule = make_schedule("linear", num_timesteps)
        return lambda p, k: sampling.sample(lambda x, t: model.apply({"params": p}, x, t),
                                            schedule, k, x0.shape)

    samplers, r["sampler_compile_s"] = {}, {}
    for T in sorted({*compile_timesteps, sample_steps}):
        samplers[T], r["sampler_compile_s"][str(T)], _ = compile_timed(sampler(T), params, key)
    # The chain and T separate forward calls alternate, so a change in the machine's load between
    # the two measurements does not show up as overhead.
    run_sampler = lambda: samplers[sample_steps](params, key).block_until_ready()
    run_forwards = lambda: [forward() for _ in range(sample_steps)]
    run_sampler()  # warm-up
    chain, forwards = [], []
    for _ in range(sample_repeats):
        chain.append(timed(run_sampler)[1])
        forwards.append(timed(run_forwards)[1])
    r["sampler_s"] = statistics.median(chain)
    r["sampler_overhead"] = r["sampler_s"] / statistics.median(forwards)

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        r["peak_device_gb"] = stats["peak_bytes_in_use"] / 1e9
    return r


if __name__ == "__main__":
    job_main(measure)
