"""InceptionV3 pool3 features for FID / KID, from user-supplied weights.

    extractor = inception.load_inception("pt_inception-2015-12-05-6726825d.npz", batch_size=200)
    features = extractor(images)  # images [N, H, W, 1 or 3] in [-1, 1] -> [N, 2048]

``InceptionV3`` is the FID Inception of pytorch-fid (``fid_inception_v3()`` in mseitzer/pytorch-fid
``src/pytorch_fid/inception.py``): torchvision's Inception3 with the TensorFlow graph's quirks
(average pools that do not count padding, a max pool in the last block). With pytorch-fid's
weights, ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID graph's), the features are
pytorch-fid's, so FIDs compare with published ones (pytorch-fid: 0.09% off TensorFlow's on LSUN).
Weights are never downloaded: pass the file's path. A ``.pth`` needs torch; without it, convert
it to ``.npz`` once where torch is installed:

    import numpy as np, torch
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu", weights_only=True)
    np.savez("pt_inception-2015-12-05-6726825d.npz", **{k: v.numpy() for k, v in sd.items()})
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import hashlib
import os
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.evaluation.features import FeatureFunction

INPUT_SIZE = 299
BN_EPS = 1e-3  # torchvision's BasicConv2d
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
_CONVERT = ("python -c \"import sys, numpy as np, torch; np.savez(sys.argv[2], **{k: v.numpy() "
            "for k, v in torch.load(sys.argv[1], map_location='cpu', weights_only=True).items()})\""
            " WEIGHTS.pth WEIGHTS.npz")


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


@functools.cache
def _param_shapes() -> dict[str, tuple[int, ...]]:
    """The Flax params of ``InceptionV3``, flattened to 'Mixed_5b/branch1x1/conv/kernel'."""
    shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    return {k: v.shape for k, v in traverse_util.flatten_dict(shapes["params"], sep="/").items()}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """pytorch-fid's state_dict names -> shapes, without ``fc`` and ``num_batches_tracked``.

    Per BasicConv2d ``<prefix>``: ``<prefix>.conv.weight`` [out, in, kh, kw] and
    ``<prefix>.bn.{weight,bias,running_mean,running_var}`` [out].
    """
    shapes = {}
    for path, shape in _param_shapes().items():
        if path.endswith("/conv/kernel"):
            prefix = path.removesuffix("/conv/kernel").replace("/", ".")
            kh, kw, c_in, c_out = shape
            shapes[f"{prefix}.conv.weight"] = (c_out, c_in, kh, kw)
            shapes.update({f"{prefix}.bn.{k}": (c_out,) for k in _BN_KEYS})
    return shapes


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A state dict from an .npz, or from a .pth / .pt when torch is importable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Inception weights file {path!r}; ddpm_jax never downloads "
                                f"them: pass the path of pytorch-fid's "
                                f"pt_inception-2015-12-05-6726825d.pth (or its .npz)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    if ext not in (".pth", ".pt"):
        raise ValueError(f"unknown extension {ext!r} of Inception weights {path!r}; expected "
                         f".npz, or .pth / .pt (with torch installed)")
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path!r} needs torch, which is not installed; convert it to "
                          f".npz where torch is: {_CONVERT}") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items()}


def fold_batch_norm(conv_weight: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                    running_mean: np.ndarray, running_var: np.ndarray) -> dict[str, Any]:
    """A ``BasicConv2d``'s params from PyTorch's conv [out, in, kh, kw] and BatchNorm [out].

    ``scale = weight / sqrt(running_var + 1e-3)``, ``bias - running_mean * scale``, computed in
    float64; all stored as float32, the kernel as [kh, kw, in, out].
    """
    w, b, mean, var = (np.asarray(a, np.float64) for a in (weight, bias, running_mean,
                                                            running_var))
    scale = w / np.sqrt(var + BN_EPS)
    return {"conv": {"kernel": jnp.asarray(np.transpose(conv_weight, (2, 3, 1, 0)), jnp.float32)},
            "scale": jnp.asarray(scale, jnp.float32),
            "bias": jnp.asarray(b - mean * scale, jnp.float32)}


def _params_from_state_dict(state: Mapping[str, np.ndarray], path: str) -> dict[str, Any]:
    """``InceptionV3`` params from a pytorch-fid state dict, checked against its names."""
    expected = state_dict_shapes()
    ignored = {k for k in state if k in ("fc.weight", "fc.bias")
               or k.endswith(".num_batches_tracked")}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys() - ignored)
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            raise ValueError(f"{len(keys)} {what} keys in the Inception weights {path!r}, e.g. "
                             f"{keys[:5]}; expected pytorch-fid's FID Inception state dict")
    for k, shape in expected.items():
        if np.shape(state[k]) != shape:
            raise ValueError(f"Inception weight {k!r} in {path!r} has shape "
                             f"{np.shape(state[k])}, expected {shape}")
    layers = [k.removesuffix(".conv.weight") for k in expected if k.endswith(".conv.weight")]
    return traverse_util.unflatten_dict({
        tuple(layer.split(".")): fold_batch_norm(state[f"{layer}.conv.weight"],
                                                 *(state[f"{layer}.bn.{k}"] for k in _BN_KEYS))
        for layer in layers})


@jax.jit
def _pool3(params: Any, images: jax.Array) -> jax.Array:
    """Resized RGB images [N, 299, 299, 3] -> pool3 features [N, 2048]."""
    return InceptionV3().apply({"params": params}, images)


_preprocess = jax.jit(to_network_input)


def load_inception(path: str, *, batch_size: int = 200) -> FeatureFunction:
    """pool3 features of InceptionV3 with the weights in ``path`` (.npz, or .pth / .pt with torch).

    Args:
      path: a pytorch-fid state dict (``fc`` and ``num_batches_tracked`` entries are ignored).
      batch_size: images per forward pass; the network compiles once per batch size.

    Returns:
      A ``FeatureFunction`` of images [N, H, W, 1 or 3] in [-1, 1] -> [N, 2048], named
      ``inception_v3_pool3 sha256:<first 16 hex digits of the file's SHA-256>``.
    """
    params = _params_from_state_dict(_read_state_dict(path), path)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return FeatureFunction(f"inception_v3_pool3 sha256:{digest[:16]}",
                           lambda images: _pool3(params, _preprocess(images)), batch_size)
