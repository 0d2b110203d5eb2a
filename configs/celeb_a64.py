"""CelebA at 64x64 (centre crop 140, resize): Ho et al.'s 256x256 recipe scaled to 64x64."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "celeb_a"
    config.data.random_flip = True
    config.model.channel_mults = (1, 2, 2, 2, 4)
    config.model.dropout = 0.0
    config.training.batch_size = 64
    config.training.num_steps = 500_000
    config.optim.learning_rate = 2e-5
    return config
