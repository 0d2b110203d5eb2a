"""Training losses and the variational bound (Ho et al. 2020; Nichol & Dhariwal 2021).

All values are in nats. A loss takes a ``denoise_fn(x_t, t) -> model_output``, a batch of clean
images and a key; it knows nothing about Flax, so the caller closes over parameters, labels and
dropout keys.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.diffusion import DenoiseFn
from ddpm_jax.schedules import Schedule

LOSS_WEIGHTINGS = ("min_snr", "none")


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over every axis but the first: [B, ...] -> [B]."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sum_flat(x: jax.Array) -> jax.Array:
    """Sum over every axis but the first: [B, ...] -> [B]."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), broadcasting."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _log_ndtr_diff(hi: jax.Array, lo: jax.Array) -> jax.Array:
    """log(Phi(hi) - Phi(lo)) for hi > lo, using the tail where both terms are small."""
    upper = lo > 0  # then Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    a = jnp.where(upper, -lo, hi)
    b = jnp.where(upper, -hi, lo)
    log_a, log_b = jax.scipy.special.log_ndtr(a), jax.scipy.special.log_ndtr(b)
    return log_a + jnp.log(jnp.maximum(-jnp.expm1(log_b - log_a), 1e-30))


def discretized_gaussian_log_likelihood(x: jax.Array, *, mean: jax.Array,
                                        log_scale: jax.Array) -> jax.Array:
    """Log-probability of 8-bit data under a Gaussian discretised into 256 bins (Ho et al. eq. 13).

    Args:
      x: [B, ...] data on the grid {-1, -1 + 2/255, ..., 1} (uint8 values v as v / 127.5 - 1).
      mean: [B, ...] Gaussian means.
      log_scale: log standard deviations, broadcastable to ``x``.

    Returns:
      [B, ...] log-probabilities in nats. Bin edges are x +- 1/255, with the outermost bins
      extended to -inf and +inf, so the 256 probabilities sum to one.
    """
    chex.assert_equal_shape([x, mean])
    inv_std = jnp.exp(-log_scale)
    hi = (x - mean + 1.0 / 255.0) * inv_std
    lo = (x - mean - 1.0 / 255.0) * inv_std
    log_cdf_hi = jax.scipy.special.log_ndtr(hi)
    log_one_minus_cdf_lo = jax.scipy.special.log_ndtr(-lo)
    return jnp.where(x < -0.999, log_cdf_hi,
                     jnp.where(x > 0.999, log_one_minus_cdf_lo, _log_ndtr_diff(hi, lo)))


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
    """KL(q(x_T | x_0) || N(0, I)) summed over dimensions: [B, ...] -> [B] nats."""
    t = jnp.full(x0.shape[:1], schedule.num_timesteps - 1)
    mean, _, log_variance = diffusion.q_mean_variance(schedule, x0, t)
    return sum_flat(normal_kl(mean, log_variance, 0.0, 0.0))


def vlb_term(schedule: Schedule, model_output: jax.Array, x0: jax.Array, x_t: jax.Array,
             t: jax.Array, *, target: str = "eps", variance: str = "fixedlarge",
             clip_x0: bool = False) -> jax.Array:
    """One term of the variational bound for each example: [B] nats.

    For t > 0: L_{t} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)). For t = 0: the
    decoder's negative log-likelihood -log p_theta(x_0 | x_1) of the discretised data.
    """
    true_mean, _, true_log_variance = diffusion.q_posterior(schedule, x0, x_t, t)
    out = diffusion.p_mean_variance(schedule, model_output, x_t, t, target=target,
                                    variance=variance, clip_x0=clip_x0)
    kl = sum_flat(normal_kl(true_mean, true_log_variance, out.mean, out.log_variance))
    decoder_nll = -sum_flat(discretized_gaussian_log_likelihood(
        x0, mean=out.mean, log_scale=0.5 * out.log_variance))
    return jnp.where(t == 0, decoder_nll, kl)


