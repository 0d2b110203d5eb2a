"""Ho et al.'s (2020) noise-prediction U-Net as a Flax linen module."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.diffusion import check_labels
from ddpm_jax.models.layers import (
    AttnBlock, Downsample, GroupNormSwish, ResBlock, Upsample, conv3x3, default_init,
    timestep_embedding, zero_init)


class UNet(nn.Module):
    """eps_theta(x_t, t[, label]) -> [B, H, W, out_channels], Ho et al.'s architecture.

    Attributes:
      base_channels: channels at the first resolution (Ho et al.: 128 for CIFAR-10).
      channel_mults: channel multiplier per resolution; each level after the first halves H, W.
      num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
      attn_resolutions: feature-map heights at which self-attention follows each res block.
      dropout: dropout rate inside residual blocks (used when ``train=True``; needs a
        ``'dropout'`` rng).
      num_groups: GroupNorm groups (32 in Ho et al.).
      out_channels: output channels; ``None`` means the input's (use 2x for a learned variance).
      num_classes: ``None`` for an unconditional model; otherwise labels in [0, num_classes)
        are embedded, and (with ``has_null_label``) label ``num_classes`` is the "null" label of
        classifier-free guidance.
      has_null_label: whether the label embedding has the extra null row (our conditional
        models do; a diffusers class-conditional model without our convention does not, and
        cannot be guided).
      resample_with_conv: strided conv / conv after upsampling (Ho et al.), else pooling / none.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters and the output stay float32.
      flip_sin_to_cos, freq_shift: the timestep embedding's conventions (see
        ``layers.timestep_embedding``); the defaults are Ho et al.'s. Other values exist to run
        diffusers models configured with them.
    """

    base_channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    out_channels: int | None = None
    num_classes: int | None = None
    has_null_label: bool = True
    resample_with_conv: bool = True
    dtype: jnp.dtype = jnp.float32
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0

    def _check(self, x: jax.Array, t: jax.Array, labels: jax.Array | None) -> None:
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC images, got shape {x.shape}")
        if jnp.shape(t) != x.shape[:1]:
            raise ValueError(f"UNet expects timesteps t of shape [B] = [{x.shape[0]}], got shape "
                             f"{jnp.shape(t)}")
        _, height, width, _ = x.shape
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {factor} = 2^(levels - 1), "
                f"which channel_mults={tuple(self.channel_mults)} requires")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.num_groups:
                raise ValueError(f"channels {self.base_channels * mult} are not divisible by "
                                 f"num_groups={self.num_groups}")
        if (labels is None) != (self.num_classes is None):
            raise ValueError(f"labels must be given exactly when num_classes is set "
                             f"(num_classes={self.num_classes}, labels given: {labels is not None})")
        if labels is not None:
            check_labels(labels, num_labels=self.num_labels, batch=x.shape[0])

    @property
    def num_labels(self) -> int | None:
        """Rows of the label embedding: ``num_classes``, plus one with ``has_null_label``."""
        return None if self.num_classes is None else self.num_classes + self.has_null_label

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, *,
                 train: bool = False) -> jax.Array:
        """Predicts the model output for noisy images.

        Args:
          x: [B, H, W, C] noisy images.
          t: [B] integer timesteps.
          labels: [B] int class labels in [0, num_classes) and, with ``has_null_label``,
            num_classes (null), conditional only. The shape is always checked, the values
            when concrete; under ``jit`` they are traced and cannot be: a label past the
            embedding then gives NaN outputs and a negative one wraps around (-1 is the last
            row), so check them before jitting (``generate`` does).
          train: enables dropout.

        Returns:
          [B, H, W, out_channels or C] float32.
        """
        self._check(x, t, labels)
        ch, dtype = self.base_channels, self.dtype
        res_block = lambda out, name=None: ResBlock(out, self.num_groups, self.dropout, dtype,
                                                    name=name)

        emb = timestep_embedding(t, ch, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift)
        emb = nn.Dense(4 * ch, dtype=dtype, kernel_init=default_init, name="temb_dense0")(emb)
        emb = nn.Dense(4 * ch, dtype=dtype, kernel_init=default_init,
                       name="temb_dense1")(nn.swish(emb))
        if self.num_classes is not None:
            emb = emb + nn.Embed(self.num_labels, 4 * ch, dtype=dtype,
                                 name="label_emb")(labels)

        hs = [conv3x3(ch, dtype=dtype, name="conv_in")(x.astype(dtype))]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = res_block(ch * mult)(hs[-1], emb, train=train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.num_groups, dtype)(h)
                hs.append(h)
            if level != len(self.channel_mults) - 1:
                hs.append(Downsample(self.resample_with_conv, dtype)(hs[-1]))

        h = res_block(hs[-1].shape[-1], "mid_block1")(hs[-1], emb, train=train)
        h = AttnBlock(self.num_groups, dtype, name="mid_attn")(h)
        h = res_block(h.shape[-1], "mid_block2")(h, emb, train=train)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = res_block(ch * mult)(jnp.concatenate([h, hs.pop()], axis=-1), emb, train=train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.num_groups, dtype)(h)
            if level != 0:
                h = Upsample(self.resample_with_conv, dtype)(h)

        h = GroupNormSwish(self.num_groups, dtype=dtype)(h)
        out = conv3x3(self.out_channels or x.shape[-1], dtype=dtype, init=zero_init,
                      name="conv_out")(h)
        return out.astype(jnp.float32)
