"""diffusers model directories (local, or a Hugging Face Hub repository): load and save.

A diffusers directory holds ``config.json`` (a ``UNet2DModel``),
``diffusion_pytorch_model.safetensors`` and ``scheduler_config.json`` (a ``DDPMScheduler``), at
its root or in ``unet/`` and ``scheduler/`` (a pipeline).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import safetensors.numpy
from etils import epath

from ddpm_jax.atomic_files import atomic_write
from ddpm_jax.models import UNet
from ddpm_jax.pretrained.config_mapping import (
    CONFIG_NAME, SCHEDULER_NAME, WEIGHTS_NAME, check_out_channels, scheduler_config,
    schedule_from_config, unet_config, unet_from_config)
from ddpm_jax.pretrained.tensor_layout import params_from_diffusers, params_to_diffusers
from ddpm_jax.schedules import Schedule


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
    check_out_channels(model, image_shape, defaults["variance"])
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
    check_out_channels(model, image_shape, variance)
    files[WEIGHTS_NAME] = safetensors.numpy.save(params_to_diffusers(model, image_shape, params),
                                                 metadata={"format": "pt"})
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_write(out / name) as f:
            f.write(data)
