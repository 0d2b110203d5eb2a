"""Evaluation: bits/dim over the full variational bound, and FID / KID on a feature network.

    result = evaluation.bits_per_dim(trained, input_pipeline.load_split("fashion_mnist", "test"),
                                     batch_size=64)

Bits/dim is Ho et al.'s bound per image (prior + decoder + every diffusion KL term, the run's
variance, no clipping) over D ln 2, averaged over a split. FID and KID compare features of
generated and real images. The features come from any ``FeatureExtractor``; the one built in is
the penultimate layer of a small CNN classifier trained on the dataset (``train_classifier``),
which suits MNIST-like data. Its numbers are not comparable to Inception-based FIDs in papers;
for those, ``inception.load_inception`` reads your copy of pytorch-fid's InceptionV3 weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
from typing import Any, Protocol

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import data as input_pipeline, generate, losses, sampling, train_lib
from ddpm_jax.data import ImageSource
from ddpm_jax.schedules import Schedule


def _num_examples(source: ImageSource, num_examples: int | None) -> int:
    """``num_examples`` validated against the split's size; None means all of it."""
    if num_examples is None:
        return len(source)
    if not 1 <= num_examples <= len(source):
        raise ValueError(f"num_examples must be in [1, {len(source)}] (the split's size), "
                         f"got {num_examples}")
    return num_examples


