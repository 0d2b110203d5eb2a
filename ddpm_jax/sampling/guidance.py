"""Classifier-free guidance (Ho & Salimans, 2022) as a wrapper around a conditional denoiser."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax.diffusion import DenoiseFn


def classifier_free_guidance(denoise_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                             labels: jax.Array, *, null_label: int,
                             guidance_scale: float) -> DenoiseFn:
    """Turns a conditional ``denoise_fn(x, t, labels)`` into a guided ``DenoiseFn`` (Ho & Salimans).

    The guided prediction is uncond + s * (cond - uncond): ``guidance_scale`` s = 1 is plain
    conditional sampling, s = 0 unconditional. Both halves are one batched call. Channels beyond
    the image's (a learned variance) are taken from the conditional output. Works with every
    sampler and target (the combination is linear, so it is the same for eps, x0 and v).
    """
    def guided(x, t):
        both = denoise_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = jnp.split(both, 2)
        c = x.shape[-1]
        eps = uncond[..., :c] + guidance_scale * (cond[..., :c] - uncond[..., :c])
        return jnp.concatenate([eps, cond[..., c:]], axis=-1)

    return guided
