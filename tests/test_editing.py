"""Editing (inpainting, SDEdit, DDIM inversion, slerp) against exact references: the Gaussian
oracle of test_sampling, a correlated Gaussian whose conditionals are known, one-point data."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import ddpm_jax as d
from ddpm_jax.sampling import editing
from test_sampling import MU, S, T, exact_chain_moments, gaussian_eps

MU2 = np.array([0.2, -0.1])
COV2 = np.array([[0.25, 0.2], [0.2, 0.25]])  # correlation 0.8


def correlated_gaussian_eps(schedule, mu=MU2, cov=COV2):
    """E[eps | x_t] for x0 ~ N(mu, cov), data [B, D]: sqrt(1 - abar) (abar cov +
    (1 - abar) I)^-1 (x - sqrt(abar) mu), through cov's eigendecomposition U diag(lam) U^T."""
    lam, u = (jnp.asarray(a, jnp.float32) for a in np.linalg.eigh(cov))
    mu = jnp.asarray(mu, jnp.float32)

    def denoise(x, t):
        abar = schedule.alphas_cumprod[t][:, None]
        r = (x - jnp.sqrt(abar) * mu) @ u
        return jnp.sqrt(1 - abar) * (r / (abar * lam + 1 - abar)) @ u.T
    return denoise


def one_point_denoiser(schedule, c, target="eps"):
    """The exact denoiser of data that is always ``c`` (broadcast to x), for ``target``."""
    def denoise(x, t):
        x0 = jnp.broadcast_to(c, x.shape)
        eps = d.predict_eps_from_x0(schedule, x, t, x0)
        return {"eps": eps, "x0": x0, "v": d.v_from_x0_eps(schedule, x0, t, eps)}[target]
    return denoise


@pytest.fixture(scope="module")
def small():
    s = d.make_schedule("linear", 50)
    return s, gaussian_eps(s)


# --- sample(x_T=...) ------------------------------------------------------------------------


def test_sample_from_a_given_x_T(small):
    s, f = small
    key = jax.random.key(3)
    drawn = jax.random.normal(jax.random.split(key)[0], (4, 3))
    for sampler in ["ddpm", "dpmpp_2m_sde"]:
        np.testing.assert_array_equal(d.sample(f, s, key, (4, 3), sampler=sampler, x_T=drawn),
                                      d.sample(f, s, key, (4, 3), sampler=sampler))
    other = d.sample(f, s, key, (4, 3), sampler="ddim", x_T=drawn + 1.0, clip_x0=False)
    assert not np.allclose(other, d.sample(f, s, key, (4, 3), sampler="ddim", clip_x0=False))
    with pytest.raises(ValueError, match=r"x_T has shape \(4, 2\), expected the sample shape "
                                         r"\(4, 3\)"):
        d.sample(f, s, key, (4, 3), x_T=jnp.zeros((4, 2)))


# --- inpainting -------------------------------------------------------------------------------


@pytest.mark.parametrize("target,kw", [("eps", dict(sampler="ddpm", resample=3, jump=5)),
                                       ("v", dict(sampler="ddim", eta=0.0)),
                                       ("x0", dict(sampler="ddim", eta=1.0, num_steps=10))])
def test_inpaint_keeps_known_and_recovers_one_point_data(small, target, kw):
    """The known region is ``known`` bit for bit; with one-point data c the filled region is c
    (every target, both samplers, with resampling)."""
    s, _ = small
    c = jnp.array([0.7, -1.3, 2.5, 0.1])
    known = jax.random.normal(jax.random.key(1), (3, 4))
    mask = jnp.array([1.0, 0.0, 1.0, 0.0])
    out = editing.inpaint(one_point_denoiser(s, c, target), s, jax.random.key(0), known, mask,
                          target=target, clip_x0=False, **kw)
    np.testing.assert_array_equal(out[:, ::2], known[:, ::2])
    np.testing.assert_allclose(out[:, 1::2], jnp.broadcast_to(c[1::2], (3, 2)), atol=1e-4)


@pytest.mark.parametrize("kw", [dict(sampler="ddpm"), dict(sampler="ddim", eta=0.5, num_steps=10)])
def test_inpaint_with_nothing_known_is_sample(small, kw):
    s, f = small
    key = jax.random.key(7)
    out = editing.inpaint(f, s, key, jnp.zeros((5, 3)), jnp.zeros((3,)), **kw)
    np.testing.assert_allclose(out, d.sample(f, s, key, (5, 3), **kw), atol=1e-6)


