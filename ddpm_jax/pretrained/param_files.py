"""Bare parameter files: a parameter pytree as ``.safetensors`` or ``.msgpack``."""

from __future__ import annotations

from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath
from flax import traverse_util

from ddpm_jax.atomic_files import atomic_write
from ddpm_jax.pretrained.tensor_layout import check_tensors

PARAM_FORMATS = (".msgpack", ".safetensors")


def _check_format(path: epath.Path) -> str:
    if path.suffix not in PARAM_FORMATS:
        raise ValueError(f"unknown parameter file extension {path.suffix!r} of {path}; expected "
                         f"one of {list(PARAM_FORMATS)}")
    return path.suffix


def save_params(path: str, params: Any) -> None:
    """Writes a parameter pytree (nested dicts of arrays) as ``.safetensors`` (tensors named by
    their '/'-joined path) or ``.msgpack`` (flax.serialization), atomically."""
    path = epath.Path(path)
    fmt = _check_format(path)
    tree = jax.tree.map(np.asarray, flax.serialization.to_state_dict(params))
    if fmt == ".safetensors":
        flat = traverse_util.flatten_dict(tree, sep="/")
        data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in flat.items()})
    else:
        data = flax.serialization.msgpack_serialize(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(data)


def load_params(path: str, *, like: Any = None) -> Any:
    """Reads a file written by ``save_params``.

    Args:
      path: a ``.safetensors`` or ``.msgpack`` file.
      like: optional template pytree (e.g. ``jax.eval_shape`` of ``model.init``): then every
        tensor must exist with its shape, none may be left over, and each takes its dtype.

    Returns:
      The parameter pytree of ``jax.Array`` leaves (nested dicts).
    """
    path = epath.Path(path)
    fmt = _check_format(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if fmt == ".safetensors":
        flat = safetensors.numpy.load(path.read_bytes())
    else:
        flat = traverse_util.flatten_dict(flax.serialization.msgpack_restore(path.read_bytes()),
                                          sep="/")
    if like is not None:
        expected = traverse_util.flatten_dict(flax.serialization.to_state_dict(like), sep="/")
        check_tensors({k: np.shape(v) for k, v in flat.items()},
               {k: np.shape(v) for k, v in expected.items()}, str(path))
        flat = {k: np.asarray(v, expected[k].dtype) for k, v in flat.items()}
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
