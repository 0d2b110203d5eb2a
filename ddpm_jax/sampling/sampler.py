"""The sampler: one ``jax.lax.scan`` over timesteps for every method.

``sample`` is a pure function of its key. It does not jit itself: wrap it in ``jax.jit``,
``vmap`` it over keys, or call it inside ``pmap`` / ``shard_map`` as your program needs. The
compiled program holds the denoiser once (twice for Heun), whatever the number of steps; a
multistep solver keeps its history in the scan carry.
"""

from __future__ import annotations

import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax.diffusion import DenoiseFn
from ddpm_jax.sampling.steps import ddim_step, dpmpp_2m_sde_step, dpmpp_2m_step, heun_step
from ddpm_jax.sampling.timesteps import sampling_timesteps
from ddpm_jax.schedules import Schedule, respace

SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "heun")
# Those whose x_0 is a function of x_T alone (DDIM with eta = 0): probability-flow ODE solvers.
DETERMINISTIC_SAMPLERS = ("ddim", "dpmpp_2m", "heun")
# Each sampler's recommended spacing: DPM-Solver++ converges at its order on log-SNR spacing
# (order ~1.1 on 'time', 1.57 on 'logsnr' with the exact Gaussian denoiser), Heun on Karras'.
_DEFAULT_SPACINGS = dict(ddim="time", ddpm="time", dpmpp_2m="logsnr", dpmpp_2m_sde="logsnr",
                         heun="karras")


class Trajectory(NamedTuple):
    """Snapshots of the reverse process, one every ``trajectory_every`` steps.

    Frame j holds the sample x_t that entered step ``j * trajectory_every`` (frame 0 is the
    initial noise x_T), the model's x_0 prediction from it, and that t (schedule index).
    """

    timesteps: jax.Array  # [F]
    x_t: jax.Array  # [F, *shape]
    pred_x0: jax.Array  # [F, *shape]


def model_calls(sampler: str, num_steps: int) -> int:
    """Network evaluations of ``num_steps`` steps: 2 S - 1 for Heun, S for the others."""
    diffusion.check_choice("sampler", sampler, SAMPLERS)
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def default_spacing(sampler: str) -> str:
    """The spacing ``sample`` uses for ``sampler`` when none is given: ``'logsnr'`` for the
    DPM-Solver++ family, ``'karras'`` for Heun, ``'time'`` for DDPM and DDIM."""
    diffusion.check_choice("sampler", sampler, SAMPLERS)
    return _DEFAULT_SPACINGS[sampler]


def respaced(schedule: Schedule, num_steps: int | None, spacing: str | None,
             sampler: str) -> tuple[Schedule, jax.Array]:
    """(the schedule over the visited timesteps, those model timesteps [S]) for ``num_steps``
    steps on ``spacing`` (None: ``default_spacing(sampler)``): what ``sample`` runs on, shared
    with the editing functions."""
    spacing = default_spacing(sampler) if spacing is None else spacing
    model_timesteps = sampling_timesteps(schedule, num_steps, spacing=spacing)
    if model_timesteps.shape[0] < schedule.num_timesteps:
        schedule = respace(schedule, model_timesteps)
    return schedule, model_timesteps


def _check_shape(shape) -> tuple[int, ...]:
    try:
        dims = tuple(operator.index(n) for n in shape)
    except TypeError:
        dims = ()
    if not dims or min(dims) < 1:
        raise ValueError(f"shape must be a non-empty tuple of positive ints [B, ...], got {shape!r}")
    return dims


def _check_trajectory_every(trajectory_every, steps: int) -> int:
    if trajectory_every is None:
        return steps
    try:
        chunk = operator.index(trajectory_every)
    except TypeError:
        raise TypeError(f"trajectory_every must be an integer, got {trajectory_every!r}") from None
    if chunk < 1 or steps % chunk:
        raise ValueError(f"trajectory_every={chunk} must be a positive divisor of the number of "
                         f"sampling steps {steps}")
    return chunk


