"""The forward process, the true posterior and the reverse step, against float64 references."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import ddpm_jax as d
from ddpm_jax import diffusion


def _betas(kind, T):
    if kind == "linear":
        return np.linspace(1e-4, 0.02, T)
    f = lambda i: np.cos((i / T + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_posterior_is_bayes_rule(kind):
    """q(x_{t-1}|x_t,x0) from conjugate Gaussian algebra: prior q(x_{t-1}|x0), likelihood q(x_t|x_{t-1})."""
    T = 1000
    s = d.make_schedule(kind, T)
    betas = _betas(kind, T)
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    t = np.concatenate([np.arange(1, 40), rng.integers(1, T, 200), [T - 1]])
    x0 = rng.uniform(-1, 1, (len(t), 3))
    x_t = rng.normal(size=(len(t), 3))
    prior_var = 1 - abar[t - 1]
    prior_mean = np.sqrt(abar[t - 1])[:, None] * x0
    lik_var, lik_scale = betas[t], np.sqrt(1 - betas[t])
    post_var = 1 / (1 / prior_var + lik_scale**2 / lik_var)
    post_mean = post_var[:, None] * (prior_mean / prior_var[:, None]
                                     + (lik_scale / lik_var)[:, None] * x_t)
    mean, var, log_var = jax.jit(d.q_posterior)(s, jnp.asarray(x0, jnp.float32),
                                                jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
    np.testing.assert_allclose(mean, post_mean, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(var[:, 0], post_var, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(log_var[:, 0], np.log(post_var), rtol=1e-5)


def test_q_posterior_at_t0_is_x0():
    s = d.make_schedule("linear", 10)
    x0, x_t = jnp.array([[0.3]]), jnp.array([[-2.0]])
    mean, var, _ = d.q_posterior(s, x0, x_t, jnp.array([0]))
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    assert var[0, 0] == 0


def test_one_reverse_step_by_hand():
    """T = 2, betas (0.1, 0.2). Reverse step at paper t = 2 (index 1) with x_2 = 1, eps_hat = 0.5.

    alpha_2 = 0.8, abar_2 = 0.9 * 0.8 = 0.72, 1 - abar_2 = 0.28.
    mu = (1 - 0.2 / sqrt(0.28) * 0.5) / sqrt(0.8) = (1 - 0.188982) / 0.894427 = 0.906746.
    fixedlarge sigma^2 = beta_2 = 0.2; fixedsmall sigma^2 = (1 - abar_1) / (1 - abar_2) beta_2
    = 0.1 / 0.28 * 0.2 = 0.0714286. Then paper t = 1 (index 0) adds no noise.
    """
    s = d.make_schedule("linear", 2, beta_start=0.1, beta_end=0.2)
    x2, eps = jnp.array([1.0]), jnp.array([0.5])
    t = jnp.array([1])
    out = d.p_mean_variance(s, eps, x2, t, variance="fixedlarge", clip_x0=False)
    np.testing.assert_allclose(out.mean, [0.906746], atol=1e-6)
    np.testing.assert_allclose(out.variance, [0.2], rtol=1e-6)
    small = d.p_mean_variance(s, eps, x2, t, variance="fixedsmall")
    np.testing.assert_allclose(small.variance, [0.0714286], rtol=1e-5)
    key = jax.random.key(7)
    z = jax.random.normal(key, (1,))
    x1, _ = d.p_sample_step(s, eps, x2, t, key, variance="fixedlarge", clip_x0=False)
    np.testing.assert_allclose(x1, 0.906746 + np.sqrt(0.2) * z, atol=1e-6)
    # The x0 prediction: (1 - sqrt(0.28) 0.5) / sqrt(0.72) = 0.735425 / 0.848528 = 0.866706.
    np.testing.assert_allclose(out.pred_x0, [0.866706], atol=1e-6)
    x0_a, _ = d.p_sample_step(s, eps, x1, jnp.array([0]), jax.random.key(1))
    x0_b, _ = d.p_sample_step(s, eps, x1, jnp.array([0]), jax.random.key(2))
    np.testing.assert_array_equal(x0_a, x0_b)


def test_eps_mean_equals_posterior_of_predicted_x0():
    s = d.make_schedule("cosine", 100)
    k1, k2 = jax.random.split(jax.random.key(0))
    x_t = jax.random.normal(k1, (64, 4, 4, 2))
    eps = jax.random.normal(k2, x_t.shape)
    t = jnp.arange(64) + 30
    out = d.p_mean_variance(s, eps, x_t, t, clip_x0=False)
    via_x0, _, _ = d.q_posterior(s, out.pred_x0, x_t, t)
    np.testing.assert_allclose(out.mean, via_x0, atol=2e-4, rtol=1e-4)


def test_q_sample_monte_carlo():
    """Empirical mean/var of x_t vs sqrt(abar) x0 and 1 - abar; bars are 5 standard errors."""
    s = d.make_schedule("linear", 1000)
    n, x0 = 200_000, 0.7
    for t in [0, 250, 999]:
        noise = jax.random.normal(jax.random.key(t), (n,))
        x_t = d.q_sample(s, jnp.full((n,), x0), jnp.full((n,), t), noise)
        abar = float(s.alphas_cumprod[t])
        var = 1 - abar
        assert abs(float(x_t.mean()) - np.sqrt(abar) * x0) < 5 * np.sqrt(var / n)
        assert abs(float(x_t.var()) - var) < 5 * var * np.sqrt(2 / (n - 1))


def test_round_trips():
    s = d.make_schedule("linear", 1000)
    k1, k2 = jax.random.split(jax.random.key(3))
    x0 = jax.random.uniform(k1, (16, 5), minval=-1, maxval=1)
    eps = jax.random.normal(k2, x0.shape)
    t = jnp.arange(16) * 60
    x_t = d.q_sample(s, x0, t, eps)
    v = d.v_from_x0_eps(s, x0, t, eps)
    np.testing.assert_allclose(d.predict_x0_from_v(s, x_t, t, v), x0, atol=1e-5)
    np.testing.assert_allclose(d.predict_eps_from_v(s, x_t, t, v), eps, atol=1e-5)
    np.testing.assert_allclose(d.predict_eps_from_x0(s, x_t, t, x0), eps, atol=1e-4)
    # x0 from eps divides by sqrt(abar_t), which is 0.006 at t = T-1: scale the tolerance.
    np.testing.assert_allclose(d.predict_x0_from_eps(s, x_t, t, eps), x0, atol=1e-3)
    for target, pred in [("eps", eps), ("x0", x0), ("v", v)]:
        x0_hat, eps_hat = diffusion.predict_x0_and_eps(s, pred, x_t, t, target=target, clip_x0=False)
        np.testing.assert_allclose(x0_hat, x0, atol=1e-3)
        np.testing.assert_allclose(eps_hat, eps, atol=1e-3)


def test_learned_range_interpolates_log_variances():
    s = d.make_schedule("linear", 100)
    x_t = jnp.zeros((3, 2, 2, 1))
    t = jnp.array([5, 50, 99])
    for v, expected in [(-1.0, s.posterior_log_variance_clipped[t]), (1.0, s.log_betas[t]),
                        (0.0, 0.5 * (s.posterior_log_variance_clipped[t] + s.log_betas[t]))]:
        out = jnp.concatenate([jnp.zeros_like(x_t), jnp.full_like(x_t, v)], axis=-1)
        pmv = d.p_mean_variance(s, out, x_t, t, variance="learned_range")
        np.testing.assert_allclose(pmv.log_variance[:, 0, 0, 0], expected, rtol=1e-6)


def test_clip_x0_is_the_default_of_every_sampling_function():
    """One default: p_mean_variance, p_sample_step, every sampler step and ``sample`` clip x_0."""
    import inspect
    s = d.make_schedule("linear", 100)
    x_t = jnp.full((1, 3), 5.0)
    out = d.p_mean_variance(s, jnp.full((1, 3), 3.0), x_t, jnp.array([10]), target="x0")
    np.testing.assert_array_equal(out.pred_x0, jnp.ones((1, 3)))
    unclipped = d.p_mean_variance(s, jnp.full((1, 3), 3.0), x_t, jnp.array([10]), target="x0",
                                  clip_x0=False)
    np.testing.assert_array_equal(unclipped.pred_x0, jnp.full((1, 3), 3.0))
    for fn in (d.p_mean_variance, d.p_sample_step, d.ddim_step, d.dpmpp_2m_step, d.heun_step,
               d.sample):
        assert inspect.signature(fn).parameters["clip_x0"].default is True, fn.__name__


def test_jit_vmap_and_finiteness():
    s = d.make_schedule("linear", 100)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    t = jnp.array([0, 1, 50, 99])
    f = jax.jit(lambda s, x, t: d.p_mean_variance(s, x, x, t, variance="fixedsmall"))
    out = f(s, x, t)
    per_example = jax.vmap(lambda x, t: d.p_mean_variance(s, x[None], x[None], t[None],
                                                          variance="fixedsmall"))(x, t)
    np.testing.assert_allclose(per_example.mean[:, 0], out.mean, atol=1e-6)
    jax.tree.map(lambda a: np.testing.assert_array_equal(np.isfinite(a), True), out)


def test_bad_inputs():
    s = d.make_schedule("linear", 10)
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 9\], got min 0 max 10"):
        d.q_sample(s, x, jnp.array([0, 10]), x)
    with pytest.raises(AssertionError):
        d.q_sample(s, x, jnp.array([0, 1]), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"unknown target 'epsilon'; expected one of \['eps', 'v', 'x0'\]"):
        d.p_mean_variance(s, x, x, jnp.array([1, 2]), target="epsilon")
    with pytest.raises(ValueError, match="unknown variance 'large'"):
        d.p_mean_variance(s, x, x, jnp.array([1, 2]), variance="large")
    with pytest.raises(ValueError, match=r"timesteps t must have shape \[B\] = \[2\] \(or be a "
                                         r"scalar\), got shape \(3,\) for x of shape \(2, 3\)"):
        d.q_sample(s, x, jnp.array([0, 1, 2]), x)
    with pytest.raises(ValueError, match=r"timesteps t must have shape \[B\] = \[2\]"):
        d.p_mean_variance(s, x, x, jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"timesteps t must have shape \[B\] = \[2\]"):
        jax.jit(lambda t: d.q_posterior(s, x, x, t))(jnp.zeros((2, 1), jnp.int32))  # traced too
    with pytest.raises(ValueError, match="expected 6 channels"):
        d.p_mean_variance(s, x, x, jnp.array([1, 2]), variance="learned_range")