def _conditional_moments(schedule, n, **kw):
    """Samples of x_2 given x_1 = 0.8 under N(MU2, COV2): their mean and variance minus the
    exact conditional ones, and each one's Monte Carlo standard error."""
    known = jnp.tile(jnp.array([[0.8, 0.0]]), (n, 1))
    x = jax.jit(lambda k: editing.inpaint(correlated_gaussian_eps(schedule), schedule, k, known,
                                          jnp.array([1.0, 0.0]), clip_x0=False, **kw))(
        jax.random.key(0))
    y = np.asarray(x[:, 1], np.float64)
    mean = MU2[1] + COV2[0, 1] / COV2[0, 0] * (0.8 - MU2[0])  # 0.38
    var = COV2[1, 1] - COV2[0, 1] ** 2 / COV2[0, 0]  # 0.09
    return (y.mean() - mean, y.var() - var,
            np.sqrt(y.var() / n), y.var() * np.sqrt(2 / (n - 1)))


def test_inpaint_of_independent_coordinates_is_the_plain_chain():
    """Without correlation the exact conditional is the marginal, and replacement alone samples
    what the sampler samples from noise: the filled coordinate's mean and variance match the
    exact moments of the ancestral chain (test_sampling's float64 recursion, T = 1000) within 5
    Monte Carlo standard errors."""
    s, n = d.make_schedule("linear", T), 4000
    known = jnp.tile(jnp.array([[0.8, 0.0]]), (n, 1))
    x = jax.jit(lambda k: editing.inpaint(gaussian_eps(s), s, k, known, jnp.array([1.0, 0.0]),
                                          clip_x0=False))(jax.random.key(0))
    y = np.asarray(x[:, 1], np.float64)
    m, v = exact_chain_moments("ddpm", "fixedlarge")
    assert abs(y.mean() - m) < 5 * np.sqrt(v / n)
    assert abs(y.var() - v) < 5 * v * np.sqrt(2 / (n - 1))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_resampling_moves_the_fill_toward_the_exact_conditional(sampler):
    """x_1, x_2 with correlation 0.8, x_2 filled in given x_1 = 0.8 (exact conditional
    N(0.38, 0.09)), T = 50. Replacement alone (resample=1) ignores most of the correlation: its
    mean is ~0.19 low, over 10 Monte Carlo standard errors (~0.007 at n = 2000). RePaint's
    resampling (resample=8) must cut the mean's error and the KL divergence to the exact
    conditional to under a third. Measured: ancestral mean error -0.19 -> -0.03, KL 0.27 ->
    0.005; DDIM eta 1 -0.19 -> -0.03, KL 0.20 -> 0.06 (its variance then falls short: the
    chain's own discretisation at T = 50)."""
    s, n = d.make_schedule("linear", 50), 2000
    kw = dict(sampler=sampler, eta=1.0) if sampler == "ddim" else dict(sampler=sampler)
    var = COV2[1, 1] - COV2[0, 1] ** 2 / COV2[0, 0]
    kl = lambda dm, dv: 0.5 * ((var + dv) / var - 1 - np.log((var + dv) / var) + dm ** 2 / var)
    m1, v1, se_m1, _ = _conditional_moments(s, n, **kw)
    m8, v8, _, _ = _conditional_moments(s, n, resample=8, **kw)
    assert m1 < -0.1 and abs(m1) > 10 * se_m1, (m1, se_m1)
    assert abs(m8) < abs(m1) / 3 and kl(m8, v8) < kl(m1, v1) / 3, (m1, v1, m8, v8)


def test_inpaint_with_classifier_free_guidance(small):
    """A guided denoiser (one point per class, c_y and c_null): the fill is c_null + s (c_y -
    c_null) per image, the known region untouched."""
    s, _ = small
    centres = jnp.array([-0.5, 0.25, 0.0])  # classes 0, 1 and the null label 2
    cond = lambda x, t, y: d.predict_eps_from_x0(s, x, t, jnp.broadcast_to(centres[y][:, None],
                                                                            x.shape))
    labels = jnp.array([0, 1])
    guided = d.classifier_free_guidance(cond, labels, null_label=2, guidance_scale=2.0)
    known = jnp.ones((2, 3))
    out = editing.inpaint(guided, s, jax.random.key(0), known, jnp.array([0.0, 1.0, 0.0]),
                          sampler="ddim", num_steps=10, clip_x0=False)
    np.testing.assert_array_equal(out[:, 1], known[:, 1])
    np.testing.assert_allclose(out[:, ::2], 2.0 * centres[labels][:, None] * jnp.ones((2, 2)),
                               atol=1e-4)


