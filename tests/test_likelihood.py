"""The probability-flow ODE likelihood against the exact density of Gaussian data."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import ddpm_jax as d
from ddpm_jax import likelihood
from test_editing import correlated_gaussian_eps
from test_sampling import MU, S, T, gaussian_eps

D = 4
MEAN = np.array([0.3, -0.2, 0.1, 0.0])
A = np.random.default_rng(0).normal(size=(D, D))
COV = 0.1 * A @ A.T + 0.05 * np.eye(D)  # eigenvalues 0.05 .. 0.9, strongly correlated


def flow_reference(schedule, x, mean, cov):
    """What the ODE computes, exactly, for x0 ~ N(mean, cov) and the exact denoiser. Every
    marginal N(sqrt(abar) mean, abar cov + (1 - abar) I) shares cov's eigenvectors U, and the
    probability-flow map keeps each eigen-coordinate's z-score, so x_T = sqrt(abar_T) mean +
    U diag(sqrt(v_T / v_0)) U^T (x - sqrt(abar_0) mean), v = abar lam + 1 - abar, from the
    first noise level (index 0) to the last. log p(x) = log N(x_T; 0, I) + 1/2 sum log(v_T /
    v_0) (the prior is N(0, I), as in the ODE); the data's own Gaussian density at x differs
    from it only by the prior's mismatch with the last marginal (``marginal_log_density``)."""
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[[0, -1]]
    lam, u = np.linalg.eigh(cov)
    v0, vT = abar[0] * lam + 1 - abar[0], abar[1] * lam + 1 - abar[1]
    centred = (np.asarray(x, np.float64) - np.sqrt(abar[0]) * mean) @ u
    x_T = np.sqrt(abar[1]) * mean + (centred * np.sqrt(vT / v0)) @ u.T
    log_p = (-0.5 * (x_T ** 2 + np.log(2 * np.pi))).sum(1) + 0.5 * np.log(vT / v0).sum()
    return x_T, log_p


def marginal_log_density(schedule, x, mean, cov):
    """log N(x; sqrt(abar_0) mean, abar_0 cov + (1 - abar_0) I), float64."""
    abar = float(schedule.alphas_cumprod[0])
    c = abar * cov + (1 - abar) * np.eye(len(mean))
    r = np.asarray(x, np.float64) - np.sqrt(abar) * mean
    _, logdet = np.linalg.slogdet(c)
    return -0.5 * (np.einsum("bi,ij,bj->b", r, np.linalg.inv(c), r) + logdet
                   + len(mean) * np.log(2 * np.pi))


@pytest.fixture(scope="module")
def setup():
    s = d.make_schedule("linear", T)
    x = jnp.asarray(np.random.default_rng(1).multivariate_normal(MEAN, COV, 64), jnp.float32)
    return s, correlated_gaussian_eps(s, MEAN, COV), x


def test_exact_trace_is_the_gaussian_log_density(setup):
    """Exact divergence, dopri5 at rtol = atol = 1e-5: log p within 1e-3 nats per dimension of
    the exact flow's (measured 4e-5 on N(0.3, 0.5^2)^16, see docs/guides/editing.md), the end
    point within 1e-3; and within 1e-2 nats/dim of the data's Gaussian log-density itself
    (the rest is the N(0, I) prior's mismatch with the last marginal: abar_T = 4e-5)."""
    s, f, x = setup
    out = jax.jit(lambda x: d.ode_log_likelihood(f, s, x, trace="exact"))(x)
    x_T, log_p = flow_reference(s, x, MEAN, COV)
    assert np.abs(np.asarray(out.log_p) - log_p).max() / D < 1e-3
    np.testing.assert_allclose(out.x_T, x_T, atol=1e-3)
    assert np.abs(np.asarray(out.log_p) - marginal_log_density(s, x, MEAN, COV)).max() / D < 1e-2
    assert 10 < int(out.solver_steps) < 200


@pytest.mark.parametrize("target", ["x0", "v"])
def test_every_target(target):
    """The isotropic oracle predicting x0 or v: the exact flow's log-likelihood as for eps."""
    s = d.make_schedule("linear", T)
    f = gaussian_eps(s)

    def other(x, t):
        eps = f(x, t)
        x0 = d.predict_x0_from_eps(s, x, t, eps)
        return x0 if target == "x0" else d.v_from_x0_eps(s, x0, t, eps)

    x = jnp.asarray(np.random.default_rng(2).normal(MU, S, (8, 2)), jnp.float32)
    out = d.ode_log_likelihood(other, s, x, trace="exact", target=target).log_p
    expected = flow_reference(s, x, np.full(2, MU), S ** 2 * np.eye(2))[1]
    assert np.abs(np.asarray(out) - expected).max() / 2 < 1e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(setup, probe):
    """One probe per image: the estimates' mean error against the exact flow is within 4 of its
    standard errors (their spread over 64 images / 8), and the spread is real (the Jacobian is
    not diagonal, so even Rademacher probes vary)."""
    s, f, x = setup
    out = jax.jit(lambda x, k: d.ode_log_likelihood(f, s, x, k, probe=probe))(
        x, jax.random.key(0))
    err = np.asarray(out.log_p, np.float64) - flow_reference(s, x, MEAN, COV)[1]
    stderr = err.std(ddof=1) / np.sqrt(len(err))
    assert err.std() > 0.05 and abs(err.mean()) < 4 * stderr, (err.mean(), stderr)


