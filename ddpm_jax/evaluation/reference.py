"""Reference statistics: features of a split of real images and their moments, cached; and
(mu, sigma) files in pytorch-fid / TTUR's format, read and written."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from ddpm_jax import data
from ddpm_jax.atomic_files import atomic_write
from ddpm_jax.evaluation.batches import check_num_examples, leading_batches
from ddpm_jax.evaluation.downloads import file_sha256
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
      features: [N, F] the features themselves, for KID; None for statistics read from a
        (mu, sigma) file.
      provenance: ``dataset``, ``split``, ``data_dir`` and ``feature_network`` (the extractor's
        name); or, from a file, ``file``, ``sha256`` and ``feature_network``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None
    provenance: dict[str, str | None]


def _read_cache(cache: str | None, provenance: dict) -> ReferenceStats | None:
    """The statistics cached in ``cache`` if it exists with this ``provenance``."""
    if cache is None or not os.path.isfile(cache):
        return None
    with np.load(cache) as f:
        if json.loads(str(f["provenance"])) != provenance:
            return None
        return ReferenceStats(f["mu"], f["sigma"], f["features"], provenance)


def _on_every_process(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def reference_statistics(extractor: FeatureExtractor, *, dataset: str, split: str,
                         data_dir: str | None = None, cache: str | None = None,
                         batch_size: int = 500, **split_options) -> ReferenceStats:
    """Features of a whole split (slices allowed: 'test[:1000]'), cached in an .npz.

    ``split_options`` are ``data.load_split``'s other arguments (``image_size``; a folder's
    ``path``, ``channels``, ...). A cache whose provenance (dataset, split, data dir as an
    absolute path, the options given but ``cache_dir``, feature network name) differs is
    recomputed and overwritten (by process 0, atomically). With several processes every process
    calls it, and the cache is used only when every process finds it (each host reads its own
    file); otherwise all of them recompute the statistics together.
    """
    # Where a prepared folder is kept does not change its images.
    given = {key: os.path.abspath(value) if key == "path" else value
             for key, value in split_options.items()
             if value not in (None, False) and key != "cache_dir"}
    provenance = {"dataset": dataset, "split": split,
                  "data_dir": None if data_dir is None else os.path.abspath(data_dir),
                  **given, "feature_network": extractor.name}
    cached = _read_cache(cache, provenance)
    # The cache is host-local (only process 0 writes it) and load_split holds a cross-process
    # barrier: every process must take the same path, so a hit counts only if all processes hit.
    if _on_every_process(cached is not None):
        return cached
    source = data.load_split(dataset, split, data_dir=data_dir, **split_options)
    features = split_features(extractor, source, batch_size=batch_size)
    mu, sigma = feature_statistics(features)
    if cache is not None and jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        with atomic_write(cache) as f:
            np.savez(f, mu=mu, sigma=sigma, features=features, provenance=json.dumps(provenance))
    return ReferenceStats(mu, sigma, features, provenance)


def save_reference_stats(path: str, reference: ReferenceStats) -> None:
    """Writes ``mu`` and ``sigma`` as pytorch-fid's ``--save-stats`` does (``np.savez_compressed``
    with those two keys), the format TTUR's precomputed statistics also use."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        np.savez_compressed(f, mu=reference.mu, sigma=reference.sigma)


def load_reference_stats(path: str, *, feature_network: str) -> ReferenceStats:
    """Precomputed (mu, sigma) from a pytorch-fid / TTUR ``.npz`` (keys ``mu`` [F], ``sigma``
    [F, F]), e.g. the CIFAR-10 training-set statistics papers compare against.

    Args:
      path: the file; its SHA-256 goes into the provenance.
      feature_network: the extractor the statistics were computed with, as you assert it (for
        pytorch-fid / TTUR files: InceptionV3 pool3 with pytorch-fid's weights); FID compares
        them only with features of that extractor.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no reference statistics file {path!r}")
    with np.load(path) as f:
        missing = sorted({"mu", "sigma"} - set(f.files))
        if missing:
            raise ValueError(f"reference statistics {path!r} lack {missing}; expected "
                             f"pytorch-fid / TTUR's keys 'mu' [F] and 'sigma' [F, F], found "
                             f"{sorted(f.files)}")
        mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"reference statistics {path!r} have mu {mu.shape} and sigma "
                         f"{sigma.shape}; expected [F] and [F, F]")
    provenance = {"file": os.path.abspath(path), "sha256": file_sha256(path),
                  "feature_network": feature_network}
    return ReferenceStats(mu, sigma, None, provenance)
