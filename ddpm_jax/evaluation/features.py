"""Feature networks: the protocol FID / KID use, and a batching wrapper for any function."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any, Protocol

import numpy as np


class FeatureExtractor(Protocol):
    """A feature network: images [N, H, W, C] in [-1, 1] -> features [N, F].

    ``name`` identifies the network and its weights; cached reference statistics are reused only
    when it matches.
    """

    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray:
        ...


@dataclasses.dataclass(frozen=True)
class FeatureFunction:
    """A ``FeatureExtractor`` from any function, applied in fixed-size batches.

    The last batch is padded to ``batch_size``, so a jitted ``fn`` compiles once.

    Attributes:
      name: what the features are, including the weights' identity.
      fn: images float32 [batch_size, H, W, C] in [-1, 1] -> features [batch_size, F].
      batch_size: images per call of ``fn``.
    """

    name: str
    fn: Callable[[np.ndarray], Any]
    batch_size: int = 500

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or not len(images):
            raise ValueError(f"expected images [N, H, W, C] with N >= 1, got {images.shape}")
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - len(chunk), 0)])
            out.append(np.asarray(self.fn(padded))[:len(chunk)])
        return np.concatenate(out)