def min_snr_weight(schedule: Schedule, t: jax.Array, *, target: str = "eps",
                   gamma: float = 5.0) -> jax.Array:
    """Min-SNR-gamma weight of the squared error of ``target`` at timesteps ``t`` [B] -> [B].

    Hang et al. 2023 weight the x_0 error by min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t).
    As ||eps error||^2 = SNR_t ||x_0 error||^2 and ||v error||^2 = (SNR_t + 1) ||x_0 error||^2,
    the same weighting is min(SNR_t, gamma) / SNR_t for ``'eps'``, min(SNR_t, gamma) for
    ``'x0'`` and min(SNR_t, gamma) / (SNR_t + 1) for ``'v'``.
    """
    diffusion.check_choice("target", target, diffusion.TARGETS)
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma!r}")
    snr = schedule.alphas_cumprod[t] / schedule.sqrt_one_minus_alphas_cumprod[t] ** 2
    clipped = jnp.minimum(snr, gamma)
    if target == "eps":
        return clipped / snr
    if target == "x0":
        return clipped
    return clipped / (snr + 1.0)


def training_loss(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                  target: str = "eps", variance: str = "fixedlarge", loss: str = "simple",
                  vlb_weight: float = 1e-3, loss_weighting: str = "none",
                  min_snr_gamma: float = 5.0) -> jax.Array:
    """Per-example training loss with t ~ U{0, ..., T-1} and eps ~ N(0, I).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``.
      schedule: the diffusion schedule.
      x0: [B, ...] clean data in [-1, 1].
      key: PRNG key for t and eps (``draw_t_and_noise``).
      target, variance, loss, vlb_weight, loss_weighting, min_snr_gamma: as in
        ``training_loss_given``.

    Returns:
      [B] losses; take the mean for the batch loss.
    """
    t, noise = draw_t_and_noise(schedule, key, x0)
    return training_loss_given(denoise_fn, schedule, x0, t, noise, target=target,
                               variance=variance, loss=loss, vlb_weight=vlb_weight,
                               loss_weighting=loss_weighting, min_snr_gamma=min_snr_gamma)


