"""Models in diffusers' format (Ho et al.'s released ones), and bare parameter files.

    p = pretrained.load("google/ddpm-cifar10-32")  # or a local directory
    images = generate.generate(p, num_samples=16).images  # [16, 32, 32, 3] in [-1, 1]

A diffusers directory holds ``config.json`` (a ``UNet2DModel``),
``diffusion_pytorch_model.safetensors`` and ``scheduler_config.json`` (a ``DDPMScheduler``), at
its root or in ``unet/`` and ``scheduler/`` (a pipeline). Our ``UNet`` computes what
``UNet2DModel`` computes in Ho et al.'s configuration, so the conversion is a renaming and a
transposition of tensors, and exact. A config field we cannot express, a missing, unused or
misshapen tensor is an error naming it, never an approximation.
Tensors are read and written with safetensors' numpy API: torch is not needed.

Export a training workdir (its EMA parameters by default) for diffusers:

    python -m ddpm_jax.pretrained export --workdir runs/fmnist --out runs/fmnist/diffusers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any, Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath
from flax import traverse_util

from ddpm_jax import diffusion
from ddpm_jax.atomic_files import atomic_write
from ddpm_jax.models import UNet
from ddpm_jax.schedules import Schedule, schedule_from_betas

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_NAME = "scheduler_config.json"
PARAM_FORMATS = (".msgpack", ".safetensors")

# UNet2DModel.__init__'s defaults (diffusers 0.42.1, models/unets/unet_2d.py): a field missing
# from config.json means this value. Fields outside this table are ignored, as diffusers does.
UNET_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
    downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0,
    act_fn="silu", attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None,
    norm_eps=1e-5, resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None, num_train_timesteps=None)
# The values of UNet2DModel's fields that our UNet computes exactly.
_UNET_FIXED = dict(
    center_input_sample=(False,), time_embedding_type=("positional",),
    mid_block_type=("UNetMidBlock2D",), mid_block_scale_factor=(1,), downsample_padding=(0,),
    downsample_type=("conv",), upsample_type=("conv",), act_fn=("silu", "swish"),
    norm_eps=(1e-6,), resnet_time_scale_shift=("default",), add_attention=(True,),
    class_embed_type=(None,))
# DDPMScheduler.__init__'s defaults (diffusers 0.42.1, schedulers/scheduling_ddpm.py).
SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
    trained_betas=None, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
    thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
    sample_max_value=1.0, timestep_spacing="leading", steps_offset=0,
    rescale_betas_zero_snr=False)
# diffusers' variance_type -> ours. The *_log forms differ from their plain forms only in how
# diffusers stores the number (at t > 0 they give the same variance); diffusers' own
# fixed_large_log step takes the square root of a log, so it means Glide's max_log, our fixedlarge.
VARIANCE_FROM_DIFFUSERS = dict(fixed_small="fixedsmall", fixed_small_log="fixedsmall",
                               fixed_large="fixedlarge", fixed_large_log="fixedlarge",
                               learned_range="learned_range")
VARIANCE_TO_DIFFUSERS = dict(fixedsmall="fixed_small", fixedlarge="fixed_large",
                             learned_range="learned_range")
TARGET_FROM_DIFFUSERS = dict(epsilon="eps", sample="x0", v_prediction="v")
TARGET_TO_DIFFUSERS = {ours: theirs for theirs, ours in TARGET_FROM_DIFFUSERS.items()}
# diffusers' early attention names, still in some released files (diffusers renames them too).
_LEGACY_ATTENTION = dict(query="to_q", key="to_k", value="to_v", proj_attn="to_out.0")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model ready to sample: network, float32 parameters, schedule and sampler defaults.

    Attributes:
      model: the U-Net.
      params: its Flax parameter pytree (what ``model.apply({"params": params}, ...)`` takes).
      schedule: the diffusion schedule the model was trained with.
      image_shape: [H, W, C] the model was trained on (attention sits at fixed heights).
      variance: ``'fixedlarge'``, ``'fixedsmall'`` or ``'learned_range'``.
      target: what the network predicts: ``'eps'``, ``'x0'`` or ``'v'``.
      clip_x0: whether sampling clips the x_0 prediction to [-1, 1].
      source: the directory or hub id it was loaded from, if any.
    """

    model: UNet
    params: Any
    schedule: Schedule
    image_shape: tuple[int, int, int]
    variance: str = "fixedlarge"
    target: str = "eps"
    clip_x0: bool = True
    source: str | None = None


