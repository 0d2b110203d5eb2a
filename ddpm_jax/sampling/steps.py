"""One step of each DDIM-family or DPM-Solver++ / Heun sampler, as pure functions.

Every step maps the sample at index ``t`` of a (possibly respaced) ``schedule`` to index t-1,
where index -1 is clean data (abar = 1, ``schedule.alphas_cumprod_prev[0]``); ``t`` is a [B]
int array. Write your own loop (inpainting, guidance) from these; ``sample`` runs them in a scan.
In the notation below alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), and
lambda_t = log(alpha_t / sigma_t) is half the log-SNR.

``clip_x0=True`` (the default everywhere in ddpm_jax's samplers) clips the x_0 prediction to
[-1, 1], right for images in that range; latents and other unbounded data must pass
``clip_x0=False``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax.diffusion import extract
from ddpm_jax.schedules import Schedule, log_snr


def _x0_and_eps(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array, *,
                target: str, variance: str, clip_x0: bool) -> tuple[jax.Array, jax.Array]:
    prediction, _ = diffusion.split_model_output(model_output, x_t, variance)
    return diffusion.predict_x0_and_eps(schedule, prediction, x_t, t, target=target,
                                        clip_x0=clip_x0)


def ddim_step(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
              key: jax.Array, *, eta: float, target: str = "eps", variance: str = "fixedlarge",
              clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
    """One DDIM step (Song et al. 2021, eq. 12) from index t to t-1 of ``schedule``.

    sigma_t = eta * sqrt((1 - abar_{t-1}) / (1 - abar_t) * (1 - abar_t / abar_{t-1})), so
    ``eta=0`` is deterministic (the Euler step of the probability-flow ODE in Karras et al.'s
    sigma parameterisation) and ``eta=1`` is ancestral sampling with the posterior variance.
    A learned variance's half of ``model_output`` is ignored.

    Returns:
      ``(x_prev [B, ...], pred_x0 [B, ...])``.
    """
    pred_x0, eps = _x0_and_eps(schedule, model_output, x_t, t, target=target,
                               variance=variance, clip_x0=clip_x0)
    abar_prev = extract(schedule.alphas_cumprod_prev, t, x_t.ndim)
    sigma_sq = eta ** 2 * extract(schedule.posterior_variance, t, x_t.ndim)
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_prev = (jnp.sqrt(abar_prev) * pred_x0 + jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma_sq, 0.0)) * eps
              + jnp.sqrt(sigma_sq) * noise)
    return x_prev, pred_x0


def _dpmpp_2m_terms(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                    prev_pred_x0: jax.Array | None, **kw) -> tuple[jax.Array, ...]:
    """The x_0 prediction D, sigma_{t-1} / sigma_t, e^{-h}, alpha_{t-1} and DPM-Solver++(2M)'s
    D' (see ``dpmpp_2m_step``), each broadcastable to ``x_t``."""
    pred_x0, _ = _x0_and_eps(schedule, model_output, x_t, t, **kw)
    ndim, last = x_t.ndim, schedule.num_timesteps - 1
    abar = extract(schedule.alphas_cumprod, t, ndim)
    abar_next = extract(schedule.alphas_cumprod_prev, t, ndim)
    sigma_ratio = jnp.sqrt((1.0 - abar_next) / (1.0 - abar))
    exp_neg_h = sigma_ratio * jnp.sqrt(abar / abar_next)  # e^{-h}; 0 at the final step
    denoised = pred_x0
    if prev_pred_x0 is not None:
        half_log_snr = lambda a: 0.5 * log_snr(a)
        abar_before = extract(schedule.alphas_cumprod, jnp.minimum(jnp.asarray(t) + 1, last), ndim)
        h = half_log_snr(abar_next) - half_log_snr(abar)
        h_prev = half_log_snr(abar) - half_log_snr(abar_before)
        second_order = diffusion.expand_to((jnp.asarray(t) > 0) & (jnp.asarray(t) < last), ndim)
        half_inv_r = jnp.where(second_order, h / (2.0 * h_prev), 0.0)
        denoised = pred_x0 + half_inv_r * (pred_x0 - prev_pred_x0)
    return pred_x0, sigma_ratio, exp_neg_h, jnp.sqrt(abar_next), denoised


