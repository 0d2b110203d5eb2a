"""MNIST at 28x28: the Fashion-MNIST demo's model and recipe, on the digits."""

from configs import fashion_mnist


def get_config():
    config = fashion_mnist.get_config()
    config.data.name = "mnist"
    return config
