"""Ho et al. (2020) on CIFAR-10, exactly: 35.7M parameters, T=1000 linear, batch 128, 800k steps."""

from configs import default


def get_config():
    return default.get_config()
