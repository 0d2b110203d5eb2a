"""diffusers' tensor names and PyTorch layouts <-> our Flax parameter tree.

The conversion is a renaming and a transposition of tensors, and exact: a missing, unused or
misshapen tensor is an error naming it.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ddpm_jax.models import UNet
from ddpm_jax.pretrained.config_mapping import WEIGHTS_NAME

# diffusers' early attention names, still in some released files (diffusers renames them too).
_LEGACY_ATTENTION = dict(query="to_q", key="to_k", value="to_v", proj_attn="to_out.0")

_Layer = tuple[str, tuple[str, ...], str]  # (diffusers module, Flax module path, kind)
# kind -> [(diffusers tensor, Flax parameter, ours -> theirs, theirs -> ours)].
_conv = (lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0))
_dense = (lambda k: k.T, lambda w: w.T)
_shortcut = (lambda k: k.T[:, :, None, None], lambda w: w[:, :, 0, 0].T)  # 1x1 conv <-> Dense
_same = (lambda x: x, lambda x: x)
_TENSORS: dict[str, list[tuple[str, str, Callable, Callable]]] = {
    "conv": [("weight", "kernel", *_conv), ("bias", "bias", *_same)],
    "dense": [("weight", "kernel", *_dense), ("bias", "bias", *_same)],
    "shortcut": [("weight", "kernel", *_shortcut), ("bias", "bias", *_same)],
    "norm": [("weight", "scale", *_same), ("bias", "bias", *_same)],
    "embed": [("weight", "embedding", *_same)],
}


def _resnet(name: str, path: tuple[str, ...], with_shortcut: bool) -> list[_Layer]:
    layers = [(f"{name}.norm1", (*path, "GroupNormSwish_0", "GroupNorm_0"), "norm"),
              (f"{name}.conv1", (*path, "Conv_0"), "conv"),
              (f"{name}.time_emb_proj", (*path, "temb_proj"), "dense"),
              (f"{name}.norm2", (*path, "GroupNormSwish_1", "GroupNorm_0"), "norm"),
              (f"{name}.conv2", (*path, "Conv_1"), "conv")]
    return layers + ([(f"{name}.conv_shortcut", (*path, "nin_shortcut"), "shortcut")]
                     if with_shortcut else [])


def _attention(name: str, path: tuple[str, ...]) -> list[_Layer]:
    return [(f"{name}.group_norm", (*path, "GroupNormSwish_0", "GroupNorm_0"), "norm"),
            *((f"{name}.to_{p}", (*path, p), "dense") for p in "qkv"),
            (f"{name}.to_out.0", (*path, "proj_out"), "dense")]


def _layers(model: UNet, image_shape: tuple[int, int, int], params: dict) -> list[_Layer]:
    """Every layer of ``model`` with its diffusers name, walking the U-Net as ``UNet`` does."""
    counts = dict(ResBlock=0, AttnBlock=0, Downsample=0, Upsample=0)

    def next_name(kind: str) -> str:
        counts[kind] += 1
        return f"{kind}_{counts[kind] - 1}"

    def resnet(name: str, path: str) -> list[_Layer]:
        return _resnet(name, (path,), "nin_shortcut" in params[path])

    height, levels = image_shape[0], len(model.channel_mults)
    layers = [("conv_in", ("conv_in",), "conv"),
              ("time_embedding.linear_1", ("temb_dense0",), "dense"),
              ("time_embedding.linear_2", ("temb_dense1",), "dense")]
    if model.num_classes is not None:
        layers.append(("class_embedding", ("label_emb",), "embed"))
    for level in range(levels):
        block = f"down_blocks.{level}"
        for j in range(model.num_res_blocks):
            layers += resnet(f"{block}.resnets.{j}", next_name("ResBlock"))
            if height // 2 ** level in model.attn_resolutions:
                layers += _attention(f"{block}.attentions.{j}", (next_name("AttnBlock"),))
        if level != levels - 1:
            layers.append((f"{block}.downsamplers.0.conv", (next_name("Downsample"), "Conv_0"),
                           "conv"))
    layers += [*resnet("mid_block.resnets.0", "mid_block1"),
               *_attention("mid_block.attentions.0", ("mid_attn",)),
               *resnet("mid_block.resnets.1", "mid_block2")]
    for i, level in enumerate(reversed(range(levels))):
        block = f"up_blocks.{i}"
        for j in range(model.num_res_blocks + 1):
            layers += resnet(f"{block}.resnets.{j}", next_name("ResBlock"))
            if height // 2 ** level in model.attn_resolutions:
                layers += _attention(f"{block}.attentions.{j}", (next_name("AttnBlock"),))
        if level != 0:
            layers.append((f"{block}.upsamplers.0.conv", (next_name("Upsample"), "Conv_0"),
                           "conv"))
    layers += [("conv_norm_out", ("GroupNormSwish_0", "GroupNorm_0"), "norm"),
               ("conv_out", ("conv_out",), "conv")]
    return layers


def _param_shapes(model: UNet, image_shape: tuple[int, int, int]) -> dict:
    """The shape tree of ``model``'s parameters (nothing is computed)."""
    labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
    return jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *image_shape)), jnp.zeros((1,), jnp.int32),
        labels))["params"]


