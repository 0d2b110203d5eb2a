"""Models in diffusers' format (Ho et al.'s released ones), and bare parameter files.

    p = pretrained.load("google/ddpm-cifar10-32")  # or a local directory
    images = generate.generate(p, num_samples=16).images  # [16, 32, 32, 3] in [-1, 1]

One module per job: ``config_mapping`` (diffusers' config files <-> ``UNet`` / ``Schedule``),
``tensor_layout`` (tensor names and layouts <-> our parameter tree), ``directory`` (load / save a
diffusers directory or hub repository), ``param_files`` (bare parameter files). Our ``UNet``
computes what ``UNet2DModel`` computes in Ho et al.'s configuration, so the conversion is exact;
tensors are read and written with safetensors' numpy API: torch is not needed.

Export a training workdir (its EMA parameters by default) for diffusers with the command
``python export_pretrained.py --workdir runs/fmnist --out runs/fmnist/diffusers``.
"""

from ddpm_jax.pretrained.config_mapping import (
    CONFIG_NAME,
    NULL_LABEL_KEY,
    SCHEDULER_DEFAULTS,
    SCHEDULER_NAME,
    TARGET_FROM_DIFFUSERS,
    TARGET_TO_DIFFUSERS,
    UNET_DEFAULTS,
    VARIANCE_FROM_DIFFUSERS,
    VARIANCE_TO_DIFFUSERS,
    WEIGHTS_NAME,
    diffusers_betas,
    schedule_from_config,
    scheduler_config,
    unet_config,
    unet_from_config,
)
from ddpm_jax.pretrained.directory import Pretrained, load, save
from ddpm_jax.pretrained.param_files import PARAM_FORMATS, load_params, save_params
from ddpm_jax.pretrained.tensor_layout import params_from_diffusers, params_to_diffusers
