"""Schedules against independent float64 numpy formulas."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from ddpm_jax import make_schedule, respace


def test_linear_matches_ho_et_al():
    s = make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)
    assert s.betas.dtype == jnp.float32 and s.num_timesteps == 1000


def test_cosine_matches_nichol_dhariwal():
    T, s_ = 1000, 0.008
    f = lambda u: np.cos((u / T + s_) / (1 + s_) * np.pi / 2) ** 2
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    np.testing.assert_allclose(make_schedule("cosine", T).betas, betas, rtol=1e-5)


def test_sigmoid_is_monotone_and_bounded():
    s = make_schedule("sigmoid", 500)
    abar = np.asarray(s.alphas_cumprod)
    assert np.all(np.diff(abar) < 0) and abar[0] > 0.99 and abar[-1] < 1e-3


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
def test_derived_arrays(kind):
    s = make_schedule(kind, 100)
    b = np.asarray(s.betas, np.float64)
    abar = np.cumprod(1 - b)
    abar_prev = np.append(1.0, abar[:-1])
    np.testing.assert_allclose(s.posterior_variance, b * (1 - abar_prev) / (1 - abar), rtol=2e-5,
                               atol=1e-9)
    assert s.posterior_variance[0] == 0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]),
                               rtol=1e-5)
    np.testing.assert_allclose(s.fixedlarge_log_variance[1:], np.log(b[1:]), rtol=1e-5, atol=1e-7)
    for name, value in vars(s).items():
        assert np.all(np.isfinite(value)), name


def test_respace_keeps_marginals():
    s = make_schedule("linear", 1000)
    ts = jnp.array([0, 99, 499, 999])
    r = respace(s, ts)
    np.testing.assert_allclose(r.alphas_cumprod, s.alphas_cumprod[ts], rtol=1e-6)
    np.testing.assert_allclose(jnp.cumprod(1 - r.betas), r.alphas_cumprod, rtol=3e-5)
    jax.jit(respace)(s, ts)  # traceable


@pytest.mark.parametrize("ts", [[0, 5, 5, 9], [3, 1], [0, 10], [-1, 4], [], [[0, 1]], [0.0, 1.0]])
def test_respace_refuses_bad_timesteps(ts):
    """Unsorted, repeated or out-of-range indices gave negative betas (then NaN samples)."""
    with pytest.raises(ValueError, match=r"respace timesteps must be a non-empty strictly "
                                         r"increasing 1-D integer array within \[0, 9\]"):
        respace(make_schedule("linear", 10), np.array(ts))


@pytest.mark.parametrize("T", [10, 20, 50, 100, 1000])
def test_linear_schedule_scales_with_T(T):
    """improved-diffusion's ``get_named_beta_schedule('linear', T)`` transcribed
    (openai/improved-diffusion, improved_diffusion/gaussian_diffusion.py): Ho et al.'s endpoints
    scaled by 1000 / T, here with the end capped at 0.999 where it would reach 1 (T <= 20).
    The prior then matches N(0, I) at every T: abar_{T-1} < 1e-3 (it was 0.82 at T = 20)."""
    scale = 1000 / T
    expected = np.linspace(scale * 0.0001, min(scale * 0.02, 0.999), T, dtype=np.float64)
    s = make_schedule("linear", T)
    np.testing.assert_allclose(s.betas, expected, rtol=1e-5)
    assert s.alphas_cumprod[-1] < 1e-3
    explicit = make_schedule("linear", T, beta_start=1e-4, beta_end=0.02)
    np.testing.assert_allclose(explicit.betas, np.linspace(1e-4, 0.02, T), rtol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"unknown beta schedule 'cosin'; expected one of \['cosine', 'linear', 'sigmoid'\]"):
        make_schedule("cosin", 10)
    with pytest.raises(ValueError, match="num_timesteps must be >= 1, got 0"):
        make_schedule("linear", 0)
    with pytest.raises(TypeError, match="num_timesteps must be an int"):
        make_schedule("linear", 10.0)
    with pytest.raises(TypeError, match="bad hyperparameters"):
        make_schedule("linear", 10, beta_stat=0.1)
    with pytest.raises(ValueError, match="betas outside"):
        make_schedule("linear", 10, beta_end=1.5)