def _tensor_table(model: UNet, image_shape: tuple[int, int, int]):
    """{diffusers tensor: (Flax path, ours -> theirs, theirs -> ours, their shape)} covering every
    parameter of ``model`` exactly once, and the Flax shape tree."""
    shapes = _param_shapes(model, image_shape)
    flat_shapes = traverse_util.flatten_dict(shapes)
    table = {}
    for module, path, kind in _layers(model, image_shape, shapes):
        for theirs, ours, to_theirs, to_ours in _TENSORS[kind]:
            flax_path = (*path, ours)
            shape = to_theirs(np.empty(flat_shapes[flax_path].shape, np.uint8)).shape
            table[f"{module}.{theirs}"] = (flax_path, to_theirs, to_ours, shape)
    covered = [entry[0] for entry in table.values()]
    assert sorted(covered) == sorted(flat_shapes), "the diffusers mapping misses parameters"
    return table, shapes


def check_tensors(found: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
    """Raises a ValueError naming missing, unused or misshapen tensors (names -> shapes)."""
    show = lambda names: ", ".join(names[:5]) + (f" and {len(names) - 5} more"
                                                  if len(names) > 5 else "")
    missing = sorted(expected.keys() - found.keys())
    if missing:
        raise ValueError(f"{where}: missing tensors {show(missing)} ({len(missing)} of "
                         f"{len(expected)} needed)")
    unused = sorted(found.keys() - expected.keys())
    if unused:
        raise ValueError(f"{where}: unused tensors {show(unused)} (not part of the model "
                         "the config describes)")
    for name in sorted(expected):
        if tuple(found[name]) != tuple(expected[name]):
            raise ValueError(f"{where}: tensor {name} has shape {tuple(found[name])}, expected "
                             f"{tuple(expected[name])}")


def _rename_legacy(name: str) -> str:
    return re.sub(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.",
                  lambda m: f"{m[1]}.{_LEGACY_ATTENTION[m[2]]}.", name)


def params_from_diffusers(model: UNet, image_shape: tuple[int, int, int],
                          tensors: dict[str, np.ndarray], *, where: str = WEIGHTS_NAME) -> Any:
    """Our float32 parameter tree from a ``UNet2DModel`` state dict of numpy arrays."""
    table, _ = _tensor_table(model, image_shape)
    renamed = {_rename_legacy(k): v for k, v in tensors.items()}
    if len(renamed) != len(tensors):  # a file with both the old and the new name of a tensor
        renamed = dict(tensors)
    check_tensors({k: v.shape for k, v in renamed.items()},
           {k: entry[3] for k, entry in table.items()}, where)
    flat = {path: jnp.asarray(to_ours(renamed[name]), jnp.float32)
            for name, (path, _, to_ours, _) in table.items()}
    return traverse_util.unflatten_dict(flat)


def params_to_diffusers(model: UNet, image_shape: tuple[int, int, int],
                        params: Any) -> dict[str, np.ndarray]:
    """The ``UNet2DModel`` state dict (float32 numpy arrays) of our parameter tree."""
    table, shapes = _tensor_table(model, image_shape)
    flat = traverse_util.flatten_dict(flax.serialization.to_state_dict(params))
    check_tensors({"/".join(k): np.shape(v) for k, v in flat.items()},
           {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(shapes).items()},
           "params")
    return {name: np.ascontiguousarray(to_theirs(np.asarray(flat[path], np.float32)))
            for name, (path, to_theirs, _, _) in table.items()}
