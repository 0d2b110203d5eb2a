"""Which trained timesteps a sampler visits: ``spacing`` over the discrete schedule.

A discrete model has only seen its T integer timesteps, so every sampler queries it only there.
``'logsnr'`` and ``'karras'`` place their S noise levels in continuous log-SNR / sigma and take,
for each, the trained timestep nearest in log-SNR. The solvers then use that timestep's own
abar, never the continuous level, so the noise level a solver assumes and the one the network
is told always agree (an interpolated, fractional timestep would ask the network about inputs
it was never trained on, and a mismatched level biases every step). Near t = 0 two levels can
round to one timestep; they are pushed apart to neighbouring timesteps, so the result always
has exactly S distinct indices and contains 0 and T-1.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.schedules import Schedule, log_snr

SPACINGS = ("time", "logsnr", "karras")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5


def check_num_steps(num_steps: int | None, num_timesteps: int) -> int:
    """``num_steps`` as a Python int in [1, T] (``None``: T); a one-line error otherwise."""
    if num_steps is None:
        return num_timesteps
    try:
        if isinstance(num_steps, bool):
            raise TypeError
        steps = operator.index(num_steps)
    except TypeError:
        raise TypeError(f"num_steps must be an integer, got {num_steps!r}") from None
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {steps}")
    return steps


def _nearest_distinct(levels: jax.Array, targets: jax.Array) -> jax.Array:
    """For increasing-index ``targets`` [S] (decreasing log-SNR), the nearest of the schedule's
    [T] log-SNR ``levels``, made strictly increasing by moving collisions to free neighbours."""
    idx = jnp.argmin(jnp.abs(levels[None, :] - targets[:, None]), axis=1).astype(jnp.int32)
    idx = idx.at[0].set(0).at[-1].set(levels.shape[0] - 1)
    steps = jnp.arange(targets.shape[0], dtype=jnp.int32)
    # t_i = max(t_i, t_{i-1} + 1) upwards, then t_i = min(t_i, t_{i+1} - 1, T - S + i) downwards.
    num_levels, num_targets = levels.shape[0], targets.shape[0]
    idx = jax.lax.cummax(idx - steps) + steps
    return jax.lax.cummin(jnp.minimum(idx - steps, num_levels - num_targets), reverse=True) + steps


def sampling_timesteps(schedule: Schedule, num_steps: int | None, *,
                       spacing: str = "time") -> jax.Array:
    """The increasing schedule indices [S] a sampler visits (S = ``num_steps``, default all T).

    Args:
      schedule: the trained schedule (may be traced; only T must be static).
      num_steps: S in [1, T]; ``None`` visits all T timesteps.
      spacing: ``'time'`` (evenly spaced indices, the DDIM / improved-diffusion respacing),
        ``'logsnr'`` (uniform in log-SNR, DPM-Solver's recommendation) or ``'karras'``
        (Karras et al.'s sigma_i^(1/rho) uniform, rho = 7, sigma = sqrt((1 - abar) / abar)).
        See the module docstring for how continuous levels become trained timesteps.

    Returns:
      int32 [S] indices, strictly increasing, always containing 0 and T-1 (only T-1 if S = 1).
    """
    diffusion.check_choice("spacing", spacing, SPACINGS)
    num_timesteps = schedule.num_timesteps
    steps = check_num_steps(num_steps, num_timesteps)
    if steps == num_timesteps:
        return jnp.arange(num_timesteps, dtype=jnp.int32)
    if steps == 1:
        return jnp.array([num_timesteps - 1], jnp.int32)
    if spacing == "time":
        return jnp.asarray(np.round(np.linspace(0, num_timesteps - 1, steps)), jnp.int32)
    levels = log_snr(schedule.alphas_cumprod)
    u = jnp.linspace(0.0, 1.0, steps)
    if spacing == "logsnr":
        targets = levels[0] + u * (levels[-1] - levels[0])
    else:
        sigma_min, sigma_max = jnp.exp(-0.5 * levels[0]), jnp.exp(-0.5 * levels[-1])
        ramp = sigma_min ** (1 / KARRAS_RHO) + u * (sigma_max ** (1 / KARRAS_RHO)
                                                    - sigma_min ** (1 / KARRAS_RHO))
        targets = -2.0 * KARRAS_RHO * jnp.log(ramp)
    return _nearest_distinct(levels, targets)
