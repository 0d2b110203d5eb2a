"""pytorch-fid's FID InceptionV3 as a Flax module, up to the 2048-d pool3 features.

``InceptionV3`` is ``fid_inception_v3()`` of mseitzer/pytorch-fid (``src/pytorch_fid/
inception.py``): torchvision's Inception3 with the TensorFlow FID graph's quirks (average pools
that do not count padding, a max pool in the last block). Module names are its state_dict
prefixes; ``evaluation.inception`` loads the weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

INPUT_SIZE = 299
BN_EPS = 1e-3  # torchvision's BasicConv2d


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[N, H, W, C] -> [N, *size, C] like PyTorch's F.interpolate(bilinear, align_corners=False).

    Half-pixel centres, edge samples clamped, two taps per axis also when downscaling: no
    antialiasing (``jax.image.resize``'s default would widen the kernel).
    """
    return jax.image.resize(images, (images.shape[0], *size, images.shape[3]), "bilinear",
                            antialias=False)


def to_network_input(images: jax.Array) -> jax.Array:
    """Images [N, H, W, 1 or 3] -> [N, 299, 299, 3]: grayscale repeated, resized bilinearly."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, C] with C = 1 or 3, got {images.shape}")
    images = jnp.broadcast_to(images, (*images.shape[:3], 3))
    return resize_bilinear(images, (INPUT_SIZE, INPUT_SIZE))


def avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool, padding 1, padded zeros not counted (count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


class BasicConv2d(nn.Module):
    """Conv (no bias) + inference BatchNorm + ReLU; the BatchNorm is ``x * scale + bias``.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: the conv's stride.
      padding: symmetric zero padding (ph, pw).
    """

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C_in] -> [N, H', W', features]."""
        x = nn.Conv(self.features, self.kernel_size, self.strides,
                    padding=[(p, p) for p in self.padding], use_bias=False,
                    precision=jax.lax.Precision.HIGHEST, name="conv")(x)
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return nn.relu(x * scale + bias)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """FIDInceptionA (Mixed_5b-d): 64 + 64 + 96 + pool_features channels."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision's InceptionB (Mixed_6a): 35x35 -> 17x17, 384 + 96 + C_in channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC (Mixed_6b-e): factorised 7x7 convs, 4 x 192 channels."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision's InceptionD (Mixed_7a): 17x17 -> 8x8, 320 + 192 + C_in channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (Mixed_7b, average pool) or _2 (Mixed_7c, max pool): 2048 channels."""

    max_pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = (nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
                  if self.max_pool else avg_pool_3x3(x))
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 up to pool3; module names are its state_dict prefixes."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Images [N, H, W, 1 or 3] in [-1, 1] -> pool3 features [N, 2048].

        The input goes through ``to_network_input`` first (a no-op on [N, 299, 299, 3]).
        """
        x = to_network_input(images)
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # 149x149
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)  # 73x73
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71
        x = _max_pool_3x3_s2(x)  # 35x35
        x = InceptionA(32, name="Mixed_5b")(x)  # 256 channels
        x = InceptionA(64, name="Mixed_5c")(x)  # 288
        x = InceptionA(64, name="Mixed_5d")(x)  # 288
        x = InceptionB(name="Mixed_6a")(x)  # 17x17x768
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)  # 8x8x1280
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)  # 8x8x2048
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return x.mean(axis=(1, 2))
