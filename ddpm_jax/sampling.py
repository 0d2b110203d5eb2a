"""The sampler: one ``jax.lax.scan`` over timesteps, ancestral DDPM or DDIM.

``sample`` is a pure function of its key. It does not jit itself: wrap it in ``jax.jit``,
``vmap`` it over keys, or call it inside ``pmap`` / ``shard_map`` as your program needs. The
compiled program holds the denoiser once, whatever the number of steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.diffusion import DenoiseFn
from ddpm_jax.schedules import Schedule, respace

SAMPLERS = ("ddim", "ddpm")


class Trajectory(NamedTuple):
    """Snapshots of the reverse process, one every ``trajectory_every`` steps.

    Frame j holds the sample x_t that entered step ``j * trajectory_every`` (frame 0 is the
    initial noise x_T), the model's x_0 prediction from it, and that t (schedule index).
    """

    timesteps: jax.Array  # [F]
    x_t: jax.Array  # [F, *shape]
    pred_x0: jax.Array  # [F, *shape]


def sampling_timesteps(num_timesteps: int, num_steps: int | None) -> np.ndarray:
    """The increasing schedule indices a sampler visits: all T, or ``num_steps`` evenly spaced.

    The subset always contains 0 and T-1.
    """
    if num_steps is None or num_steps == num_timesteps:
        return np.arange(num_timesteps)
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1])
    return np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32)


def ddim_step(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
              key: jax.Array, *, eta: float, target: str = "eps", variance: str = "fixedlarge",
              clip_x0: bool = False):
    """One DDIM step (Song et al. 2021, eq. 12) from index t to t-1 of ``schedule``.

    sigma_t = eta * sqrt((1 - abar_{t-1}) / (1 - abar_t) * (1 - abar_t / abar_{t-1})), so
    ``eta=0`` is deterministic and ``eta=1`` is ancestral sampling with the posterior variance.
    A learned variance's half of ``model_output`` is ignored.

    Returns:
      ``(x_prev [B, ...], pred_x0 [B, ...])``.
    """
    prediction, _ = diffusion.split_model_output(model_output, x_t, variance)
    pred_x0, eps = diffusion.predict_x0_and_eps(schedule, prediction, x_t, t, target=target,
                                                clip_x0=clip_x0)
    abar_prev = diffusion.extract(schedule.alphas_cumprod_prev, t, x_t.ndim)
    sigma_sq = eta ** 2 * diffusion.extract(schedule.posterior_variance, t, x_t.ndim)
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_prev = (jnp.sqrt(abar_prev) * pred_x0 + jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma_sq, 0.0)) * eps
              + jnp.sqrt(sigma_sq) * noise)
    return x_prev, pred_x0


def classifier_free_guidance(denoise_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                             labels: jax.Array, *, null_label: int,
                             guidance_scale: float) -> DenoiseFn:
    """Turns a conditional ``denoise_fn(x, t, labels)`` into a guided ``DenoiseFn`` (Ho & Salimans).

    The guided prediction is uncond + s * (cond - uncond): ``guidance_scale`` s = 1 is plain
    conditional sampling, s = 0 unconditional. Both halves are one batched call. Channels beyond
    the image's (a learned variance) are taken from the conditional output.
    """
    def guided(x, t):
        both = denoise_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = jnp.split(both, 2)
        c = x.shape[-1]
        eps = uncond[..., :c] + guidance_scale * (cond[..., :c] - uncond[..., :c])
        return jnp.concatenate([eps, cond[..., c:]], axis=-1)

    return guided


def sample(denoise_fn: DenoiseFn, schedule: Schedule, key: jax.Array, shape: tuple[int, ...], *,
           sampler: str = "ddpm", num_steps: int | None = None, eta: float = 0.0,
           target: str = "eps", variance: str = "fixedlarge", clip_x0: bool = True,
           trajectory_every: int | None = None,
           progress: Callable[[jax.Array], None] | None = None):
    """Generates samples by running the reverse process from x_T ~ N(0, I).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``, any traceable function.
        For classifier-free guidance wrap it with ``classifier_free_guidance``.
      schedule: the diffusion schedule the model was trained with.
      key: PRNG key; the same key gives bit-identical samples.
      shape: the output shape [B, ..., C].
      sampler: ``'ddpm'`` (ancestral, Ho et al. Algorithm 2) or ``'ddim'`` (Song et al.).
      num_steps: visit only this many evenly spaced timesteps (respacing; default all T).
      eta: DDIM's noise scale (0 deterministic, 1 ancestral); ignored by ``'ddpm'``.
      target, variance, clip_x0: as in ``diffusion.p_mean_variance``.
      trajectory_every: also return a ``Trajectory`` with a frame every k steps; k must divide
        the number of steps. Memory grows with steps / k.
      progress: called on the host with the step counter (0, 1, ...) after every step, e.g. to
        advance a progress bar. ``None`` (the default) adds nothing to the program.

    Returns:
      x_0 [*shape], or ``(x_0, Trajectory)`` when ``trajectory_every`` is set.
    """
    diffusion.check_choice("sampler", sampler, SAMPLERS)
    if not isinstance(eta, jax.core.Tracer) and not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta} must be in [0, 1] (0: deterministic DDIM, 1: ancestral)")
    timesteps = sampling_timesteps(schedule.num_timesteps, num_steps)
    steps = len(timesteps)
    chunk = steps if trajectory_every is None else trajectory_every
    if not (isinstance(chunk, int) and chunk >= 1 and steps % chunk == 0):
        raise ValueError(f"trajectory_every={trajectory_every} must be a positive divisor of the "
                         f"number of sampling steps {steps}")
    if steps < schedule.num_timesteps:
        schedule = respace(schedule, jnp.asarray(timesteps))
    model_timesteps = jnp.asarray(timesteps, jnp.int32)
    noise_key, step_key = jax.random.split(key)
    batch = shape[:1]

    def step(x, i):
        t = jnp.full(batch, i)
        model_output = denoise_fn(x, jnp.full(batch, model_timesteps[i]))
        step_rng = jax.random.fold_in(step_key, i)
        if sampler == "ddpm":
            x_prev, pred_x0 = diffusion.p_sample_step(
                schedule, model_output, x, t, step_rng, target=target, variance=variance,
                clip_x0=clip_x0)
        else:
            x_prev, pred_x0 = ddim_step(schedule, model_output, x, t, step_rng, eta=eta,
                                        target=target, variance=variance, clip_x0=clip_x0)
        if progress is not None:
            jax.debug.callback(progress, steps - 1 - i)
        return x_prev, pred_x0

    def run_chunk(x, indices):
        x_out, pred_x0 = jax.lax.scan(step, x, indices)
        return x_out, (x, pred_x0[0])

    indices = jnp.arange(steps - 1, -1, -1).reshape(steps // chunk, chunk)
    x_T = jax.random.normal(noise_key, shape)
    x0, (frames_x_t, frames_pred_x0) = jax.lax.scan(run_chunk, x_T, indices)
    if trajectory_every is None:
        return x0
    return x0, Trajectory(model_timesteps[indices[:, 0]], frames_x_t, frames_pred_x0)
