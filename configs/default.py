"""Defaults shared by every config: Ho et al.'s CIFAR-10 recipe. Other configs start from it."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"  # any tfds image dataset, or "folder"
    config.data.train_split = "train"  # tfds split; slices like "train[:10%]" work
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds's default
    config.data.image_size = ml_collections.config_dict.placeholder(int)  # None: native size
    config.data.random_flip = True
    # name="folder": every image under data.path (see the README's "Your own images").
    config.data.path = ml_collections.config_dict.placeholder(str)
    config.data.channels = ml_collections.config_dict.placeholder(int)  # folders: 3 (RGB) or 1
    config.data.labels_from_subdirs = False  # folders: DIR/<class>/... gives class labels
    config.data.cache_dir = ml_collections.config_dict.placeholder(str)  # None: in data_dir
    config.data.skip_bad_images = False  # folders: skip undecodable files instead of failing

    config.model = ml_collections.ConfigDict()  # ddpm_jax.models.UNet fields
    config.model.base_channels = 128
    config.model.channel_mults = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.num_groups = 32
    config.model.num_classes = ml_collections.config_dict.placeholder(int)  # None: unconditional
    config.model.resample_with_conv = True
    config.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.target = "eps"
    config.diffusion.variance = "fixedlarge"  # also what the sampler uses
    config.diffusion.loss = "simple"
    config.diffusion.vlb_weight = 1e-3  # lambda of the hybrid loss (VLB in bits/dim x T)
    config.diffusion.loss_weighting = "none"  # or "min_snr" (Hang et al. 2023)
    config.diffusion.min_snr_gamma = 5.0  # gamma of the min_snr weighting

    config.training = ml_collections.ConfigDict()
    config.training.batch_size = 128  # global, over all devices and processes
    config.training.num_steps = 800_000
    config.training.steps_per_call = 1  # K updates per jitted call; the *_every are multiples
    # A micro-batches of batch_size / A per update, gradients averaged (memory of B / A)
    config.training.grad_accum_steps = 1
    config.training.log_every = 100  # metrics are averaged over these steps
    config.training.checkpoint_every = 10_000
    config.training.max_to_keep = 3
    config.training.async_checkpoints = True  # write while training continues; the last waits
    config.training.sample_every = 50_000
    config.training.num_preview_samples = 64
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step))
    config.training.label_dropout = 0.1  # null-label rate for classifier-free guidance

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    # 0: constant after the warm-up (Ho et al.); N: cosine decay to end_learning_rate at step N
    # (warm-up included). It lost to a constant rate in the demo's 1000-step ablation (README).
    config.optim.decay_steps = 0
    config.optim.end_learning_rate = 0.0
    config.optim.grad_clip = 1.0  # global norm; 0 disables
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8

    config.sampling = ml_collections.ConfigDict()  # previews and sample.py's defaults
    config.sampling.sampler = "ddpm"  # ddpm | ddim | dpmpp_2m | dpmpp_2m_sde | heun
    config.sampling.num_steps = ml_collections.config_dict.placeholder(int)  # None: all T
    # time | logsnr | karras; None: the sampler's recommendation (sampling.default_spacing:
    # logsnr for dpmpp_2m*, karras for heun, time for ddpm / ddim)
    config.sampling.spacing = ml_collections.config_dict.placeholder(str)
    config.sampling.eta = 0.0  # ddim only
    config.sampling.clip_x0 = True  # images in [-1, 1]; False for unbounded data
    config.sampling.guidance_scale = 1.0  # conditional models: 1 plain, 0 unconditional, >1 guided
    return config
