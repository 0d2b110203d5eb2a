"""The Gaussian diffusion process of Ho et al. (2020) as pure functions of a ``Schedule``.

Images are ``[B, ..., C]`` arrays (channels last) in the model range [-1, 1]; timesteps ``t``
are int arrays of shape ``[B]`` following the convention in ``ddpm_jax.schedules``. All
functions are jit / vmap / scan safe and hold no state. A ``DenoiseFn`` is any traceable
``denoise_fn(x_t, t) -> model_output``; the losses never know which network is behind it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.schedules import Schedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]

TARGETS = ("eps", "v", "x0")
VARIANCES = ("fixedlarge", "fixedsmall", "learned_range")
LOSSES = ("hybrid", "simple", "vlb")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a ValueError naming ``value`` and the valid ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")


def check_labels(labels: jax.Array, *, num_labels: int | None, batch: int | None = None,
                 what: str = "labels") -> None:
    """Raises a one-line ValueError unless ``labels`` is an integer array [B] (B = ``batch`` when
    given) with values in [0, num_labels) (in [0, inf) for None). The shape and dtype are always
    checked; the values only when concrete, not when traced under ``jit``."""
    shape, dtype = jnp.shape(labels), jnp.result_type(labels)
    if len(shape) != 1 or (batch is not None and shape[0] != batch):
        expected = "[B]" if batch is None else f"[B] = [{batch}]"
        raise ValueError(f"{what} must have shape {expected}, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{what} must be integers, got dtype {dtype}")
    if isinstance(labels, jax.core.Tracer) or (isinstance(labels, jax.Array)
                                               and not labels.is_fully_addressable):
        return  # traced, or spread over other processes' devices
    values = np.asarray(labels)
    bad = values[(values < 0) | (values >= (np.inf if num_labels is None else num_labels))]
    if bad.size:
        expected = "[0, inf)" if num_labels is None else f"[0, {num_labels - 1}]"
        raise ValueError(f"{what} hold {int(bad[0])}, outside {expected}")


def expand_to(a: jax.Array, ndim: int) -> jax.Array:
    """Appends singleton axes so per-example ``a`` [B] broadcasts against rank ``ndim``."""
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def extract(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """``values[t]`` reshaped to broadcast against an array of rank ``ndim`` ([B] -> [B,1,..,1])."""
    return expand_to(values[jnp.asarray(t)], ndim)


def _check_t(schedule: Schedule, t, x: jax.Array) -> None:
    """Raises for a ``t`` that is not a scalar or [B] for ``x`` [B, ...], and for concrete
    timesteps outside [0, T-1] (traced values cannot be checked, their shapes can)."""
    shape = np.shape(t)
    if len(shape) > 1 or (shape and x.ndim and shape[0] != x.shape[0]):
        raise ValueError(f"timesteps t must have shape [B] = [{x.shape[0] if x.ndim else ''}] "
                         f"(or be a scalar), got shape {tuple(shape)} for x of shape {x.shape}")
    if isinstance(t, jax.core.Tracer):
        return
    t = np.asarray(t)
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= schedule.num_timesteps):
        raise ValueError(
            f"timesteps must be in [0, {schedule.num_timesteps - 1}], got min {t.min()} max {t.max()}"
        )


# --- forward process q ------------------------------------------------------------------------


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draws x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

    Args:
      schedule: the diffusion schedule.
      x0: [B, ...] clean data.
      t: [B] timesteps.
      noise: [B, ...] standard normal noise eps.

    Returns:
      [B, ...] x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
    """
    chex.assert_equal_shape([x0, noise])
    _check_t(schedule, t, x0)
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_mean_variance(schedule: Schedule, x0: jax.Array,
                    t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and log-variance of q(x_t | x_0); mean is [B, ...], the others broadcast."""
    _check_t(schedule, t, x0)
    abar = extract(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(abar) * x0, 1.0 - abar, jnp.log1p(-abar)


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array,
                t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The true reverse posterior q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7).

    Args:
      schedule: the diffusion schedule.
      x0: [B, ...] clean data (or a prediction of it).
      x_t: [B, ...] noisy data at timestep t.
      t: [B] timesteps.

    Returns:
      ``(mean [B, ...], variance, log_variance)``; variance and log_variance are [B, 1, ...]
      (broadcastable), the log clipped at t = 0 where the variance is 0.
    """
    chex.assert_equal_shape([x0, x_t])
    _check_t(schedule, t, x_t)
    mean = (extract(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
            + extract(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
    return (mean, extract(schedule.posterior_variance, t, x_t.ndim),
            extract(schedule.posterior_log_variance_clipped, t, x_t.ndim))


# --- conversions between parameterisations ----------------------------------------------------


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array,
                        eps: jax.Array) -> jax.Array:
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); all arrays [B, ...]."""
    return ((x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * eps)
            / extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim))


def predict_eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array,
                        x0: jax.Array) -> jax.Array:
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t); all arrays [B, ...]."""
    return ((x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * x0)
            / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim))


def v_from_x0_eps(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The v target (Salimans & Ho, 2022): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * eps
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)


def predict_x0_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
            - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v)


