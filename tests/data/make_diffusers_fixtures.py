"""Writes the diffusers fixtures of tests/test_pretrained.py with diffusers itself.

    pip install '.[bench]' && python tests/data/make_diffusers_fixtures.py

Two tiny ``UNet2DModel`` + ``DDPMScheduler`` directories with random non-zero weights, saved with
``save_pretrained``, and each model's outputs for a fixed input and timesteps (``outputs.npz``):

- ``ho_tiny``: Ho et al.'s CIFAR-10 configuration (as in google/ddpm-cifar10-32) scaled down:
  32x32x3, channels 8 and 16, attention where the map is 16 high, 2 layers per block.
- ``ho256_layout``: the 256x256 models' block layout (google/ddpm-celebahq-256: six levels,
  multipliers 1,1,2,2,4,4, attention at 16) with 4 base channels. Only every 16th pixel of its
  output is kept, with the per-channel mean, to stay small.

Weights are stored as float16 to halve the files; their values are float16-exact, so the float32
outputs are what the stored weights compute.

The inputs are ``numpy.random.RandomState(seed).randn``, stable by NumPy's compatibility policy.
"""

import os

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

HERE = os.path.dirname(os.path.abspath(__file__))
HO = dict(act_fn="silu", attention_head_dim=None, center_input_sample=False, downsample_padding=0,
          flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, time_embedding_type="positional",
          layers_per_block=2, mid_block_scale_factor=1)


def randomize(model: UNet2DModel, seed: int, dtype) -> None:
    """Random values for every parameter (norm scales around 1), rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            value = 1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise
            p.copy_(value.to(dtype).to(torch.float32))


def outputs(model: UNet2DModel, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()


def ho_tiny() -> None:
    out = os.path.join(HERE, "ho_tiny")
    model = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, **HO)
    randomize(model, 0, torch.float16)
    scheduler = DDPMScheduler(num_train_timesteps=20, beta_schedule="linear", beta_start=1e-3,
                              beta_end=0.2, variance_type="fixed_large", clip_sample=True)
    model.to(torch.float16).save_pretrained(out)
    model.to(torch.float32)
    scheduler.save_pretrained(out)
    x = np.random.RandomState(0).randn(3, 3, 32, 32).astype(np.float32)
    t = np.array([0, 7, 19])
    np.savez(os.path.join(out, "outputs.npz"), t=t, out=outputs(model, x, t),
             betas=scheduler.betas.numpy(), alphas_cumprod=scheduler.alphas_cumprod.numpy())


def ho256_layout() -> None:
    out = os.path.join(HERE, "ho256_layout")
    model = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, block_out_channels=(4, 4, 8, 8, 16, 16),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4, norm_num_groups=2,
        **HO)
    randomize(model, 1, torch.float16)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              variance_type="fixed_small", prediction_type="v_prediction",
                              clip_sample=False)
    model.to(torch.float16).save_pretrained(out)
    model.to(torch.float32)
    scheduler.save_pretrained(out)
    x = np.random.RandomState(1).randn(1, 3, 256, 256).astype(np.float32)
    t = np.array([500])
    full = outputs(model, x, t)
    np.savez(os.path.join(out, "outputs.npz"), t=t, out_every_16=full[:, :, ::16, ::16],
             channel_mean=full.mean(axis=(0, 2, 3)),
             betas=scheduler.betas.numpy(), alphas_cumprod=scheduler.alphas_cumprod.numpy())


if __name__ == "__main__":
    ho_tiny()
    ho256_layout()