def sample(denoise_fn: DenoiseFn, schedule: Schedule, key: jax.Array, shape: tuple[int, ...], *,
           sampler: str = "ddpm", num_steps: int | None = None, spacing: str | None = None,
           eta: float = 0.0, target: str = "eps", variance: str = "fixedlarge",
           clip_x0: bool = True, trajectory_every: int | None = None,
           progress: Callable[[jax.Array], None] | None = None, x_T: jax.Array | None = None
           ) -> jax.Array | tuple[jax.Array, Trajectory]:
    """Generates samples by running the reverse process from x_T ~ N(0, I) (or a given x_T).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``, any traceable function,
        queried only at the schedule's trained timesteps. For classifier-free guidance wrap it
        with ``classifier_free_guidance``.
      schedule: the diffusion schedule the model was trained with.
      key: PRNG key; the same key gives bit-identical samples. Under ``shard_map`` / ``pmap``,
        ``fold_in(key, axis_index)`` first, or every shard draws the same samples.
      shape: the output shape [B, ..., C].
      sampler: ``'ddpm'`` (ancestral, Ho et al. Algorithm 2), ``'ddim'`` (Song et al.),
        ``'dpmpp_2m'`` (DPM-Solver++(2M), Lu et al. 2022), ``'dpmpp_2m_sde'`` (its stochastic
        variant, SDE-DPM-Solver++(2M)) or ``'heun'`` (Karras et al. 2022, Algorithm 1; two model
        calls per step, see ``model_calls``).
      num_steps: visit only this many of the T timesteps (respacing; default all T).
      spacing: where those steps lie: ``'time'``, ``'logsnr'`` or ``'karras'``
        (see ``sampling_timesteps``); None (default) is the sampler's recommendation,
        ``default_spacing(sampler)``.
      eta: DDIM's noise scale (0 deterministic, 1 ancestral); only for ``'ddim'``.
      target, variance: as in ``diffusion.p_mean_variance``.
      clip_x0: clip every x_0 prediction to [-1, 1] (default, right for images in [-1, 1]).
        Latents and any other data not bounded by [-1, 1] MUST pass ``clip_x0=False``.
      trajectory_every: also return a ``Trajectory`` with a frame every k steps; k must divide
        the number of steps. Memory grows with steps / k.
      progress: called on the host with the step counter (0, 1, ...) after every step, e.g. to
        advance a progress bar. ``None`` (the default) adds nothing to the program.
      x_T: ``[*shape]`` the starting noise (e.g. from ``editing.ddim_invert`` or a stored run);
        ``None`` (the default) draws it from ``key``. The per-step noise comes from ``key``
        either way, so a given x_T equal to the drawn one gives bit-identical samples.

    Returns:
      x_0 ``[*shape]``, or ``(x_0, Trajectory)`` when ``trajectory_every`` is set.
    """
    diffusion.check_choice("sampler", sampler, SAMPLERS)
    if not isinstance(eta, jax.core.Tracer) and not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta} must be in [0, 1] (0: deterministic DDIM, 1: ancestral)")
    shape = _check_shape(shape)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected the sample shape {shape}")
    schedule, model_timesteps = respaced(schedule, num_steps, spacing, sampler)
    steps = model_timesteps.shape[0]
    chunk = _check_trajectory_every(trajectory_every, steps)
    noise_key, step_key = jax.random.split(key)
    batch = shape[:1]
    indexed_fn = lambda x, t: denoise_fn(x, model_timesteps[t])
    kw = dict(target=target, variance=variance, clip_x0=clip_x0)

    def step(carry, i):
        x, prev_pred_x0 = carry
        t = jnp.full(batch, i)
        step_rng = jax.random.fold_in(step_key, i)
        if sampler == "heun":
            x_prev, pred_x0 = heun_step(indexed_fn, schedule, x, t, **kw)
        elif sampler == "dpmpp_2m":
            x_prev, pred_x0 = dpmpp_2m_step(schedule, indexed_fn(x, t), x, t, prev_pred_x0, **kw)
        elif sampler == "dpmpp_2m_sde":
            x_prev, pred_x0 = dpmpp_2m_sde_step(schedule, indexed_fn(x, t), x, t, step_rng,
                                                prev_pred_x0, **kw)
        elif sampler == "ddim":
            x_prev, pred_x0 = ddim_step(schedule, indexed_fn(x, t), x, t, step_rng, eta=eta, **kw)
        else:
            x_prev, pred_x0 = diffusion.p_sample_step(schedule, indexed_fn(x, t), x, t, step_rng,
                                                      **kw)
        if progress is not None:
            jax.debug.callback(progress, steps - 1 - i)
        return (x_prev, pred_x0), pred_x0

    def run_chunk(carry, indices):
        carry_out, pred_x0 = jax.lax.scan(step, carry, indices)
        return carry_out, (carry[0], pred_x0[0])

    indices = jnp.arange(steps - 1, -1, -1).reshape(steps // chunk, chunk)
    x_T = jax.random.normal(noise_key, shape) if x_T is None else jnp.asarray(x_T)
    (x0, _), (frames_x_t, frames_pred_x0) = jax.lax.scan(run_chunk, (x_T, jnp.zeros_like(x_T)),
                                                         indices)
    if trajectory_every is None:
        return x0
    return x0, Trajectory(model_timesteps[indices[:, 0]], frames_x_t, frames_pred_x0)
