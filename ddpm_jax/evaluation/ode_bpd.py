"""Bits/dim of a trained run by the probability-flow ODE (``likelihood``), over a split.

    result = evaluation.ode_bits_per_dim(trained, data.load_split("fashion_mnist", "test"),
                                         batch_size=64, num_examples=64)

Each image is dequantised uniformly (score_sde), its log-likelihood integrated through the ODE
with one Hutchinson probe (or the exact trace), and converted to bits/dim; the result sits
beside the variational bound of ``bound.bits_per_dim`` on the same images.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ddpm_jax import generate, likelihood, train_lib
from ddpm_jax.data import ImageSource
from ddpm_jax.evaluation.batches import check_num_examples, leading_batches


def ode_bits_per_dim(trained: generate.Trained, source: ImageSource, *, params: str = "ema",
                     batch_size: int, num_examples: int | None = None, seed: int = 0,
                     mesh: Mesh | None = None, trace: str = "hutchinson",
                     solver: str = "dopri5", num_steps: int | None = None,
                     rtol: float = 1e-5, atol: float = 1e-5) -> dict[str, Any]:
    """Test bits/dim of a run by the probability-flow ODE (score_sde's ``likelihood.py``).

    Batch b draws its dequantisation noise and probes from ``fold_in(key(seed), b)``. A
    class-conditional model is evaluated with the null label, as ``bound.bits_per_dim`` does.

    Args:
      trained: a run from ``generate.load_workdir``.
      source: a split of images of the run's image shape.
      params: ``'ema'`` or ``'raw'``.
      batch_size: global batch size, a multiple of the mesh size.
      num_examples: the first this many images (default: all).
      seed: seed of the dequantisation and the probes.
      mesh: a mesh with a ``data`` axis (default: every device).
      trace, solver, num_steps, rtol, atol: as in ``likelihood.ode_log_likelihood``.

    Returns:
      ``bpd`` (mean over images), ``bpd_stderr`` (their standard error: images, dequantisation
      and probes), ``solver_steps`` (mean per batch), ``seconds_per_image`` (wall time over
      images, compilation included) and the settings.
    """
    if tuple(source.image_shape) != tuple(trained.image_shape):
        raise ValueError(f"the split's images have shape {tuple(source.image_shape)} but the "
                         f"model was trained on {tuple(trained.image_shape)}")
    mesh = train_lib.data_mesh() if mesh is None else mesh
    n = check_num_examples(source, num_examples)
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the mesh size "
                         f"{mesh.size}")
    model, d = trained.model, trained.config.diffusion
    num_dims = math.prod(source.image_shape)

    def per_batch(p, images, mask, offset, key):
        pixels = jnp.round((images + 1.0) * 127.5)  # eval_batches' [-1, 1] back to 0..255
        noise_key, probe_key = jax.random.split(key)
        out = likelihood.ode_log_likelihood(
            train_lib.unconditional_denoiser(model, p), trained.schedule,
            likelihood.dequantize(noise_key, pixels), probe_key, trace=trace, solver=solver,
            num_steps=num_steps, rtol=rtol, atol=atol, target=d.target, variance=d.variance)
        valid = mask & (offset + jnp.arange(images.shape[0]) < n)
        return likelihood.bits_per_dim(out.log_p, num_dims), valid, out.solver_steps

    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    run = jax.jit(per_batch, in_shardings=(replicated, sharded, sharded, replicated, replicated),
                  out_shardings=replicated)
    chosen = train_lib.replicate(trained.chosen_params(params), mesh)
    key = jax.random.key(seed)
    start = time.perf_counter()
    values, steps = [], []
    for offset, batch in leading_batches(source, n, batch_size=batch_size,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count()):
        images, mask = (jax.make_array_from_process_local_data(sharded, batch[k])
                        for k in ("image", "mask"))
        bpd, valid, solver_steps = jax.device_get(run(
            chosen, images, mask, offset, jax.random.fold_in(key, offset // batch_size)))
        values.append(bpd[valid])
        steps.append(int(solver_steps))
    elapsed = time.perf_counter() - start
    total = np.concatenate(values).astype(np.float64)
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "solver_steps": float(np.mean(steps)), "seconds_per_image": round(elapsed / n, 3),
        "num_examples": n, "trace": trace, "solver": solver, "num_steps": num_steps,
        "rtol": rtol, "atol": atol, "seed": seed, "step": trained.step, "params": params,
    }
