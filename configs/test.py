"""A tiny config for tests: trains a few steps in seconds on CPU."""

from configs import fashion_mnist


def get_config():
    config = fashion_mnist.get_config()
    config.data.train_split = "train[:512]"
    config.model.base_channels = 8
    config.model.channel_mults = (1, 2)
    config.model.attn_resolutions = (14,)
    config.model.num_groups = 4
    config.diffusion.num_timesteps = 20  # linear betas scaled by 1000 / T: x_T is still N(0, I)
    # Ho et al.'s plain setup, not the demo's recipe (tests/test_losses.py covers min_snr).
    config.diffusion.variance = "fixedlarge"
    config.diffusion.loss_weighting = "none"
    config.sampling.sampler = "ddpm"  # ancestral over all T = 20 steps
    config.sampling.num_steps = None
    config.training.batch_size = 8
    config.training.num_steps = 4
    config.training.steps_per_call = 1  # the demo's 4 would not divide the step counts below
    config.training.log_every = 1
    config.training.checkpoint_every = 2
    config.training.sample_every = 4
    config.training.num_preview_samples = 4
    config.training.ema_decay = 0.9
    config.optim.warmup_steps = 2
    return config