def _unsupported(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{field}={value!r} cannot be expressed by ddpm_jax; expected {expected}")


# ---------------------------------------------------------------------------------------------
# Configs.


def unet_from_config(config: dict[str, Any]) -> tuple[UNet, tuple[int, int, int]]:
    """Our ``UNet`` and the image shape [H, W, C] of a ``UNet2DModel`` config.json's fields."""
    c = {**UNET_DEFAULTS, **{k: v for k, v in config.items() if k in UNET_DEFAULTS}}
    for field, allowed in _UNET_FIXED.items():
        if c[field] not in allowed:
            raise _unsupported(f"{CONFIG_NAME} field {field}", c[field],
                               " or ".join(map(repr, allowed)))
    size = c["sample_size"]
    if size is None:
        raise ValueError(f"{CONFIG_NAME} field sample_size is null; the image size is needed")
    height, width = (size, size) if isinstance(size, int) else size
    channels = list(c["block_out_channels"])
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if not (len(channels) == len(down) == len(up)):
        raise ValueError(f"{CONFIG_NAME}: block_out_channels, down_block_types and up_block_types "
                         f"have lengths {len(channels)}, {len(down)}, {len(up)}; expected equal")
    base = channels[0]
    if any(ch % base for ch in channels):
        raise _unsupported(f"{CONFIG_NAME} field block_out_channels", channels,
                           f"multiples of the first, {base}")
    levels = len(channels)
    if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
        raise ValueError(f"{CONFIG_NAME}: sample_size {size} is not divisible by "
                         f"2^(levels - 1) = {2 ** (levels - 1)}")
    attn_levels = []
    for i, kind in enumerate(down):
        if kind not in ("DownBlock2D", "AttnDownBlock2D"):
            raise _unsupported(f"{CONFIG_NAME} field down_block_types[{i}]", kind,
                               "'DownBlock2D' or 'AttnDownBlock2D'")
        if kind == "AttnDownBlock2D":
            attn_levels.append(i)
    for i, kind in enumerate(up):
        expected = "AttnUpBlock2D" if levels - 1 - i in attn_levels else "UpBlock2D"
        if kind != expected:
            raise _unsupported(f"{CONFIG_NAME} field up_block_types[{i}]", kind,
                               f"{expected!r}, the mirror of down_block_types[{levels - 1 - i}]")
    head_dim = c["attention_head_dim"]
    attn_channels = {channels[i] for i in attn_levels} | {channels[-1]}  # the middle attends too
    if head_dim is not None and attn_channels != {head_dim}:
        raise _unsupported(f"{CONFIG_NAME} field attention_head_dim", head_dim,
                           f"null or the channels of every attention layer {sorted(attn_channels)}"
                           " (ddpm_jax's attention has a single head)")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        raise _unsupported(f"{CONFIG_NAME} field attn_norm_num_groups",
                           c["attn_norm_num_groups"], "null or norm_num_groups")
    if c["time_embedding_dim"] not in (None, 4 * base):
        raise _unsupported(f"{CONFIG_NAME} field time_embedding_dim", c["time_embedding_dim"],
                           f"null or 4 * block_out_channels[0] = {4 * base}")
    num_class_embeds = c["num_class_embeds"]
    model = UNet(
        base_channels=base, channel_mults=tuple(ch // base for ch in channels),
        num_res_blocks=c["layers_per_block"],
        attn_resolutions=tuple(height // 2 ** i for i in attn_levels), dropout=c["dropout"],
        num_groups=c["norm_num_groups"], out_channels=c["out_channels"],
        num_classes=None if num_class_embeds is None else num_class_embeds - 1,
        resample_with_conv=True, flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
        freq_shift=float(c["freq_shift"]))
    return model, (height, width, c["in_channels"])


def unet_config(model: UNet, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The ``UNet2DModel`` config.json of ``model`` for images of ``image_shape`` [H, W, C]."""
    if not model.resample_with_conv:
        raise _unsupported("UNet field resample_with_conv", False,
                           "True (diffusers' UNet2DModel always resamples with convolutions)")
    height, width, in_channels = image_shape
    levels = len(model.channel_mults)
    attn = [height // 2 ** i in model.attn_resolutions for i in range(levels)]
    freq_shift = int(model.freq_shift) if float(model.freq_shift).is_integer() else model.freq_shift
    return dict(
        _class_name="UNet2DModel", sample_size=height if height == width else [height, width],
        in_channels=in_channels, out_channels=model.out_channels or in_channels,
        center_input_sample=False, time_embedding_type="positional", time_embedding_dim=None,
        freq_shift=freq_shift, flip_sin_to_cos=model.flip_sin_to_cos,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        mid_block_type="UNetMidBlock2D",
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        block_out_channels=[model.base_channels * m for m in model.channel_mults],
        layers_per_block=model.num_res_blocks, mid_block_scale_factor=1, downsample_padding=0,
        downsample_type="conv", upsample_type="conv", dropout=model.dropout, act_fn="silu",
        attention_head_dim=None, norm_num_groups=model.num_groups, attn_norm_num_groups=None,
        norm_eps=1e-6, resnet_time_scale_shift="default", add_attention=True,
        class_embed_type=None,
        num_class_embeds=None if model.num_classes is None else model.num_classes + 1)


def diffusers_betas(kind: str, num_timesteps: int, *, beta_start: float,
                    beta_end: float) -> np.ndarray:
    """The float64 betas [T] of ``DDPMScheduler(beta_schedule=kind)`` (diffusers 0.42.1,
    schedulers/scheduling_ddpm.py, ``__init__`` and ``betas_for_alpha_bar``), which diffusers
    computes in float32."""
    if kind == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if kind == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps) ** 2
    if kind == "squaredcos_cap_v2":
        alpha_bar = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
        u = np.arange(num_timesteps, dtype=np.float64) / num_timesteps
        return np.minimum(1 - alpha_bar(u + 1 / num_timesteps) / alpha_bar(u), 0.999)
    if kind == "sigmoid":  # GeoDiff's
        return 1 / (1 + np.exp(-np.linspace(-6, 6, num_timesteps))) * (
            beta_end - beta_start) + beta_start
    raise _unsupported(f"{SCHEDULER_NAME} field beta_schedule", kind,
                       "'linear', 'scaled_linear', 'squaredcos_cap_v2' or 'sigmoid'")


def schedule_from_config(config: dict[str, Any]) -> tuple[Schedule, dict[str, Any]]:
    """The schedule and sampler defaults (``variance``, ``target``, ``clip_x0``) of a
    ``DDPMScheduler`` scheduler_config.json's fields.

    ``timestep_spacing`` and ``steps_offset`` only choose diffusers' inference timesteps (ours
    are the sampler's ``num_steps``); they are ignored.
    """
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if k in SCHEDULER_DEFAULTS}}
    where = lambda field: f"{SCHEDULER_NAME} field {field}"
    if config.get("_class_name", "DDPMScheduler") != "DDPMScheduler":
        raise _unsupported(where("_class_name"), config["_class_name"], "'DDPMScheduler'")
    for field, allowed in (("thresholding", False), ("rescale_betas_zero_snr", False)):
        if c[field] != allowed:
            raise _unsupported(where(field), c[field], repr(allowed))
    if c["clip_sample"] and c["clip_sample_range"] != 1.0:
        raise _unsupported(where("clip_sample_range"), c["clip_sample_range"],
                           "1.0 (x_0 is clipped to [-1, 1])")
    if c["variance_type"] not in VARIANCE_FROM_DIFFUSERS:
        raise _unsupported(where("variance_type"), c["variance_type"],
                           f"one of {sorted(VARIANCE_FROM_DIFFUSERS)}")
    if c["prediction_type"] not in TARGET_FROM_DIFFUSERS:
        raise _unsupported(where("prediction_type"), c["prediction_type"],
                           f"one of {sorted(TARGET_FROM_DIFFUSERS)}")
    num_timesteps = c["num_train_timesteps"]
    if c["trained_betas"] is not None:
        betas = np.asarray(c["trained_betas"], np.float64)
        if betas.shape != (num_timesteps,):
            raise ValueError(f"{SCHEDULER_NAME}: trained_betas has {betas.size} values but "
                             f"num_train_timesteps is {num_timesteps}")
    else:
        betas = diffusers_betas(c["beta_schedule"], num_timesteps, beta_start=c["beta_start"],
                                beta_end=c["beta_end"])
    defaults = dict(variance=VARIANCE_FROM_DIFFUSERS[c["variance_type"]],
                    target=TARGET_FROM_DIFFUSERS[c["prediction_type"]],
                    clip_x0=bool(c["clip_sample"]))
    return schedule_from_betas(betas), defaults


def scheduler_config(schedule: Schedule, *, variance: str, target: str,
                     clip_x0: bool) -> dict[str, Any]:
    """The ``DDPMScheduler`` scheduler_config.json of ``schedule`` and the sampler defaults.

    The schedule is named (``linear``, ``squaredcos_cap_v2``) when diffusers' formula gives its
    betas to float32 precision, and listed as ``trained_betas`` otherwise.
    """
    diffusion.check_choice("variance", variance, diffusion.VARIANCES)
    diffusion.check_choice("target", target, diffusion.TARGETS)
    betas = np.asarray(schedule.betas, np.float64)
    num_timesteps = betas.size
    named = dict(trained_betas=betas.astype(np.float32).tolist())
    start, end = (float(f"{b:.6g}") for b in (betas[0], betas[-1]))
    for kind in ("linear", "squaredcos_cap_v2"):
        if np.allclose(diffusers_betas(kind, num_timesteps, beta_start=start, beta_end=end),
                       betas, rtol=1e-6, atol=0):
            named = dict(beta_schedule=kind, trained_betas=None)
            break
    return dict(
        _class_name="DDPMScheduler", num_train_timesteps=num_timesteps, beta_start=start,
        beta_end=end, **{"beta_schedule": "linear", **named},
        variance_type=VARIANCE_TO_DIFFUSERS[variance], clip_sample=bool(clip_x0),
        prediction_type=TARGET_TO_DIFFUSERS[target], thresholding=False, clip_sample_range=1.0)


def _check_out_channels(model: UNet, image_shape: tuple[int, int, int], variance: str) -> None:
    in_channels = image_shape[-1]
    expected = 2 * in_channels if variance == "learned_range" else in_channels
    if (model.out_channels or in_channels) != expected:
        raise ValueError(f"out_channels={model.out_channels} does not fit variance={variance!r} "
                         f"with {in_channels} input channels; expected {expected}")


# ---------------------------------------------------------------------------------------------
# Tensors: diffusers' names and PyTorch layouts <-> our Flax parameter tree.

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


def _match(found: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
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
    _match({k: v.shape for k, v in renamed.items()},
           {k: entry[3] for k, entry in table.items()}, where)
    flat = {path: jnp.asarray(to_ours(renamed[name]), jnp.float32)
            for name, (path, _, to_ours, _) in table.items()}
    return traverse_util.unflatten_dict(flat)


def params_to_diffusers(model: UNet, image_shape: tuple[int, int, int],
                        params: Any) -> dict[str, np.ndarray]:
    """The ``UNet2DModel`` state dict (float32 numpy arrays) of our parameter tree."""
    table, shapes = _tensor_table(model, image_shape)
    flat = traverse_util.flatten_dict(flax.serialization.to_state_dict(params))
    _match({"/".join(k): np.shape(v) for k, v in flat.items()},
           {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(shapes).items()},
           "params")
    return {name: np.ascontiguousarray(to_theirs(np.asarray(flat[path], np.float32)))
            for name, (path, to_theirs, _, _) in table.items()}


# ---------------------------------------------------------------------------------------------
# Directories.

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, SCHEDULER_NAME, f"unet/{CONFIG_NAME}",
              f"unet/{WEIGHTS_NAME}", f"scheduler/{SCHEDULER_NAME}"]


def _resolve(path_or_id: str) -> epath.Path:
    """A local directory, or the snapshot of a Hugging Face Hub repository."""
    path = epath.Path(path_or_id)
    if path.is_dir():
        return path
    if not _HUB_ID.match(str(path_or_id)):
        raise FileNotFoundError(f"{path_or_id!r} is not a directory (nor a hub id owner/name)")
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(
            f"{path_or_id!r} is not a local directory; to download it from the Hugging Face Hub "
            f"install huggingface_hub (pip install 'ddpm_jax[hub]'), or pass a directory holding "
            f"{CONFIG_NAME}, {WEIGHTS_NAME} and {SCHEDULER_NAME}") from None
    try:
        return epath.Path(huggingface_hub.snapshot_download(path_or_id,
                                                            allow_patterns=_HUB_FILES))
    except Exception as e:  # the hub's errors are many; the message is what matters here
        raise FileNotFoundError(f"{path_or_id!r} is neither a local directory nor a "
                                f"downloadable hub repository: {e}") from None


def _read_json(path: epath.Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text())


def load(path_or_id: str) -> Pretrained:
    """Loads a diffusers ``UNet2DModel`` + ``DDPMScheduler`` directory or hub repository.

    Args:
      path_or_id: a directory (files at its root, or in ``unet/`` and ``scheduler/``), or a
        Hugging Face Hub id such as ``google/ddpm-cifar10-32`` (needs ``huggingface_hub``).

    Returns:
      A ``Pretrained`` with float32 parameters.

    Raises:
      ValueError: a config field we cannot express, or a missing, unused or misshapen tensor.
      FileNotFoundError: no such directory or file. ImportError: a hub id without
        ``huggingface_hub``.
    """
    root = _resolve(path_or_id)
    nested = (root / "unet" / CONFIG_NAME).exists()
    unet_dir, scheduler_dir = (root / "unet", root / "scheduler") if nested else (root, root)
    model, image_shape = unet_from_config(_read_json(unet_dir / CONFIG_NAME))
    schedule, defaults = schedule_from_config(_read_json(scheduler_dir / SCHEDULER_NAME))
    _check_out_channels(model, image_shape, defaults["variance"])
    weights = unet_dir / WEIGHTS_NAME
    if not weights.exists():
        hint = (" (only safetensors is read: convert the .bin with diffusers, "
                "UNet2DModel.from_pretrained(d).save_pretrained(d))"
                if (unet_dir / "diffusion_pytorch_model.bin").exists() else "")
        raise FileNotFoundError(f"{weights} does not exist{hint}")
    tensors = safetensors.numpy.load(weights.read_bytes())
    params = params_from_diffusers(model, image_shape, tensors, where=str(weights))
    return Pretrained(model=model, params=params, schedule=schedule, image_shape=image_shape,
                      source=str(path_or_id), **defaults)


def save(path: str, model: UNet, params: Any, schedule: Schedule, *,
         image_shape: tuple[int, int, int], variance: str = "fixedlarge", target: str = "eps",
         clip_x0: bool = True) -> None:
    """Writes a diffusers directory: ``UNet2DModel.from_pretrained(path)`` and
    ``DDPMScheduler.from_pretrained(path)`` then compute what ``model`` and our sampler compute.

    Everything is checked before the first file is written.

    Args:
      path: the output directory (created).
      model, params: the U-Net and its parameter tree.
      schedule: its diffusion schedule.
      image_shape: [H, W, C] of its images (diffusers places attention by block, not height).
      variance, target, clip_x0: the sampler defaults to record.
    """
    out = epath.Path(path)
    files = {
        CONFIG_NAME: json.dumps(unet_config(model, image_shape), indent=2).encode(),
        SCHEDULER_NAME: json.dumps(scheduler_config(schedule, variance=variance, target=target,
                                                    clip_x0=clip_x0), indent=2).encode(),
    }
    _check_out_channels(model, image_shape, variance)
    files[WEIGHTS_NAME] = safetensors.numpy.save(params_to_diffusers(model, image_shape, params),
                                                 metadata={"format": "pt"})
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_write(out / name) as f:
            f.write(data)


# ---------------------------------------------------------------------------------------------
# Bare parameter files.


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
        _match({k: np.shape(v) for k, v in flat.items()},
               {k: np.shape(v) for k, v in expected.items()}, str(path))
        flat = {k: np.asarray(v, expected[k].dtype) for k, v in flat.items()}
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> None:
    """``python -m ddpm_jax.pretrained export --workdir W --out DIR [--step N] [--params raw]``."""
    parser = argparse.ArgumentParser(prog="python -m ddpm_jax.pretrained")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a training workdir in diffusers' format")
    export.add_argument("--workdir", required=True, help="training workdir (train.py --workdir)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    export.add_argument("--params", default="ema", choices=["ema", "raw"])
    args = parser.parse_args(argv)
    # The command sits above generate.py (which reads workdirs and imports this module), so it
    # imports it here rather than at the top.
    from ddpm_jax import generate
    try:
        trained = generate.load_workdir(args.workdir, step=args.step)
        save(args.out, trained.model, trained.chosen_params(args.params), trained.schedule,
             image_shape=trained.image_shape, variance=trained.config.diffusion.variance,
             target=trained.config.diffusion.target, clip_x0=trained.config.sampling.clip_x0)
    except (ValueError, OSError) as e:  # OSError: files, unreadable checkpoints
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    print(args.out)


if __name__ == "__main__":
    main()
