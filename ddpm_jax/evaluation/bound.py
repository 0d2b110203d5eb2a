"""The variational bound of a diffusion model on a split, in bits/dim: exact, or Monte Carlo.

    result = evaluation.bits_per_dim(trained, data.load_split("fashion_mnist", "test"),
                                     batch_size=64, estimator="mc", timesteps_per_image=50)

Bits/dim is Ho et al.'s bound per image, L = L_T + sum_{t=2..T} L_{t-1} + L_0 (prior + diffusion
KL terms + decoder; the run's variance, no clipping), over D ln 2, averaged over a split. The
``full`` estimator evaluates all T terms per image (T forward passes); ``mc`` evaluates the prior
and decoder exactly and K stratified timesteps of the diffusion sum (K forward passes + 1), an
unbiased estimate of the same bound.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import diffusion, generate, losses, train_lib
from ddpm_jax.evaluation.batches import check_num_examples, leading_batches
from ddpm_jax.data import ImageSource
from ddpm_jax.losses import DenoiseFn, VariationalBound
from ddpm_jax.schedules import Schedule

ESTIMATORS = ("full", "mc")


def strata(num_timesteps: int, num_strata: int) -> list[np.ndarray]:
    """The diffusion terms' array indices 1..T-1 in ``num_strata`` contiguous strata whose sizes
    differ by at most one (all (T-1)/K when K divides T-1)."""
    if not 1 <= num_strata <= num_timesteps - 1:
        raise ValueError(f"the number of sampled timesteps must be in [1, {num_timesteps - 1}] "
                         f"(T - 1), got {num_strata}")
    return np.array_split(np.arange(1, num_timesteps), num_strata)


def sampled_variational_bound(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array,
                              key: jax.Array, *, num_strata: int, target: str = "eps",
                              variance: str = "fixedlarge",
                              clip_x0: bool = False) -> VariationalBound:
    """Ho et al.'s bound per image with the diffusion sum estimated from K stratified timesteps.

    The prior and decoder terms are exact. The T-1 diffusion terms (array indices 1..T-1) are cut
    into K = ``num_strata`` contiguous strata of n_k timesteps (``strata``); each image draws one
    timestep t_k uniformly in each stratum, and n_k L_{t_k} is an unbiased estimate of the
    stratum's sum, so their total estimates the diffusion sum ((T-1)/K x the sampled terms when
    K divides T-1). The x_t of stratum k uses the noise ``losses.variational_bound`` uses at the
    stratum's first timestep, ``fold_in(key, first)``; the timesteps come from
    ``fold_in(key, T)``. With K = T-1 every stratum is one timestep and this is the full bound,
    draw for draw.

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``.
      schedule: the diffusion schedule.
      x0: [B, ...] 8-bit data scaled to [-1, 1].
      key: PRNG key of the timesteps and the x_t draws.
      num_strata: K, in [1, T-1]: timesteps evaluated per image besides the decoder's.
      target, variance, clip_x0: as in ``diffusion.p_mean_variance``.

    Returns:
      A ``VariationalBound`` in nats whose ``diffusion_terms`` [K, B] are the strata's estimates
      n_k L_{t_k}.
    """
    groups = strata(schedule.num_timesteps, num_strata)
    first = jnp.asarray([g[0] for g in groups])
    size = jnp.asarray([len(g) for g in groups])
    t_key = jax.random.fold_in(key, schedule.num_timesteps)
    offsets = jax.random.randint(t_key, (num_strata, x0.shape[0]), 0, size[:, None])

    def term(t, noise_index):
        noise = jax.random.normal(jax.random.fold_in(key, noise_index), x0.shape, x0.dtype)
        x_t = diffusion.q_sample(schedule, x0, t, noise)
        return losses.vlb_term(schedule, denoise_fn(x_t, t), x0, x_t, t, target=target,
                               variance=variance, clip_x0=clip_x0)

    def body(_, stratum):
        lo, n, offset = stratum
        return None, n * term(lo + offset, lo)

    _, terms = jax.lax.scan(body, None, (first, size, offsets))
    decoder = term(jnp.zeros(x0.shape[:1], jnp.int32), 0)
    prior = losses.prior_kl(schedule, x0)
    return VariationalBound(total=prior + decoder + jnp.sum(terms, axis=0), prior=prior,
                            decoder=decoder, diffusion_terms=terms)


def bound_on_split(apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any,
                   schedule: Schedule, source: ImageSource, *, batch_size: int,
                   target: str = "eps", variance: str = "fixedlarge",
                   num_examples: int | None = None, seed: int = 0, mesh: Mesh | None = None,
                   num_t_bins: int = 10, estimator: str = "full",
                   timesteps_per_image: int | None = None) -> dict[str, Any]:
    """The variational bound in bits/dim over (the first ``num_examples`` of) a split.

    One jitted program per call; each global batch is sharded over the mesh's ``data`` axis, the
    parameters replicated. Batch b draws its x_t (and, for ``mc``, its timesteps) from
    ``fold_in(key(seed), b)``.

    Args:
      apply_fn: ``apply_fn(params, x_t [B, H, W, C], t [B]) -> model_output``.
      params: the pytree ``apply_fn`` takes.
      schedule: the diffusion schedule.
      source: the split; uint8 images, read in order by ``data.eval_batches``.
      batch_size: global batch size, a multiple of the mesh size.
      target, variance: as in ``diffusion.p_mean_variance``; x0 is never clipped.
      num_examples: evaluate the first this many images (default: all).
      seed: seed of the x_t draws.
      mesh: a mesh with a ``data`` axis (default: every device).
      num_t_bins: the diffusion terms are also reported summed over this many contiguous bins of t.
      estimator: ``'full'`` (all T terms per image) or ``'mc'`` (``sampled_variational_bound``).
      timesteps_per_image: K of ``mc``, in [1, T-1]; only with ``mc``.

    Returns:
      ``bpd``, the mean over images of each image's bound (for ``mc``, of its unbiased
      estimate), and ``bpd_stderr``, the standard error of that mean (None for one image): the
      per-image values are independent, so their sample standard deviation over sqrt(N) holds
      both the spread between images and, for ``mc``, the timestep and x_t sampling. The mean
      of each part, which add up to ``bpd``: ``prior_bpd`` (L_T), ``decoder_bpd`` (L_0),
      ``diffusion_bpd`` (the sum of L_1..L_{T-1}) and ``diffusion_bpd_by_t``, a list of
      ``{"t": [first, last], "bpd": ...}`` where t is the paper's timestep of x_t in
      KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), 2..T (for ``mc``, bins of whole strata);
      and ``num_examples``, ``num_timesteps``, ``target``, ``variance``, ``seed``,
      ``estimator`` and, for ``mc``, ``timesteps_per_image``.
    """
    diffusion.check_choice("bits/dim estimator", estimator, ESTIMATORS)
    num_timesteps = schedule.num_timesteps
    if estimator == "full":
        if timesteps_per_image is not None:
            raise ValueError(f"timesteps_per_image={timesteps_per_image} is only for the 'mc' "
                             f"estimator; 'full' evaluates all {num_timesteps} timesteps")
        bound_fn = functools.partial(losses.variational_bound, clip_x0=False)
        row_t = [(t, t) for t in range(2, num_timesteps + 1)]  # paper's t of each row
    else:
        if timesteps_per_image is None:
            raise ValueError("the 'mc' estimator needs timesteps_per_image (K)")
        bound_fn = functools.partial(sampled_variational_bound, num_strata=timesteps_per_image)
        row_t = [(int(g[0]) + 1, int(g[-1]) + 1)
                 for g in strata(num_timesteps, timesteps_per_image)]
    mesh = train_lib.data_mesh() if mesh is None else mesh
    n = check_num_examples(source, num_examples)
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the mesh size "
                         f"{mesh.size}")
    if num_t_bins < 1:
        raise ValueError(f"num_t_bins must be >= 1, got {num_t_bins}")
    num_dims = math.prod(source.image_shape)
    to_bpd = functools.partial(losses.nats_to_bits_per_dim, num_dims=num_dims)

    def per_batch(params, images, mask, offset, key):
        bound = bound_fn(functools.partial(apply_fn, params), schedule, images, key,
                         target=target, variance=variance)
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
    for offset, batch in leading_batches(source, n, batch_size=batch_size,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count()):
        images, mask = (jax.make_array_from_process_local_data(sharded, batch[k])
                        for k in ("image", "mask"))
        out = jax.device_get(run(params, images, mask, offset,
                                 jax.random.fold_in(key, offset // batch_size)))
        totals.append(out.pop("total")[out.pop("valid")])
        sums = {k: sums.get(k, 0.0) + np.asarray(v, np.float64) for k, v in out.items()}
    total = np.concatenate(totals).astype(np.float64)
    by_row = sums["diffusion"] / n  # [T-1] or [K]: the rows of row_t
    bins = np.array_split(np.arange(len(by_row)), min(num_t_bins, len(by_row)))
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "prior_bpd": float(sums["prior"] / n),
        "decoder_bpd": float(sums["decoder"] / n),
        "diffusion_bpd": float(by_row.sum()),
        "diffusion_bpd_by_t": [{"t": [row_t[i[0]][0], row_t[i[-1]][1]],
                                "bpd": float(by_row[i].sum())} for i in bins],
        "num_examples": n, "num_timesteps": num_timesteps, "target": target,
        "variance": variance, "seed": seed, "estimator": estimator,
        **({"timesteps_per_image": timesteps_per_image} if estimator == "mc" else {}),
    }


def bits_per_dim(trained: generate.Trained, source: ImageSource, *, params: str = "ema",
                 batch_size: int, num_examples: int | None = None, seed: int = 0,
                 mesh: Mesh | None = None, num_t_bins: int = 10, estimator: str = "full",
                 timesteps_per_image: int | None = None) -> dict[str, Any]:
    """Test bits/dim of a trained run: ``bound_on_split`` with its model, variance and target.

    A class-conditional model is evaluated with the null label, i.e. as the unconditional model
    of classifier-free guidance.

    Args:
      trained: a run from ``generate.load_workdir``.
      source: a split of images of the run's image shape.
      params: ``'ema'`` or ``'raw'``.
      batch_size, num_examples, seed, mesh, num_t_bins, estimator, timesteps_per_image: as in
        ``bound_on_split``.

    Returns:
      ``bound_on_split``'s dict plus ``step`` and ``params``.
    """
    chosen = trained.chosen_params(params)
    if tuple(source.image_shape) != tuple(trained.image_shape):
        raise ValueError(f"the split's images have shape {tuple(source.image_shape)} but the "
                         f"model was trained on {tuple(trained.image_shape)}")
    model, d = trained.model, trained.config.diffusion

    def apply_fn(p, x, t):
        return train_lib.unconditional_denoiser(model, p)(x, t)

    result = bound_on_split(apply_fn, chosen, trained.schedule, source, batch_size=batch_size,
                            target=d.target, variance=d.variance, num_examples=num_examples,
                            seed=seed, mesh=mesh, num_t_bins=num_t_bins, estimator=estimator,
                            timesteps_per_image=timesteps_per_image)
    return {**result, "step": trained.step, "params": params}
