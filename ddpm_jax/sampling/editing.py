"""Editing with a trained model: inpainting, SDEdit, DDIM inversion and interpolation.

Each function is pure in its key (if it has one) and does not jit itself, like ``sample``;
``denoise_fn`` is any ``DenoiseFn`` (a network, a class-conditional one wrapped in
``classifier_free_guidance``, an exact oracle) and every target (eps / x0 / v) works.

    inpaint       fills the pixels where ``mask`` is 0, keeping ``known`` where it is 1
                  (Song et al. 2021's replacement; RePaint's resampling with ``resample > 1``)
    sdedit        noises an image part-way with ``q_sample`` and samples back (Meng et al. 2022)
    ddim_invert   the deterministic DDIM ODE run from x_0 to x_T (the inverse of
                  ``sample(..., sampler='ddim', eta=0, x_T=...)``)
    slerp         spherical interpolation between two noises (Song et al. 2021, sec. 5.3)
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.diffusion import DenoiseFn, extract
from ddpm_jax.sampling.sampler import respaced, sample
from ddpm_jax.sampling.steps import ddim_step
from ddpm_jax.schedules import Schedule

# The samplers inpainting supports: single-step ones whose state is x alone. The multistep
# DPM-Solver++ samplers carry the previous x_0 prediction, which the replacement and RePaint's
# jumps back make stale; Heun's corrector would need the known region replaced between its two
# model calls. Neither is the method of the papers, so they are refused rather than approximated.
INPAINT_SAMPLERS = ("ddim", "ddpm")


def _check_mask(known: jax.Array, mask: jax.Array) -> jax.Array:
    if known.ndim < 2:
        raise ValueError(f"known must be a batch [B, ...], got shape {known.shape}")
    try:
        shape = np.broadcast_shapes(np.shape(mask), known.shape)
    except ValueError:
        shape = None
    if shape != known.shape:
        raise ValueError(f"mask of shape {np.shape(mask)} does not broadcast to known's shape "
                         f"{known.shape}")
    if not isinstance(mask, jax.core.Tracer):
        values = np.unique(np.asarray(mask))
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"mask values must be 0 (fill in) or 1 (keep), got "
                             f"{np.array2string(values[~np.isin(values, (0, 1))], threshold=4)}")
    return jnp.asarray(mask, known.dtype)


def _check_positive_int(name: str, value) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {number}")
    return number


def inpaint(denoise_fn: DenoiseFn, schedule: Schedule, key: jax.Array, known: jax.Array,
            mask: jax.Array, *, sampler: str = "ddpm", num_steps: int | None = None,
            spacing: str | None = None, resample: int = 1, jump: int = 1, eta: float = 0.0,
            target: str = "eps", variance: str = "fixedlarge",
            clip_x0: bool = True) -> jax.Array:
    """Samples x_0 whose pixels where ``mask`` is 1 equal ``known`` (the rest is filled in).

    After every reverse step to level n the known region is replaced by a fresh draw of
    q(x_n | known) = N(sqrt(abar_n) known, (1 - abar_n) I) (Song et al. 2021; Lugmayr et al.
    2022, eq. 8), so the last step leaves ``known`` itself. With ``resample`` R > 1 (RePaint),
    the steps are taken in blocks of ``jump`` J: after a block from level n + J down to n, the
    whole sample is noised back up to n + J with the forward kernel q(x_{n+J} | x_n) =
    N(sqrt(abar_{n+J} / abar_n) x_n, (1 - abar_{n+J} / abar_n) I) and the block is run again,
    R times in all; this lets the filled region agree with the known one. Model calls: R S.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output`` (see ``sample``).
      schedule: the schedule the model was trained with.
      key: PRNG key. With ``mask`` all 0, R = J = 1, the result is ``sample``'s for this key.
      known: [B, ...] the image(s) to complete, in the model's range.
      mask: 1 where ``known`` is kept, 0 where it is filled in; any shape broadcasting to
        ``known``'s (e.g. [H, W, 1] for every image and channel). Values are checked when
        concrete.
      sampler: ``'ddpm'`` (ancestral) or ``'ddim'`` (with ``eta``); see ``INPAINT_SAMPLERS``.
      num_steps, spacing: the S visited timesteps, as in ``sample``.
      resample: R >= 1, the passes over each block (1: replacement alone).
      jump: J >= 1, the block length; must divide S.
      eta, target, variance, clip_x0: as in ``sample``.

    Returns:
      [B, ...] samples; exactly ``known`` where ``mask`` is 1.
    """
    diffusion.check_choice("inpainting sampler", sampler, INPAINT_SAMPLERS)
    known = jnp.asarray(known)
    mask = _check_mask(known, mask)
    resample = _check_positive_int("resample", resample)
    jump = _check_positive_int("jump", jump)
    schedule, model_timesteps = respaced(schedule, num_steps, spacing, sampler)
    steps = model_timesteps.shape[0]
    if steps % jump:
        raise ValueError(f"jump={jump} must divide the number of sampling steps {steps}")
    noise_key, step_key = jax.random.split(key)
    batch, ndim = known.shape[:1], known.ndim
    kw = dict(target=target, variance=variance, clip_x0=clip_x0)
    # abar of level n (x_n enters step n - 1): level 0 is clean data, level S is x_T.
    level_abar = jnp.concatenate([jnp.ones((1,), jnp.float32), schedule.alphas_cumprod])

    def step(x, i, r):
        draw = i + r * steps  # r = 0 draws exactly what ``sample`` draws
        t = jnp.full(batch, i)
        output = denoise_fn(x, model_timesteps[t])
        if sampler == "ddim":
            x, _ = ddim_step(schedule, output, x, t, jax.random.fold_in(step_key, draw), eta=eta,
                             **kw)
        else:
            x, _ = diffusion.p_sample_step(schedule, output, x, t,
                                           jax.random.fold_in(step_key, draw), **kw)
        abar = extract(schedule.alphas_cumprod_prev, t, ndim)  # level i; 1 at the end
        noise = jax.random.normal(jax.random.fold_in(noise_key, draw), known.shape, known.dtype)
        known_t = jnp.sqrt(abar) * known + jnp.sqrt(1.0 - abar) * noise
        return mask * known_t + (1.0 - mask) * x

    def block(x, b):
        top, bottom = (b + 1) * jump, b * jump
        ratio = level_abar[top] / level_abar[bottom]

        def one_pass(x, r):
            x, _ = jax.lax.scan(lambda x, i: (step(x, i, r), None), x,
                                top - 1 - jnp.arange(jump))
            key = jax.random.fold_in(noise_key, steps * resample + b * resample + r)
            renoised = (jnp.sqrt(ratio) * x
                        + jnp.sqrt(1.0 - ratio) * jax.random.normal(key, x.shape, x.dtype))
            return jnp.where(r < resample - 1, renoised, x), None

        x, _ = jax.lax.scan(one_pass, x, jnp.arange(resample))
        return x, None

    x_T = jax.random.normal(noise_key, known.shape, known.dtype)
    x, _ = jax.lax.scan(block, x_T, jnp.arange(steps // jump - 1, -1, -1))
    return mask * known + (1.0 - mask) * x


def sdedit_start(schedule: Schedule, strength: float) -> int:
    """The number of trained timesteps SDEdit runs for ``strength`` in (0, 1]: round(strength T)
    (0: the image is returned as it is); a one-line error for other values."""
    if isinstance(strength, jax.core.Tracer):
        raise TypeError("strength must be a Python float (it sets the number of steps), not a "
                        "traced value")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return int(round(strength * schedule.num_timesteps))


def sdedit(denoise_fn: DenoiseFn, schedule: Schedule, key: jax.Array, image: jax.Array, *,
           strength: float, sampler: str = "ddpm", num_steps: int | None = None,
           **sample_kwargs) -> jax.Array:
    """SDEdit (Meng et al. 2022; diffusers' img2img): noises ``image`` to t = strength T with
    ``q_sample`` and runs ``sample`` from there.

    The chain is the schedule's first k = round(strength T) timesteps (a slice, so each keeps
    its trained abar), started from x_k = sqrt(abar_k) image + sqrt(1 - abar_k) z, z drawn as
    ``sample`` draws its x_T. At ``strength=1`` the start is that z itself (x_T ~ N(0, I), as
    in plain sampling, not the image noised to abar_T), so the result is ``sample``'s for the
    same key; as strength -> 0 (k = 0) the image is returned unchanged.

    Args:
      denoise_fn, schedule, key: as in ``sample``.
      image: [B, ...] images in the model's range.
      strength: in (0, 1], a Python float: how far to noise (1: ignore the image).
      sampler: any of ``SAMPLERS``.
      num_steps: steps actually run, at most k (default: all k).
      **sample_kwargs: ``sample``'s other options (spacing, eta, target, variance, clip_x0).

    Returns:
      [B, ...] the edited images.
    """
    image = jnp.asarray(image)
    start = sdedit_start(schedule, strength)
    if start == 0:
        return image
    if start == schedule.num_timesteps:
        return sample(denoise_fn, schedule, key, image.shape, sampler=sampler,
                      num_steps=num_steps, **sample_kwargs)
    first = jax.tree.map(lambda a: a[:start], schedule)
    noise = jax.random.normal(jax.random.split(key)[0], image.shape)
    t = jnp.full(image.shape[:1], start - 1)
    x_t = diffusion.q_sample(schedule, image, t, noise.astype(image.dtype))
    return sample(denoise_fn, first, key, image.shape, sampler=sampler, num_steps=num_steps,
                  x_T=x_t, **sample_kwargs)


def ddim_invert(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, *,
                num_steps: int | None = None, spacing: str | None = None, target: str = "eps",
                variance: str = "fixedlarge") -> jax.Array:
    """Maps x_0 to the x_T from which deterministic DDIM returns it (DDIM inversion).

    The DDIM (eta 0) update run upwards, as diffusers' ``DDIMInverseScheduler``: from level n
    (abar_n; abar = 1 for x_0) to the next visited timestep i, with eps = the model's noise
    prediction at (x_n, i), x_0-hat = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n) and
    x_i = sqrt(abar_i) x_0-hat + sqrt(1 - abar_i) eps. That is the explicit Euler step of the
    probability-flow ODE, so ``sample(..., sampler='ddim', eta=0, num_steps=S, spacing=same,
    clip_x0=False, x_T=ddim_invert(...))`` returns x_0 with an error of order 1/S. Nothing is
    clipped here (clipping is not invertible).

    Args:
      denoise_fn: as in ``sample``.
      schedule: the schedule the model was trained with.
      x0: [B, ...] the data to invert.
      num_steps, spacing: the S visited timesteps, as in ``sample``; use the same for sampling.
      target, variance: as in ``sample``.

    Returns:
      [B, ...] x_T.
    """
    x0 = jnp.asarray(x0)
    schedule, model_timesteps = respaced(schedule, num_steps, spacing, "ddim")
    batch, ndim = x0.shape[:1], x0.ndim

    def step(x, i):
        t = jnp.full(batch, i)
        prediction, _ = diffusion.split_model_output(denoise_fn(x, model_timesteps[t]), x,
                                                     variance)
        _, eps = diffusion.predict_x0_and_eps(schedule, prediction, x, t, target=target,
                                              clip_x0=False)
        abar_now = extract(schedule.alphas_cumprod_prev, t, ndim)
        abar_next = extract(schedule.alphas_cumprod, t, ndim)
        pred_x0 = (x - jnp.sqrt(1.0 - abar_now) * eps) / jnp.sqrt(abar_now)
        return jnp.sqrt(abar_next) * pred_x0 + jnp.sqrt(1.0 - abar_next) * eps, None

    x_T, _ = jax.lax.scan(step, x0, jnp.arange(model_timesteps.shape[0]))
    return x_T


def slerp(z0: jax.Array, z1: jax.Array, alpha: jax.typing.ArrayLike) -> jax.Array:
    """Spherical linear interpolation sin((1 - a) theta) / sin(theta) z0 + sin(a theta) /
    sin(theta) z1, theta the angle between z0 and z1 as flat vectors (DDIM, Song et al. 2021,
    sec. 5.3: Gaussian noise lies near a sphere, which a straight line would leave).

    Args:
      z0, z1: [...] two arrays of one shape (e.g. two x_T).
      alpha: a scalar or [N] array of weights (0: z0, 1: z1).

    Returns:
      ``[*alpha.shape, ...]``; the linear interpolation where z0 and z1 are (anti)parallel.
    """
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs z0 and z1 of one shape, got {z0.shape} and {z1.shape}")
    alpha = jnp.asarray(alpha, z0.dtype)
    a = alpha.reshape(alpha.shape + (1,) * z0.ndim)
    cos = jnp.vdot(z0, z1) / (jnp.linalg.norm(z0) * jnp.linalg.norm(z1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    parallel = jnp.sin(theta) < 1e-6
    sin_theta = jnp.where(parallel, 1.0, jnp.sin(theta))
    w0 = jnp.where(parallel, 1.0 - a, jnp.sin((1.0 - a) * theta) / sin_theta)
    w1 = jnp.where(parallel, a, jnp.sin(a * theta) / sin_theta)
    return w0 * z0 + w1 * z1
