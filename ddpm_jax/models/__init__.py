"""Networks: Ho et al.'s U-Net."""

from ddpm_jax.models.unet import UNet
