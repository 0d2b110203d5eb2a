"""The CPU demo: Fashion-MNIST 28x28 on two CPU cores in about 15 minutes."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "fashion_mnist"
    config.data.random_flip = False
    config.model.base_channels = 32
    config.model.channel_mults = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (7,)
    config.model.dropout = 0.0
    config.model.num_groups = 8
    config.training.batch_size = 32
    config.training.num_steps = 1000
    config.training.log_every = 50
    config.training.checkpoint_every = 250
    config.training.sample_every = 0  # no previews during the demo; sample.py runs after
    config.training.num_preview_samples = 16
    config.training.ema_decay = 0.995
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    return config