def predict_eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
    return (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
            + extract(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * v)


def split_model_output(model_output: jax.Array, x_t: jax.Array,
                       variance: str) -> tuple[jax.Array, jax.Array | None]:
    """Splits a ``learned_range`` output [B, ..., 2C] into (prediction, variance logits) [B, ..., C].

    For fixed variances the output is [B, ..., C] and the logits are None.
    """
    check_choice("variance", variance, VARIANCES)
    channels = x_t.shape[-1]
    expected = 2 * channels if variance == "learned_range" else channels
    if model_output.shape != x_t.shape[:-1] + (expected,):
        raise ValueError(
            f"model output shape {model_output.shape} does not match x_t {x_t.shape} with "
            f"variance={variance!r} (expected {expected} channels)"
        )
    if variance == "learned_range":
        return model_output[..., :channels], model_output[..., channels:]
    return model_output, None


def predict_x0_and_eps(schedule: Schedule, prediction: jax.Array, x_t: jax.Array, t: jax.Array,
                       *, target: str, clip_x0: bool) -> tuple[jax.Array, jax.Array]:
    """Both x_0 and eps from a network ``prediction`` of ``target``; [B, ...] each.

    With ``clip_x0`` the x_0 prediction is clipped to [-1, 1] and eps recomputed from it.
    """
    check_choice("target", target, TARGETS)
    _check_t(schedule, t, x_t)
    if target == "eps":
        eps = prediction
        x0 = predict_x0_from_eps(schedule, x_t, t, eps)
    elif target == "x0":
        x0 = prediction
        eps = predict_eps_from_x0(schedule, x_t, t, x0)
    else:
        x0 = predict_x0_from_v(schedule, x_t, t, prediction)
        eps = predict_eps_from_v(schedule, x_t, t, prediction)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = predict_eps_from_x0(schedule, x_t, t, x0)
    return x0, eps


# --- the learned reverse process p_theta ------------------------------------------------------


class PMeanVariance(NamedTuple):
    """p_theta(x_{t-1} | x_t): mean [B, ...], variance and log_variance (broadcastable), pred_x0."""

    mean: jax.Array
    variance: jax.Array
    log_variance: jax.Array
    pred_x0: jax.Array


def p_mean_variance(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                    *, target: str = "eps", variance: str = "fixedlarge",
                    clip_x0: bool = True) -> PMeanVariance:
    """Mean and variance of the learned reverse step p_theta(x_{t-1} | x_t).

    Args:
      schedule: the diffusion schedule.
      model_output: [B, ..., C] (or [B, ..., 2C] for ``variance='learned_range'``).
      x_t: [B, ..., C] the current sample.
      t: [B] timesteps.
      target: what the network predicts: ``'eps'`` (Ho et al.), ``'x0'`` or ``'v'``.
      variance: ``'fixedlarge'`` (beta_t), ``'fixedsmall'`` (the posterior's beta-tilde_t), or
        ``'learned_range'`` (Nichol & Dhariwal: the output's second half v in [-1, 1] gives
        log sigma^2 = (v+1)/2 log beta_t + (1-v)/2 log beta-tilde_t).
      clip_x0: clip the x_0 prediction to [-1, 1] before forming the mean (the default, as in
        every sampler: right for images in [-1, 1]; latents and other data must pass False).

    Returns:
      A ``PMeanVariance``. For ``target='eps'`` without clipping the mean is Ho et al.'s
      mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), computed by that formula.
    """
    _check_t(schedule, t, x_t)
    prediction, variance_logits = split_model_output(model_output, x_t, variance)
    pred_x0, _ = predict_x0_and_eps(schedule, prediction, x_t, t, target=target, clip_x0=clip_x0)
    if target == "eps" and not clip_x0:
        mean = extract(schedule.sqrt_recip_alphas, t, x_t.ndim) * (
            x_t - extract(schedule.eps_coef, t, x_t.ndim) * prediction)
    else:
        mean, _, _ = q_posterior(schedule, pred_x0, x_t, t)
    if variance == "fixedsmall":
        log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t.ndim)
    elif variance == "fixedlarge":
        log_variance = extract(schedule.fixedlarge_log_variance, t, x_t.ndim)
    else:
        frac = (variance_logits + 1.0) / 2.0
        log_variance = (frac * extract(schedule.log_betas, t, x_t.ndim)
                        + (1.0 - frac) * extract(schedule.posterior_log_variance_clipped, t, x_t.ndim))
    return PMeanVariance(mean, jnp.exp(log_variance), log_variance, pred_x0)


def p_sample_step(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                  key: jax.Array, *, target: str = "eps", variance: str = "fixedlarge",
                  clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
    """One ancestral step x_{t-1} = mean + sigma_t z, z ~ N(0, I), with z = 0 where t = 0.

    Args: as ``p_mean_variance``, plus ``key`` for z.

    Returns:
      ``(x_prev [B, ...], pred_x0 [B, ...])``.
    """
    out = p_mean_variance(schedule, model_output, x_t, t, target=target, variance=variance,
                          clip_x0=clip_x0)
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    nonzero = expand_to(jnp.asarray(t) > 0, x_t.ndim)
    return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, out.pred_x0
