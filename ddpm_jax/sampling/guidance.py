"""Classifier-free guidance (Ho & Salimans, 2022) as a wrapper around a conditional denoiser."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm_jax.diffusion import DenoiseFn, check_labels


def classifier_free_guidance(denoise_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                             labels: jax.Array, *, null_label: int | None,
                             guidance_scale: float | jax.Array) -> DenoiseFn:
    """Turns a conditional ``denoise_fn(x, t, labels)`` into a guided ``DenoiseFn`` (Ho & Salimans).

    The guided prediction is uncond + s * (cond - uncond): ``guidance_scale`` s = 1 is plain
    conditional sampling, s = 0 unconditional. A Python number s decides statically which passes
    run: s = 1 calls the model once, on ``labels``; s = 0 once, on the null label; any other s
    (or a traced s) makes both halves one batched call, and channels beyond the image's (a
    learned variance) are taken from the conditional output. Works with every sampler and target
    (the combination is linear, so it is the same for eps, x0 and v).

    Args:
      denoise_fn: the conditional model, ``(x [B, ...], t [B], labels [B]) -> output``.
      labels: int [B], each in [0, null_label] (the null label itself is an unconditional
        sample). Their shape is checked against x's batch at every call; their values here when
        they are concrete (under ``jit`` they cannot be: an out-of-range label then reaches the
        model unchecked, where ``UNet``'s embedding lookup returns NaN).
      null_label: the label the model was trained with for "no class" (``UNet.num_classes``
        when ``UNet.null_label``); None for a model without one, which allows only s = 1.
      guidance_scale: s; a float, or an array traced under ``jit``.
    """
    static = isinstance(guidance_scale, (int, float))
    if null_label is None and not (static and guidance_scale == 1):
        raise ValueError(f"guidance_scale={guidance_scale} needs a model with a null label "
                         "(trained for classifier-free guidance); this one has none, so only "
                         "guidance_scale=1 (plain conditional sampling) is possible")
    check_labels(labels, num_labels=None if null_label is None else null_label + 1)

    def guided(x, t):
        check_labels(labels, num_labels=None, batch=x.shape[0])
        if static and guidance_scale == 1:
            return denoise_fn(x, t, labels)
        if static and guidance_scale == 0:
            return denoise_fn(x, t, jnp.full_like(labels, null_label))
        both = denoise_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = jnp.split(both, 2)
        c = x.shape[-1]
        eps = uncond[..., :c] + guidance_scale * (cond[..., :c] - uncond[..., :c])
        return jnp.concatenate([eps, cond[..., c:]], axis=-1)

    return guided
