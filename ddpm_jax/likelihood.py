"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, score_sde).

A discrete model of T steps is read as the VP SDE whose marginals at the trained timesteps are
exactly the trained ones: in the continuous index tau in [0, T-1], log abar(tau) interpolates
the schedule's log abar_i linearly, so beta(tau) = -d log abar / d tau = -log(1 - beta_{i+1})
on (i, i+1) (T beta of the discrete schedule to first order, the beta(t) score_sde interpolates
for its DDPM models). The probability-flow ODE

    dx/dtau = -1/2 beta(tau) (x - eps(x, tau) / sigma(tau)),  sigma(tau)^2 = 1 - abar(tau),

uses eps(x, tau) from x0(x, tau), the linear interpolation of the model's x_0 predictions at the
two neighbouring trained timesteps (two calls), so the model is only asked about what it was
trained on (interpolating eps instead was ~3% off near tau = 0). Along a solution, d log p_tau(x) / d tau = -div(drift) (the instantaneous change of
variables), so log p_0(x) = log N(x(T-1); 0, I) + int_0^{T-1} div(drift) d tau, with the
divergence exact (D Jacobian-vector products) or by Hutchinson's estimator eps^T J eps for one
probe eps per image, drawn once (score_sde's ``likelihood.py``). p_0 is the density of the first
noise level x_1 (sigma_1 = sqrt(beta_1), 0.01 for Ho et al.'s schedule), where score_sde stops
at t = 1e-5. The ODE is solved with diffrax.

    log_p = ode_log_likelihood(denoise_fn, schedule, x, key).log_p        # nats per example
    bpd = bits_per_dim(ode_log_likelihood(denoise_fn, schedule,
                                          dequantize(key, images_uint8), key).log_p, 784)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from ddpm_jax import diffusion, losses
from ddpm_jax.diffusion import DenoiseFn
from ddpm_jax.schedules import Schedule

TRACES = ("exact", "hutchinson")
PROBES = ("gaussian", "rademacher")
SOLVERS = {"bosh3": diffrax.Bosh3, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
           "tsit5": diffrax.Tsit5}


class ODELogLikelihood(NamedTuple):
    """``log_p`` [B] = ``prior_log_p`` [B] + the integrated divergence, in nats; ``x_T``
    [B, ...] the ODE's end point; ``solver_steps`` the solver's steps (rejected ones included)."""

    log_p: jax.Array
    prior_log_p: jax.Array
    x_T: jax.Array
    solver_steps: jax.Array


def probability_flow_drift(denoise_fn: DenoiseFn, schedule: Schedule, tau: jax.Array,
                           x: jax.Array, *, target: str = "eps",
                           variance: str = "fixedlarge") -> jax.Array:
    """dx/dtau of the probability-flow ODE at continuous index ``tau`` (a scalar in [0, T-1]).

    Args:
      denoise_fn: as in ``sample``; called twice on [B, ...], at the trained timesteps
        floor(tau) and floor(tau) + 1 (so a guided denoiser with [B] labels works).
      schedule: the trained schedule, T >= 2.
      tau: scalar continuous index.
      x: [B, ...] the state.
      target, variance: as in ``sample`` (nothing is clipped).

    Returns:
      [B, ...] the drift.
    """
    log_abar = jnp.log(schedule.alphas_cumprod)
    lo = jnp.clip(jnp.floor(tau), 0, schedule.num_timesteps - 2).astype(jnp.int32)
    w = tau - lo
    log_abar_tau = (1.0 - w) * log_abar[lo] + w * log_abar[lo + 1]
    beta = log_abar[lo] - log_abar[lo + 1]
    def pred_x0_at(index):
        t = jnp.full(x.shape[:1], index)
        prediction, _ = diffusion.split_model_output(denoise_fn(x, t), x, variance)
        return diffusion.predict_x0_and_eps(schedule, prediction, x, t, target=target,
                                            clip_x0=False)[0]

    pred_x0 = (1.0 - w) * pred_x0_at(lo) + w * pred_x0_at(lo + 1)
    abar = jnp.exp(log_abar_tau)
    score = -(x - jnp.sqrt(abar) * pred_x0) / -jnp.expm1(log_abar_tau)
    return -0.5 * beta * (x + score)


def _sum_but_batch(a: jax.Array) -> jax.Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def ode_log_likelihood(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array,
                       key: jax.Array | None = None, *, trace: str = "hutchinson",
                       probe: str = "rademacher", solver: str = "dopri5",
                       num_steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                       max_steps: int = 4096, target: str = "eps",
                       variance: str = "fixedlarge") -> ODELogLikelihood:
    """log p(x0) of the model's first noise level, by the probability-flow ODE (module doc).

    Pure in ``key``; works under ``jit`` and ``vmap``, and under ``jax.shard_map`` with
    ``check_vma=False`` (diffrax's loop creates buffers that shard_map's varying-axes check
    cannot see as per-shard).

    Args:
      denoise_fn: ``denoise_fn(x_t [B, ...], t [B]) -> model_output``, any traceable function
        (a guided one too), queried at trained timesteps only.
      schedule: the trained schedule, T >= 2.
      x0: [B, ...] data (for images: dequantized with ``dequantize``, in [-1, 1]).
      key: PRNG key of the Hutchinson probes (unused, may be None, for ``trace='exact'``).
      trace: ``'hutchinson'`` (unbiased, one probe per image: the log-likelihood's standard
        error is that of eps^T J eps integrated) or ``'exact'`` (D Jacobian-vector products per
        evaluation: for small D).
      probe: Hutchinson's probe distribution, ``'rademacher'`` (lower variance) or
        ``'gaussian'``.
      solver: a diffrax Runge-Kutta method: ``'dopri5'`` (the default, score_sde's RK45; the
        fewest evaluations for 1e-4 nats/dim in a measurement on the Gaussian oracle, see
        docs/guides/editing.md), ``'tsit5'``, ``'dopri8'`` or ``'bosh3'``.
      num_steps: ``None`` (default): adaptive steps with a PID controller at ``rtol`` /
        ``atol`` (score_sde's 1e-5); an int: that many equal steps (fixed cost, no control).
      rtol, atol: tolerances of the adaptive steps.
      max_steps: the solver's step budget (an error when exhausted).
      target, variance: as in ``sample``.

    Returns:
      An ``ODELogLikelihood``; ``log_p`` [B] in nats.
    """
    diffusion.check_choice("trace", trace, TRACES)
    diffusion.check_choice("probe", probe, PROBES)
    diffusion.check_choice("ODE solver", solver, tuple(SOLVERS))
    if schedule.num_timesteps < 2:
        raise ValueError(f"the probability-flow ODE needs T >= 2 timesteps, got "
                         f"{schedule.num_timesteps}")
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch [B, ...], got shape {x0.shape}")
    drift = lambda tau, x: probability_flow_drift(denoise_fn, schedule, tau, x, target=target,
                                                  variance=variance)
    if trace == "hutchinson":
        if key is None:
            raise ValueError("trace='hutchinson' needs a key for its probes")
        if probe == "rademacher":
            eps = jax.random.rademacher(key, x0.shape, x0.dtype)
        else:
            eps = jax.random.normal(key, x0.shape, x0.dtype)

        def field(tau, y, args):
            dx, jvp = jax.jvp(lambda x: drift(tau, x), (y[0],), (eps,))
            return dx, _sum_but_batch(eps * jvp)
    else:
        dims = math.prod(x0.shape[1:])
        basis = jnp.eye(dims, dtype=x0.dtype).reshape((dims, 1) + x0.shape[1:])

        def field(tau, y, args):
            f = lambda x: drift(tau, x)
            tangents = lambda e: jax.jvp(f, (y[0],), (jnp.broadcast_to(e, x0.shape),))[1]
            jvps = jax.vmap(tangents)(basis)  # [D, B, ...]: column d of each image's Jacobian
            return f(y[0]), jnp.sum((basis * jvps).reshape(dims, x0.shape[0], -1), axis=(0, 2))

    t1 = float(schedule.num_timesteps - 1)
    if num_steps is None:
        controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), None
    else:
        controller, dt0 = diffrax.ConstantStepSize(), t1 / num_steps
        max_steps = max(max_steps, num_steps)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), SOLVERS[solver](), 0.0, t1, dt0,
                              (x0, jnp.zeros_like(x0.reshape(x0.shape[0], -1)[:, 0])),
                              stepsize_controller=controller, max_steps=max_steps)
    x_T, divergence = sol.ys[0][-1], sol.ys[1][-1]
    prior = -0.5 * _sum_but_batch(x_T ** 2 + jnp.log(2 * jnp.pi))
    return ODELogLikelihood(prior + divergence, prior, x_T, sol.stats["num_steps"])


def dequantize(key: jax.Array, images: jax.Array) -> jax.Array:
    """Uniform dequantisation of uint8 ``images`` [B, ...] into [-1, 1], as score_sde: x =
    2 (pixel + u) / 256 - 1, u ~ U[0, 1) (datasets.py's ``uniform_dequantization``, then its
    scaler)."""
    u = jax.random.uniform(key, images.shape, jnp.float32)
    return 2.0 * (jnp.asarray(images, jnp.float32) + u) / 256.0 - 1.0


def bits_per_dim(log_p: jax.Array, num_dims: int) -> jax.Array:
    """Bits/dim of 8-bit data from ``log_p`` of its dequantised [-1, 1] version: the density
    on [0, 256)^D is 128^-D times that on [-1, 1]^D, so bpd = -log_p / (D ln 2) + 7
    (score_sde's ``offset = 7 - inverse_scaler(-1)``)."""
    return losses.nats_to_bits_per_dim(-log_p, num_dims) + 7.0