def test_fixed_steps_and_transformations(setup):
    """num_steps: that many equal steps, within 0.01 nats/dim of the exact flow; eager, vmap over keys and
    shard_map over the batch (with check_vma=False, see the docstring) equal jit per key."""
    s, f, x = setup
    x = x[:16]
    fixed = likelihood.ode_log_likelihood(f, s, x, num_steps=60, trace="exact")
    assert int(fixed.solver_steps) == 60
    np.testing.assert_allclose(fixed.log_p, flow_reference(s, x, MEAN, COV)[1], atol=0.01 * D)
    run = lambda k, x: likelihood.ode_log_likelihood(f, s, x, k, num_steps=20).log_p
    keys = jax.random.split(jax.random.key(0), 8)
    single = jax.jit(run)
    per_key = np.stack([single(k, x[2 * i:2 * i + 2]) for i, k in enumerate(keys)])
    np.testing.assert_allclose(run(keys[0], x[:2]), per_key[0], rtol=1e-5)  # eager
    np.testing.assert_allclose(jax.vmap(run)(keys, x.reshape(8, 2, D)), per_key, rtol=1e-5)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.jit(jax.shard_map(lambda k, x: run(k[0], x)[None], mesh=mesh,
                                    in_specs=(P("data"), P("data")), out_specs=P("data"),
                                    check_vma=False))(
        keys, x)
    np.testing.assert_allclose(sharded, per_key, rtol=1e-5)


def test_a_guided_denoiser_with_batch_labels(setup):
    """classifier_free_guidance over [B] labels (a conditional model's denoiser in evaluate.py's
    bpd_ode): the model is called on [B] rows, and with a label-independent model any scale
    gives the unguided likelihood."""
    s, f, x = setup
    x = x[:8]
    cond = lambda x, t, y: f(x, t) + 0.0 * y[:, None]  # [B] labels: fails on any other batch
    guided = d.classifier_free_guidance(cond, jnp.zeros(8, jnp.int32), null_label=3,
                                        guidance_scale=2.0)
    run = lambda fn: jax.jit(lambda x: likelihood.ode_log_likelihood(
        fn, s, x, num_steps=20, trace="exact").log_p)(x)
    np.testing.assert_allclose(run(guided), run(f), rtol=1e-5)


def test_bits_per_dim_as_score_sde():
    """score_sde (likelihood.py, ``get_likelihood_fn``, centred data): bpd = -(prior_logp +
    delta_logp) / np.log(2); bpd = bpd / N; offset = 7. - inverse_scaler(-1.); bpd + offset,
    with inverse_scaler(x) = (x + 1) / 2. Its data (datasets.py, ``uniform_dequantization``):
    img = (tf.random.uniform(img.shape) + img * 255.) / 256. for img in [0, 1], then the scaler
    2 img - 1."""
    log_p, n = np.array([-1500.0, 200.0]), 784
    inverse_scaler = lambda x: (x + 1.0) / 2.0
    expected = -log_p / np.log(2) / n + (7.0 - inverse_scaler(-1.0))
    np.testing.assert_allclose(likelihood.bits_per_dim(jnp.asarray(log_p), n), expected,
                               rtol=1e-6)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(50, 0)
    x = np.asarray(likelihood.dequantize(jax.random.key(0), pixels), np.float64)
    u = (x + 1.0) / 2.0 * 256.0 - pixels  # recovers tf.random.uniform's draw
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    np.testing.assert_allclose(2.0 * ((u + pixels / 255.0 * 255.0) / 256.0) - 1.0, x, atol=1e-6)


def test_bad_inputs(setup):
    s, f, x = setup
    with pytest.raises(ValueError, match=r"unknown trace 'hutch'; expected one of"):
        d.ode_log_likelihood(f, s, x, trace="hutch")
    with pytest.raises(ValueError, match=r"unknown probe 'normal'"):
        d.ode_log_likelihood(f, s, x, jax.random.key(0), probe="normal")
    with pytest.raises(ValueError, match=r"unknown ODE solver 'rk45'; expected one of"):
        d.ode_log_likelihood(f, s, x, jax.random.key(0), solver="rk45")
    with pytest.raises(ValueError, match="trace='hutchinson' needs a key"):
        d.ode_log_likelihood(f, s, x)
    with pytest.raises(ValueError, match=r"x0 must be a batch \[B, ...\], got shape \(4,\)"):
        d.ode_log_likelihood(f, s, x[0], trace="exact")
    with pytest.raises(ValueError, match="needs T >= 2 timesteps, got 1"):
        d.ode_log_likelihood(f, d.make_schedule("linear", 1), x, trace="exact")