# --- SDEdit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "heun"])
def test_sdedit_strength_one_is_sample(small, sampler):
    s, f = small
    key, image = jax.random.key(4), jnp.full((3, 2), 0.9)
    np.testing.assert_array_equal(
        editing.sdedit(f, s, key, image, strength=1.0, sampler=sampler, num_steps=10),
        d.sample(f, s, key, (3, 2), sampler=sampler, num_steps=10))


def test_sdedit_small_strength_returns_the_image(small):
    s, f = small
    image = jax.random.normal(jax.random.key(1), (3, 2))
    np.testing.assert_array_equal(editing.sdedit(f, s, jax.random.key(0), image, strength=0.009),
                                  image)  # round(0.009 * 50) = 0 steps
    one_step = editing.sdedit(f, s, jax.random.key(0), image, strength=0.02, clip_x0=False)
    np.testing.assert_allclose(one_step, image, atol=0.05)  # sigma_1 = 0.045 of noise, denoised


@pytest.mark.parametrize("sampler,target", [("ddpm", "eps"), ("dpmpp_2m_sde", "v"),
                                            ("heun", "x0")])
def test_sdedit_partial_chain_recovers_one_point_data(small, sampler, target):
    """The chain is the schedule's first round(strength T) timesteps: with one-point data c and
    its exact denoiser every sampler returns c from any start."""
    s, _ = small
    c = jnp.array([0.4, -0.2])
    out = editing.sdedit(one_point_denoiser(s, c, target), s, jax.random.key(2),
                         jnp.zeros((4, 2)), strength=0.5, sampler=sampler, num_steps=8,
                         target=target, clip_x0=False)
    np.testing.assert_allclose(out, jnp.broadcast_to(c, (4, 2)), atol=1e-4)


def test_sdedit_moments_of_gaussian_data():
    """Gaussian data, exact denoiser, deterministic DDIM over all k = 500 of T = 1000 steps:
    x_k = sqrt(abar_k) y + sqrt(1 - abar_k) z, then the probability-flow map back, which for
    Gaussian data keeps z-scores: x_0 ~= mu + s (x_k - sqrt(abar_k) mu) / sqrt(abar_k s^2 +
    1 - abar_k), within DDIM's discretisation (~1e-3 at 500 steps)."""
    s = d.make_schedule("linear", T)
    y = jnp.linspace(-1.0, 1.5, 8)[:, None]
    key = jax.random.key(5)
    out = editing.sdedit(gaussian_eps(s), s, key, y, strength=0.5, sampler="ddim",
                         clip_x0=False)
    abar = float(s.alphas_cumprod[499])
    z = jax.random.normal(jax.random.split(key)[0], y.shape)
    x_k = np.sqrt(abar) * y + np.sqrt(1 - abar) * z
    expected = MU + S * (x_k - np.sqrt(abar) * MU) / np.sqrt(abar * S**2 + 1 - abar)
    np.testing.assert_allclose(out, expected, atol=5e-3)


# --- DDIM inversion ---------------------------------------------------------------------------


def test_ddim_inversion_round_trip_converges_at_first_order():
    """Gaussian data, exact denoiser, T = 1000: inverting with S steps and sampling back with
    deterministic DDIM over the same S steps returns x_0 with an error that falls as S^-1
    (fitted slope of log max error vs log S over S = 10, 20, 40, 80; measured -1.01, max errors
    0.40, 0.20, 0.099, 0.049 for x_0 of std 0.5)."""
    s = d.make_schedule("linear", T)
    x0 = jnp.asarray(np.random.default_rng(0).normal(MU, S, (64, 1)), jnp.float32)
    f, steps, errors = gaussian_eps(s), np.array([10, 20, 40, 80]), []
    for k in steps:
        x_T = editing.ddim_invert(f, s, x0, num_steps=int(k))
        back = d.sample(f, s, jax.random.key(0), x0.shape, sampler="ddim", eta=0.0,
                        num_steps=int(k), spacing="time", clip_x0=False, x_T=x_T)
        errors.append(float(jnp.abs(back - x0).max()))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert -1.15 < slope < -0.85 and errors[-1] < 0.06, (slope, errors)
    # x_T is the (approximate) Gaussian z-score of x_0: the probability-flow ODE keeps it.
    x_T = editing.ddim_invert(f, s, x0, num_steps=80)
    np.testing.assert_allclose(x_T, (x0 - MU) / S, atol=0.15)