def _leading_batches(source: ImageSource, num_examples: int, *, batch_size: int,
                     process_index: int = 0, process_count: int = 1
                     ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(offset, batch) of the ``eval_batches`` that hold the first ``num_examples``, in order.

    ``offset`` is the position in the split of the batch's first row (of the global batch).
    """
    batches = input_pipeline.eval_batches(source, batch_size=batch_size,
                                          process_index=process_index,
                                          process_count=process_count)
    try:
        for b, batch in enumerate(itertools.islice(batches, math.ceil(num_examples / batch_size))):
            yield b * batch_size, batch
    finally:
        batches.close()


# --- Bits per dimension ------------------------------------------------------------------------

def bound_on_split(apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any,
                   schedule: Schedule, source: ImageSource, *, batch_size: int,
                   target: str = "eps", variance: str = "fixedlarge",
                   num_examples: int | None = None, seed: int = 0, mesh: Mesh | None = None,
                   num_t_bins: int = 10) -> dict[str, Any]:
    """The full variational bound in bits/dim over (the first ``num_examples`` of) a split.

    One jitted program per call; each global batch is sharded over the mesh's ``data`` axis, the
    parameters replicated. Batch b draws its x_t from ``fold_in(key(seed), b)``.

    Args:
      apply_fn: ``apply_fn(params, x_t [B, H, W, C], t [B]) -> model_output``.
      params: the pytree ``apply_fn`` takes.
      schedule: the diffusion schedule (all T terms are evaluated).
      source: the split; uint8 images, read in order by ``input_pipeline.eval_batches``.
      batch_size: global batch size, a multiple of the mesh size.
      target, variance: as in ``diffusion.p_mean_variance``; x0 is never clipped.
      num_examples: evaluate the first this many images (default: all).
      seed: seed of the x_t draws.
      mesh: a mesh with a ``data`` axis (default: every device).
      num_t_bins: the diffusion terms are also reported summed over this many contiguous bins of t.

    Returns:
      ``bpd`` (mean over images of the total) and ``bpd_stderr`` (its standard error; None for
      one image); the mean of each part, which add up to ``bpd``: ``prior_bpd`` (L_T),
      ``decoder_bpd`` (L_0), ``diffusion_bpd`` (the sum of L_1..L_{T-1}) and
      ``diffusion_bpd_by_t``, a list of ``{"t": [first, last], "bpd": ...}`` where t is the
      paper's timestep of x_t in KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), 2..T; and
      ``num_examples``, ``num_timesteps``, ``target``, ``variance``, ``seed``.
    """
    mesh = train_lib.data_mesh() if mesh is None else mesh
    n = _num_examples(source, num_examples)
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the mesh size "
                         f"{mesh.size}")
    if num_t_bins < 1:
        raise ValueError(f"num_t_bins must be >= 1, got {num_t_bins}")
    num_dims = math.prod(source.image_shape)
    to_bpd = functools.partial(losses.nats_to_bits_per_dim, num_dims=num_dims)

    def per_batch(params, images, mask, offset, key):
        bound = losses.variational_bound(functools.partial(apply_fn, params), schedule, images,
                                         key, target=target, variance=variance, clip_x0=False)
        valid = mask & (offset + jnp.arange(images.shape[0]) < n)
        weight = valid.astype(jnp.float32)
        return dict(valid=valid, total=to_bpd(bound.total), prior=to_bpd(bound.prior) @ weight,
                    decoder=to_bpd(bound.decoder) @ weight,
                    diffusion=to_bpd(bound.diffusion_terms) @ weight)

    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    run = jax.jit(per_batch, in_shardings=(replicated, sharded, sharded, replicated, replicated),
                  out_shardings=replicated)
    params = train_lib.replicate(params, mesh)
    key = jax.random.key(seed)
    totals, sums = [], {}
    for offset, batch in _leading_batches(source, n, batch_size=batch_size,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count()):
        images, mask = (jax.make_array_from_process_local_data(sharded, batch[k])
                        for k in ("image", "mask"))
        out = jax.device_get(run(params, images, mask, offset,
                                 jax.random.fold_in(key, offset // batch_size)))
        totals.append(out.pop("total")[out.pop("valid")])
        sums = {k: sums.get(k, 0.0) + np.asarray(v, np.float64) for k, v in out.items()}
    total = np.concatenate(totals).astype(np.float64)
    diffusion = sums["diffusion"] / n  # [T-1], row i is the paper's t = i + 2
    bins = np.array_split(np.arange(len(diffusion)), min(num_t_bins, len(diffusion)))
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "prior_bpd": float(sums["prior"] / n),
        "decoder_bpd": float(sums["decoder"] / n),
        "diffusion_bpd": float(diffusion.sum()),
        "diffusion_bpd_by_t": [{"t": [int(i[0]) + 2, int(i[-1]) + 2],
                                "bpd": float(diffusion[i].sum())} for i in bins],
        "num_examples": n, "num_timesteps": schedule.num_timesteps, "target": target,
        "variance": variance, "seed": seed,
    }


def bits_per_dim(trained: generate.Trained, source: ImageSource, *, params: str = "ema",
                 batch_size: int, num_examples: int | None = None, seed: int = 0,
                 mesh: Mesh | None = None, num_t_bins: int = 10) -> dict[str, Any]:
    """Test bits/dim of a trained run: ``bound_on_split`` with its model, variance and target.

    A class-conditional model is evaluated with the null label, i.e. as the unconditional model
    of classifier-free guidance.

    Args:
      trained: a run from ``generate.load_workdir``.
      source: a split of images of the run's image shape.
      params: ``'ema'`` or ``'raw'``.
      batch_size, num_examples, seed, mesh, num_t_bins: as in ``bound_on_split``.

    Returns:
      ``bound_on_split``'s dict plus ``step`` and ``params``.
    """
    chosen = trained.chosen_params(params)
    if tuple(source.image_shape) != tuple(trained.image_shape):
        raise ValueError(f"the split's images have shape {tuple(source.image_shape)} but the "
                         f"model was trained on {tuple(trained.image_shape)}")
    model, d = trained.model, trained.config.diffusion

    def apply_fn(p, x, t):
        labels = None if model.num_classes is None else jnp.full(t.shape, model.num_classes)
        return train_lib.denoiser(model, p, labels)(x, t)

    result = bound_on_split(apply_fn, chosen, trained.schedule, source, batch_size=batch_size,
                            target=d.target, variance=d.variance, num_examples=num_examples,
                            seed=seed, mesh=mesh, num_t_bins=num_t_bins)
    return {**result, "step": trained.step, "params": params}


# --- Distances between feature distributions ---------------------------------------------------

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (unbiased) of features [N, F], in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)). The last trace is the
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


# --- Feature networks --------------------------------------------------------------------------

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


class Classifier(nn.Module):
    """A small CNN classifier; its penultimate layer gives the features.

    Attributes:
      num_classes: number of labels.
      channels: widths of the conv stages (3x3 conv, ReLU, 2x2 max-pool each).
      num_features: width of the penultimate (ReLU) layer, F.
    """

    num_classes: int
    channels: tuple[int, ...] = (32, 64)
    num_features: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] in [-1, 1] -> (logits [B, num_classes], features [B, num_features])."""
        for ch in self.channels:
            x = nn.max_pool(nn.relu(nn.Conv(ch, (3, 3))(x)), (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dense(self.num_features)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(features), features


def _accuracy(model: Classifier, params: Any, source: ImageSource, *, batch_size: int) -> float:
    """Fraction of the split that ``model`` labels correctly."""
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    correct = 0
    for _, batch in _leading_batches(source, len(source), batch_size=batch_size):
        predicted = np.argmax(logits(params, batch["image"]), axis=-1)
        correct += int(np.sum((predicted == batch["label"]) & batch["mask"]))
    return correct / len(source)


def train_classifier(train_source: ImageSource, test_source: ImageSource, *, steps: int,
                     batch_size: int, seed: int = 0,
                     learning_rate: float = 1e-3) -> tuple[Any, float]:
    """Trains a ``Classifier`` with Adam on cross-entropy; returns its params and test accuracy.

    Args:
      train_source: a labelled split; batches are ``input_pipeline.train_batch`` of (seed, step).
      test_source: a labelled split of the same image shape, for the accuracy.
      steps: optimisation steps, >= 1.
      batch_size: images per step.
      seed: seed of the initialisation and the data order.
      learning_rate: Adam's rate.
    """
    num_classes = train_source.num_classes
    if num_classes is None or test_source.num_classes != num_classes:
        raise ValueError(f"the classifier needs labelled splits with the same classes, got "
                         f"num_classes {num_classes} (train) and {test_source.num_classes} (test)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model = Classifier(num_classes)
    optimizer = optax.adam(learning_rate)
    params = model.init(jax.random.key(seed), jnp.zeros((1, *train_source.image_shape)))["params"]
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batches = input_pipeline.train_iterator(train_source, seed=seed, batch_size=batch_size)
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
            "channels": list(model.channels), "num_features": model.num_features}
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
        data = f.read()
    payload = flax.serialization.msgpack_restore(data)
    info = {**json.loads(payload["info"]), "sha256": hashlib.sha256(data).hexdigest()}
    model = Classifier(info["num_classes"], tuple(info["channels"]), info["num_features"])
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


# --- FID and KID -------------------------------------------------------------------------------

def split_features(extractor: FeatureExtractor, source: ImageSource, *,
                   num_examples: int | None = None, batch_size: int = 500) -> np.ndarray:
    """Features [N, F] of (the first ``num_examples`` of) a split of real images."""
    n = _num_examples(source, num_examples)
    parts = [extractor(batch["image"])[batch["mask"]]
             for _, batch in _leading_batches(source, n, batch_size=min(batch_size, n))]
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


def compare_features(features: np.ndarray, reference: ReferenceStats, *, kid_subsets: int = 100,
                     kid_subset_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """FID and KID of features [N, F] against a reference, with the reference's provenance."""
    kid, kid_std = kernel_inception_distance(features, reference.features,
                                             num_subsets=kid_subsets,
                                             subset_size=kid_subset_size, seed=seed)
    return {
        "fid": frechet_distance(*feature_statistics(features), reference.mu, reference.sigma),
        "kid": kid, "kid_std": kid_std, "kid_subsets": kid_subsets,
        "kid_subset_size": min(kid_subset_size, len(features), len(reference.features)),
        "num_images": len(features),
        "reference": {**reference.provenance, "num_examples": len(reference.features)},
    }


def fid_kid(trained: generate.Trained, *, num_samples: int, reference: ReferenceStats,
            feature_extractor: FeatureExtractor, params: str = "ema", seed: int = 0,
            batch_size: int | None = None, sampler: str | None = None,
            num_steps: int | None = None, spacing: str | None = None, eta: float | None = None,
            kid_subsets: int = 100,
            kid_subset_size: int = 1000) -> dict[str, Any]:
    """FID and KID of ``num_samples`` generated images against real ones.

    Samples come from ``generate.generate`` and are rounded to uint8, like the real images,
    before feature extraction.

    Args:
      trained: a run from ``generate.load_workdir``.
      num_samples: generated images.
      reference: real-image statistics from ``reference_statistics`` with the same extractor.
      feature_extractor: the feature network.
      params, seed, batch_size, sampler, num_steps, spacing, eta: as in ``generate.generate``.
      kid_subsets, kid_subset_size: as in ``kernel_inception_distance``.

    Returns:
      ``compare_features``'s dict plus what was measured: ``num_samples``, ``step``, ``params``,
      ``seed``, ``sampler``, ``num_steps`` (the steps actually taken), ``spacing``,
      ``model_calls`` (network evaluations per image), ``eta`` (DDIM only),
      ``variance``, ``clip_x0`` and ``feature_network``.
    """
    if reference.provenance["feature_network"] != feature_extractor.name:
        raise ValueError(f"the reference statistics were computed with "
                         f"{reference.provenance['feature_network']!r}, not "
                         f"{feature_extractor.name!r}; recompute them with this extractor")
    samples = generate.generate(trained, num_samples=num_samples, seed=seed, params=params,
                                batch_size=batch_size, sampler=sampler, num_steps=num_steps,
                                spacing=spacing, eta=eta)
    features = feature_extractor(input_pipeline.to_model_range(samples.images_uint8))
    s = samples.settings
    steps = len(sampling.sampling_timesteps(trained.schedule, s["num_steps"],
                                            spacing=s["spacing"]))
    return {
        **compare_features(features, reference, kid_subsets=kid_subsets,
                           kid_subset_size=kid_subset_size, seed=seed),
        "num_samples": num_samples, "step": s["step"], "params": params, "seed": seed,
        "sampler": s["sampler"], "num_steps": steps, "spacing": s["spacing"],
        "model_calls": sampling.model_calls(s["sampler"], steps),
        **({"eta": s["eta"]} if s["sampler"] == "ddim" else {}),
        "variance": s["variance"], "clip_x0": s["clip_x0"],
        "feature_network": feature_extractor.name,
    }
