"""InceptionV3 features and logits for FID / KID / IS, with pytorch-fid's weights.

    extractor = inception.load_inception(inception.fetch_pytorch_fid_weights(), batch_size=200)
    features = extractor(images)  # images [N, H, W, 1 or 3] in [-1, 1] -> pool3 [N, 2048]

The network is ``inception_net.InceptionV3``, pytorch-fid's FID Inception. With pytorch-fid's
weights, ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID graph's), the features are
pytorch-fid's, so FIDs compare with published ones (pytorch-fid: 0.09% off TensorFlow's on LSUN).
``fetch_pytorch_fid_weights`` downloads them once from pytorch-fid's release into the cache
(verified by SHA-256) and converts them once to ``.npz``; ``read_state_dict`` reads any ``.pth``
without torch. Images are resized to 299x299 as pytorch-fid does (``inception_net.
resize_bilinear``: bilinear, half-pixel centres, no antialiasing).
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import os
import pathlib
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.atomic_files import atomic_write
from ddpm_jax.evaluation.downloads import fetch_weights, file_sha256
from ddpm_jax.evaluation.features import FeatureFunction
from ddpm_jax.evaluation.inception_net import (  # noqa: F401  (re-exported)
    BN_EPS,
    INPUT_SIZE,
    BasicConv2d,
    InceptionV3,
    avg_pool_3x3,
    resize_bilinear,
    to_network_input,
)
from ddpm_jax.evaluation.torch_state_dict import read_state_dict
from ddpm_jax.user_cache import default_cache_dir

# pytorch-fid's FID_WEIGHTS_URL (src/pytorch_fid/inception.py). Its release publishes the first
# 8 hex digits of the file's SHA-256 in the name (torch.hub's check_hash convention).
PYTORCH_FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
                           "fid_weights/pt_inception-2015-12-05-6726825d.pth")
PYTORCH_FID_WEIGHTS_SHA256 = "6726825d"
SOURCE_SHA256_KEY = "source_sha256"  # in an .npz converted here: the SHA-256 of its .pth
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
_FC_KEYS = ("fc.weight", "fc.bias")


def fetch_pytorch_fid_weights(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """pytorch-fid's Inception weights as an ``.npz`` in the cache, fetched and converted once.

    Args:
      cache_dir: default ``user_cache.default_cache_dir()`` ($XDG_CACHE_HOME/ddpm_jax or
        ~/.cache/ddpm_jax).

    Returns:
      ``<cache_dir>/pt_inception-2015-12-05-6726825d.npz``: the state dict's arrays and, under
      ``source_sha256``, the SHA-256 of the verified ``.pth`` it was read from.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    pth = fetch_weights(PYTORCH_FID_WEIGHTS_URL, PYTORCH_FID_WEIGHTS_SHA256, cache_dir=cache_dir)
    npz = pth.with_suffix(".npz")
    if not npz.is_file():
        with atomic_write(npz) as f:  # processes sharing the cache each write their own file
            np.savez(f, **read_state_dict(pth), **{SOURCE_SHA256_KEY: file_sha256(pth)})
    return npz


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 that identifies Inception weights: the file's, or for an ``.npz`` converted by
    ``fetch_pytorch_fid_weights``, its source ``.pth``'s."""
    if os.fspath(path).lower().endswith(".npz"):
        with np.load(path) as f:
            if SOURCE_SHA256_KEY in f.files:
                return str(f[SOURCE_SHA256_KEY])
    return file_sha256(path)


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], str]:
    """A state dict from an ``.npz`` or a ``.pth`` / ``.pt`` (read without torch), and its
    ``weights_sha256``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Inception weights file {path!r}; pass pytorch-fid's "
                                f"pt_inception-2015-12-05-6726825d.pth (or its .npz), or 'auto' "
                                f"to download it")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path) as f:
            state = {k: f[k] for k in f.files if k != SOURCE_SHA256_KEY}
        return state, weights_sha256(path)
    if ext not in (".pth", ".pt"):
        raise ValueError(f"unknown extension {ext!r} of Inception weights {path!r}; expected "
                         f".npz, .pth or .pt")
    return read_state_dict(path), file_sha256(path)


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
    ignored = {k for k in state if k in _FC_KEYS or k.endswith(".num_batches_tracked")}
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


def load_inception(path: str | os.PathLike[str], *,
                   batch_size: int = 200) -> FeatureFunction:
    """pool3 features of InceptionV3 with the weights in ``path`` (.npz, .pth or .pt).

    Args:
      path: a pytorch-fid state dict (``fc`` and ``num_batches_tracked`` entries are ignored).
      batch_size: images per forward pass; the network compiles once per batch size.

    Returns:
      A ``FeatureFunction`` of images [N, H, W, 1 or 3] in [-1, 1] -> [N, 2048], named
      ``inception_v3_pool3 sha256:<first 16 hex digits>`` of the weights' SHA-256
      (``read_weights``).
    """
    state, digest = read_weights(path)
    params = _params_from_state_dict(state, os.fspath(path))
    return FeatureFunction(f"inception_v3_pool3 sha256:{digest[:16]}",
                           lambda images: _pool3(params, _preprocess(images)), batch_size)


def logits_weight(path: str | os.PathLike[str]) -> np.ndarray:
    """The 1008-way classifier's weight [2048, 1008] (``fc.weight`` transposed), float64.

    The Inception Score's logits are ``pool3 @ logits_weight``, without ``fc.bias``: the
    TensorFlow graph's ``softmax/logits/MatMul`` that openai/improved-gan's ``inception_score.py``
    reads (torch-fidelity's ``logits_unbiased``).
    """
    state, _ = read_weights(path)
    if state.get("fc.weight", np.zeros(0)).shape != (1008, 2048):
        raise ValueError(f"the Inception weights {path!r} have no fc.weight [1008, 2048], which "
                         f"the Inception Score needs")
    return np.asarray(state["fc.weight"], np.float64).T
