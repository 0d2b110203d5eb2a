"""Noise schedules and every quantity derived from them.

Timestep convention, used everywhere in ddpm_jax: an integer ``t`` in ``[0, T-1]`` is the
paper's timestep ``t + 1``. So ``t = 0`` is the last reverse step (x_1 -> x_0, which adds no
noise) and ``t = T - 1`` is the first (x_T -> x_{T-1}). Array ``schedule.betas[t]`` is the
paper's beta_{t+1}.

Schedules are computed in float64 numpy and stored as float32 ``jax.Array``s in a frozen
pytree, so they can be passed through ``jax.jit``, ``vmap`` and ``scan`` as ordinary arguments.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_KINDS = ("cosine", "linear", "sigmoid")


@flax.struct.dataclass
class Schedule:
    """Diffusion schedule arrays, each of shape [T] (index ``t`` is the paper's t+1).

    ``alphas_cumprod_prev[0] = 1`` (x_0 is clean). ``posterior_*`` describe the true reverse
    posterior q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, so its log is clipped to the
    value at t = 1 as in Ho et al. ``fixedlarge_log_variance`` is log(beta_t) with the first entry
    replaced by the posterior variance at t = 1 (Ho et al.'s ``fixedlarge``).
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas: jax.Array
    eps_coef: jax.Array  # beta_t / sqrt(1 - abar_t), the noise weight in the reverse mean
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array  # multiplies x_0
    posterior_mean_coef2: jax.Array  # multiplies x_t
    log_betas: jax.Array
    fixedlarge_log_variance: jax.Array

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps (a static Python int, also under jit)."""
        return self.betas.shape[0]


def log_snr(alphas_cumprod: jax.Array) -> jax.Array:
    """log(abar / (1 - abar)), elementwise; decreasing in t along a schedule."""
    return jnp.log(alphas_cumprod) - jnp.log1p(-alphas_cumprod)


def _derive(alphas_cumprod, xp) -> dict[str, Any]:
    """Every schedule array from abar_t, with array module ``xp`` (numpy or jax.numpy)."""
    alphas_cumprod_prev = xp.concatenate([xp.ones_like(alphas_cumprod[:1]), alphas_cumprod[:-1]])
    alphas = alphas_cumprod / alphas_cumprod_prev
    betas = 1.0 - alphas
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # At t = 0 the posterior variance is 0; clip its log to the t = 1 value (Ho et al.).
    # With T = 1 there is no t = 1: then beta_1 stands in.
    clip_value = posterior_variance[1:2] if betas.shape[0] > 1 else betas[:1]
    posterior_log_variance_clipped = xp.log(xp.concatenate([clip_value, posterior_variance[1:]]))
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=xp.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=xp.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas=1.0 / xp.sqrt(alphas),
        eps_coef=betas / xp.sqrt(1.0 - alphas_cumprod),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * xp.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * xp.sqrt(alphas) / (1.0 - alphas_cumprod),
        log_betas=xp.log(betas),
        fixedlarge_log_variance=xp.log(xp.concatenate([clip_value, betas[1:]])),
    )


def _linear_betas(num_timesteps: int, *, beta_start: float | None = None,
                  beta_end: float | None = None, max_beta: float = 0.999):
    """Ho et al.'s 1e-4 -> 0.02 at T = 1000, both scaled by 1000 / T for other T as in
    improved-diffusion (``gaussian_diffusion.get_named_beta_schedule``), so abar_{T-1} stays
    near 0 at any T (unscaled, T = 20 ends at abar = 0.82: x_T is far from N(0, I)). The
    scaled end is capped at ``max_beta`` (it reaches 1 at T = 20). Endpoints given explicitly
    are used as they are."""
    scale = 1000 / num_timesteps
    beta_start = scale * 1e-4 if beta_start is None else beta_start
    beta_end = min(scale * 0.02, max_beta) if beta_end is None else beta_end
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def _cosine_betas(num_timesteps: int, *, s: float = 0.008, max_beta: float = 0.999):
    """Nichol & Dhariwal (2021): abar(u) = cos^2((u + s) / (1 + s) * pi / 2)."""
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def _sigmoid_betas(
    num_timesteps: int, *, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
    max_beta: float = 0.999,
):
    """Jabri et al. (2022): abar follows a rescaled sigmoid between ``start`` and ``end``."""
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    f = (-sigmoid((u * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)


_BETA_FNS = {"cosine": _cosine_betas, "linear": _linear_betas, "sigmoid": _sigmoid_betas}


def make_schedule(kind: str, num_timesteps: int, **kwargs: float) -> Schedule:
    """Builds a schedule of ``num_timesteps`` steps.

    Args:
      kind: ``'linear'`` (Ho et al.: beta from ``beta_start`` to ``beta_end``, by default
        1e-4 and 0.02 scaled by 1000 / T as in improved-diffusion, the end capped at
        ``max_beta=0.999``; explicit endpoints are taken as given),
        ``'cosine'`` (Nichol & Dhariwal: ``s=0.008``, ``max_beta=0.999``) or ``'sigmoid'``
        (``start=-3``, ``end=3``, ``tau=1``, ``max_beta=0.999``).
      num_timesteps: T >= 1.
      **kwargs: the kind's hyperparameters listed above.

    Returns:
      A float32 ``Schedule`` whose arrays were computed in float64.
    """
    if kind not in _BETA_FNS:
        raise ValueError(f"unknown beta schedule {kind!r}; expected one of {list(SCHEDULE_KINDS)}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)):
        raise TypeError(f"num_timesteps must be an int, got {num_timesteps!r}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    try:
        betas = _BETA_FNS[kind](int(num_timesteps), **kwargs)
    except TypeError as e:
        raise TypeError(f"bad hyperparameters {kwargs} for the {kind!r} schedule: {e}") from None
    if not (np.all(betas > 0) and np.all(betas < 1)):
        raise ValueError(f"the {kind!r} schedule with {kwargs} gives betas outside (0, 1)")
    return schedule_from_betas(betas)


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    """The schedule of given betas [T] (e.g. a released model's), derived in float64.

    Raises:
      ValueError: if ``betas`` is not a non-empty 1-D array with every value in (0, 1).
    """
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size == 0 or not (np.all(betas > 0) and np.all(betas < 1)):
        raise ValueError(f"betas must be a non-empty 1-D array with values in (0, 1), got shape "
                         f"{betas.shape}, range [{betas.min(initial=np.inf)}, "
                         f"{betas.max(initial=-np.inf)}]")
    arrays = _derive(np.cumprod(1.0 - betas), np)
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def respace(schedule: Schedule, timesteps: jax.Array) -> Schedule:
    """The schedule of the sub-chain that visits only ``timesteps`` (Nichol & Dhariwal, 2021).

    Args:
      schedule: the full schedule.
      timesteps: [S] strictly increasing indices into ``schedule``, within [0, T-1]; checked
        when concrete (traced indices cannot be).

    Returns:
      A schedule of S steps whose ``alphas_cumprod[i] = schedule.alphas_cumprod[timesteps[i]]``
      and whose betas make the sub-chain's marginals equal the full chain's. Traceable.
    """
    if not isinstance(timesteps, jax.core.Tracer):
        ts = np.asarray(timesteps)
        if (ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer)
                or ts[0] < 0 or ts[-1] >= schedule.num_timesteps or np.any(np.diff(ts) <= 0)):
            raise ValueError(f"respace timesteps must be a non-empty strictly increasing 1-D "
                             f"integer array within [0, {schedule.num_timesteps - 1}], got "
                             f"{np.array2string(ts, threshold=8)}")
    return Schedule(**_derive(schedule.alphas_cumprod[timesteps], jnp))
