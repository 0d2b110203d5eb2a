"""FID and KID of generated (or any) images against reference statistics; IS of the samples."""

from __future__ import annotations

from typing import Any

import numpy as np

from ddpm_jax import data, generate, sampling
from ddpm_jax.evaluation.features import FeatureExtractor
from ddpm_jax.evaluation.reference import ReferenceStats
from ddpm_jax.evaluation.scores import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)

IS_SPLITS = 10  # as in the papers (openai/improved-gan's inception_score.py)


def compare_features(features: np.ndarray, reference: ReferenceStats, *, kid_subsets: int = 100,
                     kid_subset_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """FID and KID of features [N, F] against a reference, with the reference's provenance.

    KID needs the reference's features: against (mu, sigma) read from a file it is left out.
    """
    result = {
        "fid": frechet_distance(*feature_statistics(features), reference.mu, reference.sigma),
        "num_images": len(features), "reference": dict(reference.provenance),
    }
    if reference.features is not None:
        kid, kid_std = kernel_inception_distance(features, reference.features,
                                                 num_subsets=kid_subsets,
                                                 subset_size=kid_subset_size, seed=seed)
        result.update(kid=kid, kid_std=kid_std, kid_subsets=kid_subsets,
                      kid_subset_size=min(kid_subset_size, len(features),
                                          len(reference.features)))
        result["reference"]["num_examples"] = len(reference.features)
    return result


def fid_kid(trained: generate.Trained, *, num_samples: int, reference: ReferenceStats | None,
            feature_extractor: FeatureExtractor, params: str = "ema", seed: int = 0,
            batch_size: int | None = None, sampler: str | None = None,
            num_steps: int | None = None, spacing: str | None = None, eta: float | None = None,
            kid_subsets: int = 100, kid_subset_size: int = 1000,
            logits_weight: np.ndarray | None = None) -> dict[str, Any]:
    """FID and KID of ``num_samples`` generated images against real ones, and their IS.

    Samples come from ``generate.generate`` and are rounded to uint8, like the real images,
    before feature extraction.

    Args:
      trained: a run from ``generate.load_workdir``.
      num_samples: generated images.
      reference: real-image statistics with the same extractor (``reference_statistics`` or
        ``load_reference_stats``); None for no FID / KID.
      feature_extractor: the feature network.
      params, seed, batch_size, sampler, num_steps, spacing, eta: as in ``generate.generate``.
      kid_subsets, kid_subset_size: as in ``kernel_inception_distance``.
      logits_weight: [F, C]: also report the Inception Score of the logits features @ weight
        (``inception.logits_weight``), as ``inception_score`` and ``inception_score_std`` over
        ``inception_score_splits`` = 10 parts.

    Returns:
      ``compare_features``'s dict (with a reference), the IS (with ``logits_weight``), and
      what was measured: ``num_samples``, ``step``, ``params``, ``seed``, ``sampler``,
      ``num_steps`` (the steps actually taken), ``spacing``, ``model_calls`` (network
      evaluations per image), ``eta`` (DDIM only), ``variance``, ``clip_x0`` and
      ``feature_network``.
    """
    if reference is not None and reference.provenance["feature_network"] != feature_extractor.name:
        raise ValueError(f"the reference statistics were computed with "
                         f"{reference.provenance['feature_network']!r}, not "
                         f"{feature_extractor.name!r}; recompute them with this extractor")
    samples = generate.generate(trained, num_samples=num_samples, seed=seed, params=params,
                                batch_size=batch_size, sampler=sampler, num_steps=num_steps,
                                spacing=spacing, eta=eta)
    features = feature_extractor(data.to_model_range(samples.images_uint8))
    s = samples.settings
    steps = len(sampling.sampling_timesteps(trained.schedule, s["num_steps"],
                                            spacing=s["spacing"]))
    scores = {} if reference is None else compare_features(
        features, reference, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    if logits_weight is not None:
        mean, std = inception_score(np.asarray(features, np.float64) @ logits_weight,
                                    splits=IS_SPLITS)
        scores.update(inception_score=mean, inception_score_std=std,
                      inception_score_splits=IS_SPLITS)
    return {
        **scores,
        "num_samples": num_samples, "step": s["step"], "params": params, "seed": seed,
        "sampler": s["sampler"], "num_steps": steps, "spacing": s["spacing"],
        "model_calls": sampling.model_calls(s["sampler"], steps),
        **({"eta": s["eta"]} if s["sampler"] == "ddim" else {}),
        "variance": s["variance"], "clip_x0": s["clip_x0"],
        "feature_network": feature_extractor.name,
    }