def draw_t_and_noise(schedule: Schedule, key: jax.Array,
                     x0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The training draws for a batch: t [B] ~ U{0, ..., T-1} and eps [B, ...] ~ N(0, I)."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, x0.shape[:1], 0, schedule.num_timesteps)
    return t, jax.random.normal(noise_key, x0.shape, x0.dtype)


def training_loss_given(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, t: jax.Array,
                        noise: jax.Array, *, target: str = "eps", variance: str = "fixedlarge",
                        loss: str = "simple", vlb_weight: float = 1e-3,
                        loss_weighting: str = "none", min_snr_gamma: float = 5.0) -> jax.Array:
    """Per-example training loss at given timesteps and noise (``training_loss`` draws them).

    Each example's loss depends only on its own x0, t and noise, so a batch split into
    micro-batches (gradient accumulation) gives the same losses as the whole.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``.
      schedule: the diffusion schedule.
      x0: [B, ...] clean data in [-1, 1].
      t: [B] timesteps (array index, 0 = the paper's t = 1).
      noise: [B, ...] the eps that makes x_t.
      target: what the network predicts (``'eps'``, ``'x0'``, ``'v'``).
      variance: the reverse variance (see ``diffusion.p_mean_variance``).
      loss: ``'simple'``: mean squared error of the target (Ho et al.'s L_simple, mean over
        pixels); ``'vlb'``: T times the sampled bound term, an unbiased estimate of the bound
        without its constant prior term (nats, summed over pixels); ``'hybrid'``: L_simple plus
        ``vlb_weight * T`` times the bound term in bits per dimension, with the mean's gradient
        stopped so the bound only trains a learned variance (Nichol & Dhariwal's L_hybrid;
        requires ``variance='learned_range'``).
      vlb_weight: lambda of L_hybrid = L_simple + lambda * L_vlb, in Nichol & Dhariwal's units:
        L_vlb = T * L_t / (D ln 2) is the sampled term in bits per dimension (D pixels x
        channels) times T, as improved-diffusion's ``training_losses`` computes it
        (``_vb_terms_bpd`` takes ``mean_flat(kl) / log(2)``, then ``*= num_timesteps / 1000``
        for the paper's lambda = 0.001), so lambda means the same for every image size.
      loss_weighting: per-timestep weight of the squared error (not of the bound term):
        ``'none'`` or ``'min_snr'`` (``min_snr_weight``; not with ``loss='vlb'``).
      min_snr_gamma: gamma of the Min-SNR weighting (Hang et al. use 5).

    Returns:
      [B] losses; take the mean for the batch loss.
    """
    diffusion.check_choice("loss", loss, diffusion.LOSSES)
    diffusion.check_choice("target", target, diffusion.TARGETS)
    diffusion.check_choice("loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
    if loss == "vlb" and loss_weighting != "none":
        raise ValueError(f"loss_weighting={loss_weighting!r} weights the squared error; "
                         f"loss='vlb' has none (use loss='simple' or 'hybrid')")
    if loss == "hybrid" and variance != "learned_range":
        raise ValueError(f"loss='hybrid' trains a learned variance; it needs "
                         f"variance='learned_range', got {variance!r}")
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    model_output = denoise_fn(x_t, t)
    if loss == "vlb":
        return schedule.num_timesteps * vlb_term(schedule, model_output, x0, x_t, t,
                                                 target=target, variance=variance)
    prediction, variance_logits = diffusion.split_model_output(model_output, x_t, variance)
    if target == "eps":
        target_value = noise
    elif target == "x0":
        target_value = x0
    else:
        target_value = diffusion.v_from_x0_eps(schedule, x0, t, noise)
    mse = mean_flat((target_value - prediction) ** 2)
    if loss_weighting == "min_snr":
        mse = mse * min_snr_weight(schedule, t, target=target, gamma=min_snr_gamma)
    if loss == "simple":
        return mse
    frozen = jnp.concatenate([jax.lax.stop_gradient(prediction), variance_logits], axis=-1)
    vlb_bits_per_dim = nats_to_bits_per_dim(
        vlb_term(schedule, frozen, x0, x_t, t, target=target, variance=variance),
        int(np.prod(x0.shape[1:])))
    return mse + vlb_weight * schedule.num_timesteps * vlb_bits_per_dim


class VariationalBound(NamedTuple):
    """The full bound per example in nats: total = prior + decoder + sum(diffusion_terms)."""

    total: jax.Array  # [B]
    prior: jax.Array  # [B], KL(q(x_T|x_0) || N(0, I))
    decoder: jax.Array  # [B], -log p(x_0 | x_1)
    diffusion_terms: jax.Array  # [T-1, B], L_t for t = 1..T-1 (array index), KL terms


def variational_bound(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, key: jax.Array,
                      *, target: str = "eps", variance: str = "fixedlarge",
                      clip_x0: bool = False) -> VariationalBound:
    """Every term of the negative ELBO (Ho et al. eq. 5) for each image, one scan over all T.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``.
      schedule: the diffusion schedule.
      x0: [B, ...] 8-bit data scaled to [-1, 1].
      key: PRNG key for the x_t drawn at each timestep.
      target, variance, clip_x0: as in ``diffusion.p_mean_variance``.

    Returns:
      A ``VariationalBound``; divide by (D ln 2) for bits per dimension.
    """
    def body(_, t):
        noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
        t_batch = jnp.full(x0.shape[:1], t)
        x_t = diffusion.q_sample(schedule, x0, t_batch, noise)
        term = vlb_term(schedule, denoise_fn(x_t, t_batch), x0, x_t, t_batch, target=target,
                        variance=variance, clip_x0=clip_x0)
        return None, term

    _, terms = jax.lax.scan(body, None, jnp.arange(schedule.num_timesteps))
    prior = prior_kl(schedule, x0)
    return VariationalBound(total=prior + jnp.sum(terms, axis=0), prior=prior, decoder=terms[0],
                            diffusion_terms=terms[1:])


def nats_to_bits_per_dim(nats: jax.Array, num_dims: int) -> jax.Array:
    """Converts nats per image to bits per dimension."""
    return nats / (num_dims * np.log(2.0))
