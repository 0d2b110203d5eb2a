"""Building blocks of Ho et al.'s U-Net: timestep embedding, residual block, attention, resampling.

All modules work on NHWC arrays. ``dtype`` is the compute dtype; parameters stay float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Ho et al. initialise every layer with variance scaling 1 (fan average, uniform) and scale 1e-10
# ("zero") for the last conv of each residual block, each attention projection and the output.
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zero_init = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0,
                       flip_sin_to_cos: bool = False, freq_shift: float = 1.0) -> jax.Array:
    """Sinusoidal embedding of integer timesteps (Vaswani et al.; Ho et al.'s exact form).

    Args:
      t: [B] timesteps.
      dim: embedding width (even).
      flip_sin_to_cos: put the cosines first (diffusers' ``flip_sin_to_cos``).
      freq_shift: s in the frequencies below (diffusers' ``freq_shift``; Ho et al.: 1).

    Returns:
      [B, dim] float32: ``[sin(t w_0..w_{h-1}), cos(t w_0..w_{h-1})]`` (cosines first with
      ``flip_sin_to_cos``) with w_i = max_period^(-i / (h - s)), h = dim / 2.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"timestep embedding width must be even and >= 4, got {dim}")
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"freq_shift={freq_shift} must be below half the embedding width {half}")
    freqs = jnp.exp(-math.log(max_period) / (half - freq_shift)
                    * jnp.arange(half, dtype=jnp.float32))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
    return jnp.concatenate(parts, axis=-1)


class GroupNormSwish(nn.Module):
    """GroupNorm (statistics in float32) followed by swish, or without it when ``act=False``."""

    num_groups: int
    act: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-6, dtype=self.dtype)(x)
        return nn.swish(h) if self.act else h


def conv3x3(features: int, *, dtype, strides: int = 1, init=default_init, name=None) -> nn.Conv:
    return nn.Conv(features, (3, 3), strides=(strides, strides), padding="SAME", dtype=dtype,
                   kernel_init=init, name=name)


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 (+ time embedding) -> GroupNorm -> swish -> dropout -> conv3x3.

    A 1x1 projection of the input joins the residual when the channel count changes.
    """

    out_channels: int
    num_groups: int
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool) -> jax.Array:
        h = GroupNormSwish(self.num_groups, dtype=self.dtype)(x)
        h = conv3x3(self.out_channels, dtype=self.dtype)(h)
        h = h + nn.Dense(self.out_channels, dtype=self.dtype, kernel_init=default_init,
                         name="temb_proj")(nn.swish(emb))[:, None, None, :]
        h = GroupNormSwish(self.num_groups, dtype=self.dtype)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(self.out_channels, dtype=self.dtype, init=zero_init)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Dense(self.out_channels, dtype=self.dtype, kernel_init=default_init,
                         name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual connection."""

    num_groups: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = GroupNormSwish(self.num_groups, act=False, dtype=self.dtype)(x)
        dense = lambda name, init=default_init: nn.Dense(c, dtype=self.dtype, kernel_init=init,
                                                          name=name)
        q, k, v = (dense(n)(h).reshape(b, height * width, c) for n in ("q", "k", "v"))
        logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * (c ** -0.5)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        h = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, height, width, c)
        return x + dense("proj_out", zero_init)(h)


class Downsample(nn.Module):
    """Halves H and W: a stride-2 3x3 conv, or 2x2 average pooling without ``with_conv``."""

    with_conv: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return conv3x3(x.shape[-1], dtype=self.dtype, strides=2)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Doubles H and W by nearest-neighbour repetition, then (``with_conv``) a 3x3 conv."""

    with_conv: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv3x3(x.shape[-1], dtype=self.dtype)(x) if self.with_conv else x
