"""Scores of features and logits, in float64 numpy: Frechet distance, KID, Inception Score."""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (unbiased) of features [N, F], in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``. The last trace is the
    sum of the square roots of the eigenvalues of sigma1^(1/2) sigma2 sigma1^(1/2), a symmetric
    PSD matrix with the same spectrum as sigma1 sigma2; both come from ``eigh``, so nothing is
    complex and singular covariances (N <= F) are fine. Round-off eigenvalues below 0 count as 0.

    Args:
      mu1, mu2: [F] means.
      sigma1, sigma2: [F, F] symmetric PSD covariances.
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, np.float64) for a in (mu1, mu2, sigma1, sigma2))
    f = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"expected means [F] and covariances [F, F], got {mu1.shape}, "
                         f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 with k(x, y) = (x.y / F + 1)^3.

    Averaged over ``num_subsets`` pairs of random subsets of m = min(subset_size, N1, N2)
    features each, drawn without replacement, in float64.

    Args:
      feats1: [N1, F] features.
      feats2: [N2, F] features.
      num_subsets: subset pairs, >= 1.
      subset_size: m before capping at N1 and N2.
      seed: seed of the subset draws.

    Returns:
      (mean, standard deviation) of the MMD^2 estimates over the subsets.
    """
    x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected features [N1, F] and [N2, F], got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of >= 2 features and num_subsets >= 1, got "
                         f"subset size {m} (N1={len(x)}, N2={len(y)}) and {num_subsets} subsets")
    kernel = lambda a, b: (a @ b.T / x.shape[1] + 1.0) ** 3
    rng = np.random.default_rng(seed)
    mmds = []
    for _ in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kaa, kbb = kernel(a, a), kernel(b, b)
        within = (kaa.sum() - np.trace(kaa) + kbb.sum() - np.trace(kbb)) / (m * (m - 1))
        mmds.append(within - 2.0 * kernel(a, b).mean())
    return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(logits: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) as openai/improved-gan's ``inception_score.py``.

    Softmax over the classes, then the images in ``splits`` consecutive parts (part i is rows
    i N // splits up to (i + 1) N // splits); per part exp(mean_x KL(p(y | x) || p(y))) with p(y)
    the part's mean prediction. In float64, from log-probabilities.

    Args:
      logits: [N, C] class logits, N >= splits (the 1008-way Inception logits for the IS of
        papers: ``inception.logits_weight``).
      splits: number of parts, >= 1 (10 in the papers).

    Returns:
      (mean, standard deviation) of the parts' scores.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or splits < 1 or len(logits) < splits:
        raise ValueError(f"expected logits [N, C] with N >= splits >= 1, got shape "
                         f"{logits.shape} and splits={splits}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n, scores = len(logits), []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = np.log(np.exp(part).mean(axis=0))
        scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))
