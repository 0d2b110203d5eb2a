"""Your own images: `--config.data.path=DIR` (every image under it, recursive), 64x64 RGB by
default; `--config.data.image_size=32` is about 3x cheaper per step.

Sized for a CPU or one GPU: a 1.5M-parameter U-Net (Ho et al.'s CIFAR-10 layout at a quarter of
the width, one res block per level, attention at 16x16, which exists at 32 and 64 pixels) at
batch 32, with the CPU demo's recipe (Min-SNR-5 weighting, fixedsmall variance, SDE-DPM-Solver++(2M)
in 50 steps on log-SNR spacing). Measured on 2 CPU cores shared with other jobs (load average
10, so indicative; an idle machine is faster): 3.1 s per step at 32 px, 10.2 s at 64 px, after a
~50 s compile; 1.6 / 2.3 GiB peak memory. XLA's estimate of one step's device memory is
0.4 GiB at 32 px, 1.2 GiB at 64 px: a GPU has room to widen it
(`--config.model.base_channels=64` or 128, `--config.training.batch_size=64`). Class subfolders:
add `--config.data.labels_from_subdirs=True --config.model.num_classes=K`.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "folder"
    config.data.image_size = 64
    config.data.random_flip = True
    config.model.base_channels = 32
    config.model.channel_mults = (1, 2, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.num_groups = 8
    config.diffusion.variance = "fixedsmall"
    config.diffusion.loss_weighting = "min_snr"
    config.training.batch_size = 32
    config.training.num_steps = 20_000
    config.training.log_every = 100
    config.training.checkpoint_every = 1_000
    config.training.sample_every = 1_000
    config.training.num_preview_samples = 16
    config.training.ema_decay = 0.999
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 500
    config.sampling.sampler = "dpmpp_2m_sde"
    config.sampling.num_steps = 50
    return config