@pytest.mark.parametrize("target", ["x0", "v"])
def test_ddim_inversion_is_the_same_for_every_target(small, target):
    s, _ = small
    c = jnp.array([0.3, -0.6])
    x0 = jax.random.normal(jax.random.key(0), (4, 2))
    ref = editing.ddim_invert(one_point_denoiser(s, c), s, x0, num_steps=10)
    np.testing.assert_allclose(editing.ddim_invert(one_point_denoiser(s, c, target), s, x0,
                                                   num_steps=10, target=target), ref, atol=1e-4)


# --- slerp ------------------------------------------------------------------------------------


def test_slerp():
    z0, z1 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
    out = editing.slerp(z0, z1, jnp.linspace(0, 1, 5))
    assert out.shape == (5, 1, 2)
    np.testing.assert_allclose(out[0], z0, atol=1e-6)
    np.testing.assert_allclose(out[-1], z1, atol=1e-6)
    angles = np.linspace(0, np.pi / 2, 5)
    np.testing.assert_allclose(out[:, 0], np.stack([np.cos(angles), np.sin(angles)], 1),
                               atol=1e-6)
    a, b = jax.random.normal(jax.random.key(0), (2, 64))
    norms = jnp.linalg.norm(editing.slerp(a, b * jnp.linalg.norm(a) / jnp.linalg.norm(b), 0.3))
    np.testing.assert_allclose(norms, jnp.linalg.norm(a), rtol=1e-5)  # stays on the sphere
    np.testing.assert_allclose(editing.slerp(a, 2 * a, 0.5), 1.5 * a, rtol=1e-5)  # parallel


# --- errors and transformations ---------------------------------------------------------------


def test_bad_inputs(small):
    s, f = small
    key, known = jax.random.key(0), jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4, 1\) does not broadcast to "
                                         r"known's shape \(2, 4, 4, 1\)"):
        editing.inpaint(f, s, key, known, jnp.ones((3, 4, 1)))
    with pytest.raises(ValueError, match=r"mask values must be 0 \(fill in\) or 1 \(keep\), "
                                         r"got \[0.5\]"):
        editing.inpaint(f, s, key, known, jnp.full((4, 4, 1), 0.5).at[0].set(1.0))
    with pytest.raises(ValueError, match="jump=3 must divide the number of sampling steps 50"):
        editing.inpaint(f, s, key, known, jnp.ones((4, 4, 1)), resample=2, jump=3)
    with pytest.raises(ValueError, match="resample must be >= 1, got 0"):
        editing.inpaint(f, s, key, known, jnp.ones((4, 4, 1)), resample=0)
    with pytest.raises(ValueError, match=r"unknown inpainting sampler 'heun'; expected one of "
                                         r"\['ddim', 'ddpm'\]"):
        editing.inpaint(f, s, key, known, jnp.ones((4, 4, 1)), sampler="heun")
    for strength in [0.0, 1.5, -0.2]:
        with pytest.raises(ValueError, match=f"strength must be in \(0, 1\], got {strength}"):
            editing.sdedit(f, s, key, known, strength=strength)
    with pytest.raises(ValueError, match=r"slerp needs z0 and z1 of one shape"):
        editing.slerp(jnp.zeros(3), jnp.zeros(4), 0.5)


def _edits(s, f):
    known, mask = jnp.linspace(-1, 1, 6).reshape(2, 3), jnp.array([1.0, 0.0, 1.0])
    return {"inpaint": lambda k: editing.inpaint(f, s, k, known, mask, num_steps=10, resample=2,
                                                 jump=5),
            "sdedit": lambda k: editing.sdedit(f, s, k, known, strength=0.6,
                                               sampler="dpmpp_2m_sde", num_steps=10)}


@pytest.mark.parametrize("name", ["inpaint", "sdedit"])
def test_jit_vmap_shard_map_equal_eager(small, name):
    s, f = small
    fn = _edits(s, f)[name]
    keys = jax.random.split(jax.random.key(0), jax.device_count())
    eager = np.stack([fn(k) for k in keys[:2]])
    np.testing.assert_allclose(jax.jit(fn)(keys[0]), eager[0], atol=1e-5)
    batched = jax.vmap(fn)(keys)
    np.testing.assert_allclose(batched[:2], eager, atol=1e-5)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.jit(jax.shard_map(lambda k: fn(k[0])[None], mesh=mesh, in_specs=P("data"),
                                    out_specs=P("data")))(keys)
    np.testing.assert_allclose(sharded, batched, atol=1e-5)