def dpmpp_2m_step(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                  prev_pred_x0: jax.Array | None = None, *, target: str = "eps",
                  variance: str = "fixedlarge",
                  clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
    """One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2), data prediction, t -> t-1.

    With h = lambda_{t-1} - lambda_t and D the x_0 prediction,
    x_{t-1} = sigma_{t-1} / sigma_t x_t - alpha_{t-1} (e^{-h} - 1) D'. The second-order
    D' = (1 + 1/(2r)) D - 1/(2r) ``prev_pred_x0``, r = h_prev / h, uses the previous step's
    prediction (made at index t+1). The step is first order (D' = D, then exactly DDIM with
    eta 0) where there is no history: ``prev_pred_x0`` is None or t = S-1; and at the final
    step t = 0 into clean data, where h is infinite (as in k-diffusion and diffusers).

    Args:
      schedule, model_output, x_t, t: as in ``ddim_step``.
      prev_pred_x0: [B, ...] the x_0 prediction returned by the step from t+1, or None.
      target, variance, clip_x0: as in ``ddim_step``.

    Returns:
      ``(x_prev [B, ...], pred_x0 [B, ...])``; pass ``pred_x0`` to the next step.
    """
    pred_x0, sigma_ratio, exp_neg_h, alpha_next, denoised = _dpmpp_2m_terms(
        schedule, model_output, x_t, t, prev_pred_x0, target=target, variance=variance,
        clip_x0=clip_x0)
    x_prev = sigma_ratio * x_t + alpha_next * (1.0 - exp_neg_h) * denoised
    return x_prev, pred_x0


def dpmpp_2m_sde_step(schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array,
                      key: jax.Array, prev_pred_x0: jax.Array | None = None, *,
                      target: str = "eps", variance: str = "fixedlarge",
                      clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
    """One SDE-DPM-Solver++(2M) step (Lu et al. 2022, the solver of the reverse SDE in data
    prediction, second order by the midpoint rule), t -> t-1: diffusers' ``algorithm_type=
    'sde-dpmsolver++'`` and k-diffusion's ``sample_dpmpp_2m_sde`` (eta 1).

    With h, D' and the history as in ``dpmpp_2m_step`` and z ~ N(0, I),
    x_{t-1} = sigma_{t-1} / sigma_t e^{-h} x_t + alpha_{t-1} (1 - e^{-2h}) D'
    + sigma_{t-1} sqrt(1 - e^{-2h}) z. Like ancestral sampling it injects fresh noise at every
    step, which corrects part of the model's error instead of following the probability-flow
    ODE; the final step returns D.

    Args:
      schedule, model_output, x_t, t: as in ``ddim_step``.
      key: PRNG key of this step's noise.
      prev_pred_x0, target, variance, clip_x0: as in ``dpmpp_2m_step``.

    Returns:
      ``(x_prev [B, ...], pred_x0 [B, ...])``; pass ``pred_x0`` to the next step.
    """
    pred_x0, sigma_ratio, exp_neg_h, alpha_next, denoised = _dpmpp_2m_terms(
        schedule, model_output, x_t, t, prev_pred_x0, target=target, variance=variance,
        clip_x0=clip_x0)
    sigma_next = jnp.sqrt(1.0 - extract(schedule.alphas_cumprod_prev, t, x_t.ndim))
    one_minus_exp_neg_2h = 1.0 - exp_neg_h ** 2
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    x_prev = (sigma_ratio * exp_neg_h * x_t + alpha_next * one_minus_exp_neg_2h * denoised
              + sigma_next * jnp.sqrt(one_minus_exp_neg_2h) * noise)
    return x_prev, pred_x0


def heun_step(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule,
              x_t: jax.Array, t: jax.Array, *, target: str = "eps", variance: str = "fixedlarge",
              clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
    """One step of Karras et al.'s (2022) Algorithm 1 (deterministic Heun), t -> t-1.

    In Karras's variables x~ = x / alpha_t and sigma~_t = sigma_t / alpha_t the probability-flow
    ODE is dx~/dsigma~ = eps(x, t), the noise prediction. Euler: x~' = x~ + (sigma~_{t-1} -
    sigma~_t) eps; Heun then averages eps at both ends. The final step into clean data
    (t = 0, sigma~ = 0) is the Euler step alone, as in the paper. Two model calls per step, one
    at t = 0.

    Args:
      denoise_fn: ``denoise_fn(x [B, ...], t [B]) -> model_output`` queried at indices of
        ``schedule`` (map them to the model's timesteps yourself after respacing).
      schedule, x_t, t, target, variance, clip_x0: as in ``ddim_step``.

    Returns:
      ``(x_prev [B, ...], pred_x0 [B, ...])``, pred_x0 from the first model call.
    """
    t = jnp.asarray(t)
    ndim = x_t.ndim
    kw = dict(target=target, variance=variance, clip_x0=clip_x0)
    pred_x0, eps = _x0_and_eps(schedule, denoise_fn(x_t, t), x_t, t, **kw)
    abar, abar_next = (extract(a, t, ndim) for a in (schedule.alphas_cumprod,
                                                     schedule.alphas_cumprod_prev))
    alpha_next = jnp.sqrt(abar_next)
    dsigma = jnp.sqrt((1.0 - abar_next) / abar_next) - jnp.sqrt((1.0 - abar) / abar)
    x_scaled = x_t / jnp.sqrt(abar)
    x_euler = alpha_next * (x_scaled + dsigma * eps)

    def corrected(x_euler):
        t_next = jnp.maximum(t - 1, 0)
        _, eps_next = _x0_and_eps(schedule, denoise_fn(x_euler, t_next), x_euler, t_next, **kw)
        x_heun = alpha_next * (x_scaled + dsigma * 0.5 * (eps + eps_next))
        return jnp.where(diffusion.expand_to(t > 0, ndim), x_heun, x_euler)

    x_prev = jax.lax.cond(jnp.all(t == 0), lambda x: x, corrected, x_euler)
    return x_prev, pred_x0
