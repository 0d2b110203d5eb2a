"""The project's feature classifier: a small CNN trained on the dataset, its file format, and
its penultimate-layer features.

It suits MNIST-like data; its FIDs are not comparable to the Inception-based ones in papers
(for those, see ``evaluation.inception``).
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import hashlib
import itertools
import json
import os
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm_jax import data
from ddpm_jax.evaluation.batches import leading_batches
from ddpm_jax.evaluation.features import FeatureFunction
from ddpm_jax.data import ImageSource


class Classifier(nn.Module):
    """A small CNN classifier; its penultimate layer gives the features.

    Attributes:
      num_classes: number of labels.
      channels: widths of the conv stages (``convs_per_stage`` 3x3 convs with ReLU, then a 2x2
        max-pool, each).
      num_features: width of the penultimate (ReLU) layer, F.
      convs_per_stage: convolutions per stage (files saved before it existed: 1).
    """

    num_classes: int
    channels: tuple[int, ...] = (32, 64)
    num_features: int = 128
    convs_per_stage: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] in [-1, 1] -> (logits [B, num_classes], features [B, num_features])."""
        for ch in self.channels:
            for _ in range(self.convs_per_stage):
                x = nn.relu(nn.Conv(ch, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dense(self.num_features)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(features), features


def _accuracy(model: Classifier, params: Any, source: ImageSource, *, batch_size: int) -> float:
    """Fraction of the split that ``model`` labels correctly."""
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    correct = 0
    for _, batch in leading_batches(source, len(source), batch_size=batch_size):
        predicted = np.argmax(logits(params, batch["image"]), axis=-1)
        correct += int(np.sum((predicted == batch["label"]) & batch["mask"]))
    return correct / len(source)


def train_classifier(train_source: ImageSource, test_source: ImageSource, *, steps: int,
                     batch_size: int, seed: int = 0,
                     learning_rate: float = 1e-3) -> tuple[Any, float]:
    """Trains a ``Classifier`` with Adam on cross-entropy, its rate decayed to 0 on a cosine over
    ``steps``; returns its params and test accuracy.

    Args:
      train_source: a labelled split; batches are ``data.train_batch`` of (seed, step).
      test_source: a labelled split of the same image shape, for the accuracy.
      steps: optimisation steps, >= 1.
      batch_size: images per step.
      seed: seed of the initialisation and the data order.
      learning_rate: Adam's initial rate.
    """
    num_classes = train_source.num_classes
    if num_classes is None or test_source.num_classes != num_classes:
        raise ValueError(f"the classifier needs labelled splits with the same classes, got "
                         f"num_classes {num_classes} (train) and {test_source.num_classes} (test)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model = Classifier(num_classes)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    params = model.init(jax.random.key(seed), jnp.zeros((1, *train_source.image_shape)))["params"]
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batches = data.train_iterator(train_source, seed=seed, batch_size=batch_size)
    try:
        for batch in itertools.islice(batches, steps):
            params, opt_state = step(params, opt_state, batch["image"], batch["label"])
    finally:
        batches.close()
    return params, _accuracy(model, params, test_source, batch_size=batch_size)


def save_classifier(path: str, params: Any, *, image_shape: tuple[int, int, int],
                    num_classes: int, provenance: Mapping[str, Any]) -> None:
    """Writes a ``Classifier``'s params, shape and provenance (JSON-able) as one msgpack file."""
    model = Classifier(num_classes)  # train_classifier's architecture
    info = {**provenance, "image_shape": list(image_shape), "num_classes": num_classes,
            "channels": list(model.channels), "num_features": model.num_features,
            "convs_per_stage": model.convs_per_stage}
    payload = {"params": jax.device_get(params), "info": json.dumps(info)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(payload))


def load_classifier(path: str, *, batch_size: int = 500) -> tuple[FeatureFunction, dict]:
    """The penultimate-layer features of a saved classifier, and its info.

    Returns:
      A ``FeatureFunction`` named after the file's SHA-256, so retraining invalidates cached
      reference statistics; and the saved info (provenance, test accuracy, shapes) with
      ``sha256`` added.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no classifier file {path!r}; train one with `python evaluate.py "
                                f"--train_classifier --dataset <name> --classifier {path}`")
    with open(path, "rb") as f:
        blob = f.read()
    payload = flax.serialization.msgpack_restore(blob)
    info = {**json.loads(payload["info"]), "sha256": hashlib.sha256(blob).hexdigest()}
    model = Classifier(info["num_classes"], tuple(info["channels"]), info["num_features"],
                       info.get("convs_per_stage", 1))
    image_shape = tuple(info["image_shape"])
    features = jax.jit(lambda p, x: model.apply({"params": p}, x)[1])

    def fn(images: np.ndarray) -> jax.Array:
        if images.shape[1:] != image_shape:
            raise ValueError(f"images have shape {images.shape[1:]} but the classifier {path!r} "
                             f"was trained on {image_shape}")
        return features(payload["params"], images)

    name = (f"ddpm_jax Classifier penultimate ({info['num_features']}-d) "
            f"sha256:{info['sha256'][:16]}")
    return FeatureFunction(name, fn, batch_size), info
