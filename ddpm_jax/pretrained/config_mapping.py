"""diffusers' config files <-> our ``UNet`` and ``Schedule``.

``config.json`` describes a ``UNet2DModel``, ``scheduler_config.json`` a ``DDPMScheduler``. A field
we cannot express is an error naming it, never an approximation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.models import UNet
from ddpm_jax.schedules import Schedule, schedule_from_betas

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_NAME = "scheduler_config.json"
# Our exports of class-conditional models record that their last class embedding is the null
# label of classifier-free guidance (diffusers ignores config keys starting with '_'). Without
# it, num_class_embeds = N means N real classes and no null label.
NULL_LABEL_KEY = "_ddpm_jax_null_label"

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


def _unsupported(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{field}={value!r} cannot be expressed by ddpm_jax; expected {expected}")


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
    null_label = num_class_embeds is not None and bool(config.get(NULL_LABEL_KEY, False))
    if null_label and num_class_embeds < 2:
        raise ValueError(f"{CONFIG_NAME}: num_class_embeds={num_class_embeds} with "
                         f"{NULL_LABEL_KEY}=true leaves no class; expected at least 2")
    model = UNet(
        base_channels=base, channel_mults=tuple(ch // base for ch in channels),
        num_res_blocks=c["layers_per_block"],
        attn_resolutions=tuple(height // 2 ** i for i in attn_levels), dropout=c["dropout"],
        num_groups=c["norm_num_groups"], out_channels=c["out_channels"],
        num_classes=None if num_class_embeds is None else num_class_embeds - null_label,
        has_null_label=null_label or num_class_embeds is None,
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
        class_embed_type=None, num_class_embeds=model.num_labels,
        **({} if model.num_classes is None else {NULL_LABEL_KEY: model.has_null_label}))


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


def check_out_channels(model: UNet, image_shape: tuple[int, int, int], variance: str) -> None:
    """Raises a ValueError if ``model``'s output channels do not fit ``variance``."""
    in_channels = image_shape[-1]
    expected = 2 * in_channels if variance == "learned_range" else in_channels
    if (model.out_channels or in_channels) != expected:
        raise ValueError(f"out_channels={model.out_channels} does not fit variance={variance!r} "
                         f"with {in_channels} input channels; expected {expected}")
