"""The variational bound of a diffusion model on a split, in bits/dim.

    result = evaluation.bits_per_dim(trained, input_pipeline.load_split("fashion_mnist", "test"),
                                     batch_size=64)

Bits/dim is Ho et al.'s bound per image (prior + decoder + every diffusion KL term, the run's
variance, no clipping) over D ln 2, averaged over a split.
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

from ddpm_jax import generate, losses, train_lib
from ddpm_jax.evaluation.batches import check_num_examples, leading_batches
from ddpm_jax.data import ImageSource
from ddpm_jax.schedules import Schedule


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
    n = check_num_examples(source, num_examples)
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
