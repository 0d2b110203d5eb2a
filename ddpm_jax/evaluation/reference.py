"""Reference statistics: features of a split of real images and their moments, cached."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from ddpm_jax import data as input_pipeline
from ddpm_jax.evaluation.batches import check_num_examples, leading_batches
from ddpm_jax.evaluation.features import FeatureExtractor
from ddpm_jax.evaluation.scores import feature_statistics
from ddpm_jax.data import ImageSource


def split_features(extractor: FeatureExtractor, source: ImageSource, *,
                   num_examples: int | None = None, batch_size: int = 500) -> np.ndarray:
    """Features [N, F] of (the first ``num_examples`` of) a split of real images."""
    n = check_num_examples(source, num_examples)
    parts = [extractor(batch["image"])[batch["mask"]]
             for _, batch in leading_batches(source, n, batch_size=min(batch_size, n))]
    return np.concatenate(parts)[:n]


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """Features of real images, their moments, and where they came from.

    Attributes:
      mu: [F] float64 mean.
      sigma: [F, F] float64 covariance.
      features: [N, F] the features themselves, for KID.
      provenance: ``dataset``, ``split`` and ``feature_network`` (the extractor's name).
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    provenance: dict[str, str]


def reference_statistics(extractor: FeatureExtractor, *, dataset: str, split: str,
                         data_dir: str | None = None, cache: str | None = None,
                         batch_size: int = 500) -> ReferenceStats:
    """Features of a whole split (slices allowed: 'test[:1000]'), cached in an .npz.

    A cache whose provenance (dataset, split, feature network name) differs is recomputed and
    overwritten (by process 0, atomically).
    """
    provenance = {"dataset": dataset, "split": split, "feature_network": extractor.name}
    if cache is not None and os.path.isfile(cache):
        with np.load(cache) as f:
            if json.loads(str(f["provenance"])) == provenance:
                return ReferenceStats(f["mu"], f["sigma"], f["features"], provenance)
    source = input_pipeline.load_split(dataset, split, data_dir=data_dir)
    features = split_features(extractor, source, batch_size=batch_size)
    mu, sigma = feature_statistics(features)
    if cache is not None and jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        with open(f"{cache}.tmp", "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, features=features, provenance=json.dumps(provenance))
        os.replace(f"{cache}.tmp", cache)
    return ReferenceStats(mu, sigma, features, provenance)
