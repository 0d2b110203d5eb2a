"""The same U-Net as diffusers' ``UNet2DModel`` in PyTorch (CPU), for ``--compare diffusers``.

The model has Ho et al.'s layout (as in google/ddpm-cifar10-32): one attention head, stride-2
convolutions without padding, sinusoidal embedding without the cos/sin flip. The step does the
work of ``jax_bench.make_train_step``: L_simple, backward, clipped Adam and the EMA update, with
the same switches to take parts out (and Min-SNR-5 weighting in). ``compare_bench.py`` times it
against ours.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch
from diffusers import DDPMScheduler, UNet2DModel

from common import EMA_DECAY, GRAD_CLIP, LEARNING_RATE, MIN_SNR_GAMMA, NUM_TIMESTEPS, unet_fields


def diffusers_unet(config: str) -> tuple[UNet2DModel, tuple[int, int, int]]:
    """(``UNet2DModel`` with the architecture of ``common.MODELS[config]``, image shape HWC)."""
    image_shape, f = unet_fields(config)
    size, _, channels = image_shape
    attention = [size // 2 ** level in f["attn_resolutions"]
                 for level in range(len(f["channel_mults"]))]
    model = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(f["base_channels"] * m for m in f["channel_mults"]),
        layers_per_block=f["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]),
        norm_num_groups=f["num_groups"], norm_eps=1e-6, dropout=f["dropout"],
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)
    return model, image_shape


class DiffusersSteps(NamedTuple):
    """What ``compare_bench`` times: one training step and one forward pass, float32 NCHW."""

    train_step: Callable[[], None]
    forward: Callable[[], None]
    params: int
    threads: int
    torch_version: str


def diffusers_steps(config: str, batch_size: int, *, ema: bool = True, clip: bool = True,
                    draws: bool = True, min_snr: bool = False) -> DiffusersSteps:
    """The diffusers model of ``config`` on a random batch, using every core of this process.

    The switches as in ``jax_bench.make_train_step`` (``clip``: its optimizer's global-norm clip;
    ``min_snr``: its ``loss_weighting='min_snr'``, gamma 5).
    """
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, (height, width, channels) = diffusers_unet(config)
    scheduler = DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    ema_params = [p.detach().clone() for p in model.parameters()]
    x0 = torch.rand(batch_size, channels, height, width) * 2 - 1

    snr = scheduler.alphas_cumprod / (1.0 - scheduler.alphas_cumprod)

    def train_step():
        model.train()
        if draws:
            t = torch.randint(0, NUM_TIMESTEPS, (batch_size,))
            noise = torch.randn_like(x0)
        else:
            t, noise = torch.full((batch_size,), NUM_TIMESTEPS // 2), x0.flip(0)
        error = (model(scheduler.add_noise(x0, noise, t), t).sample - noise) ** 2
        if min_snr:
            error = error.mean(dim=(1, 2, 3)) * snr[t].clamp(max=MIN_SNR_GAMMA) / snr[t]
        loss = error.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        if ema:
            with torch.no_grad():
                for e, p in zip(ema_params, model.parameters()):
                    e.lerp_(p, 1.0 - EMA_DECAY)

    t = torch.full((batch_size,), NUM_TIMESTEPS // 2)

    @torch.no_grad()
    def forward():
        model.eval()
        model(x0, t)

    return DiffusersSteps(train_step, forward, sum(p.numel() for p in model.parameters()),
                          threads, torch.__version__)
