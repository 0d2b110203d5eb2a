"""KL, discretised likelihood, training losses and the bound against closed forms."""

import numpy as np
import pytest
import scipy.stats

import jax
import jax.numpy as jnp

import ddpm_jax as d


def test_normal_kl_closed_form():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 2.0
    expected = np.log(np.sqrt(v2 / v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    np.testing.assert_allclose(d.normal_kl(m1, np.log(v1), m2, np.log(v2)), expected, rtol=1e-6)
    assert float(d.normal_kl(1.5, -3.0, 1.5, -3.0)) == 0.0


@pytest.mark.parametrize("mean,log_scale", [(0.0, np.log(0.5)), (0.93, np.log(0.01)),
                                            (-1.7, np.log(3.0)), (0.2, np.log(1e-3))])
def test_discretized_likelihood_is_a_distribution(mean, log_scale):
    bins = jnp.arange(256) / 127.5 - 1.0
    logp = d.discretized_gaussian_log_likelihood(
        bins[None], mean=jnp.full((1, 256), mean), log_scale=jnp.full((1, 256), log_scale))
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp)), 1.0, atol=1e-5)
    # Interior bins against scipy's float64 CDF, where the probability is not negligible.
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 127.5 - 1.0, [np.inf]])
    ref = np.diff(scipy.stats.norm.cdf(edges, loc=mean, scale=np.exp(log_scale)))
    big = ref > 1e-6
    np.testing.assert_allclose(np.exp(logp[0])[big], ref[big], rtol=1e-3)
    assert np.all(np.isfinite(logp))


def test_prior_kl_matches_closed_form():
    s = d.make_schedule("linear", 1000)
    x0 = jnp.array([[0.5, -1.0]])
    abar = float(s.alphas_cumprod[-1])
    m, v = np.sqrt(abar) * np.array([0.5, -1.0]), 1 - abar
    expected = np.sum(0.5 * (v + m**2 - 1 - np.log(v)))
    np.testing.assert_allclose(d.prior_kl(s, x0), [expected], rtol=1e-3)


def test_simple_loss_monte_carlo():
    """A zero eps-predictor has E[(eps - 0)^2] = 1; the batch mean of 4096 x 16 terms has
    standard error sqrt(2 / 65536) = 0.0055."""
    s = d.make_schedule("linear", 100)
    x0 = jnp.zeros((4096, 16))
    loss = d.training_loss(lambda x, t: jnp.zeros_like(x), s, x0, jax.random.key(0))
    assert loss.shape == (4096,)
    assert abs(float(loss.mean()) - 1.0) < 5 * 0.0055


def test_perfect_predictor_has_zero_loss_and_zero_kl():
    s = d.make_schedule("linear", 100)
    x0 = jax.random.uniform(jax.random.key(1), (32, 6), minval=-1, maxval=1)
    oracle = lambda x, t: x0
    assert float(jnp.max(d.training_loss(oracle, s, x0, jax.random.key(2), target="x0"))) == 0.0
    # With the true x0 and the posterior's own variance, every KL term for t > 0 vanishes.
    t = jnp.arange(1, 33)
    x_t = d.q_sample(s, x0, t, jax.random.normal(jax.random.key(3), x0.shape))
    kl = d.vlb_term(s, x0, x0, x_t, t, target="x0", variance="fixedsmall")
    np.testing.assert_allclose(kl, 0.0, atol=1e-3)


def test_hybrid_loss_stops_mean_gradient_in_vlb():
    s = d.make_schedule("linear", 50)
    x0 = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1), minval=-1, maxval=1)

    def loss(params, kind):
        out = lambda x, t: jnp.concatenate([params["eps"] * x, params["v"] * jnp.ones_like(x)], -1)
        return d.training_loss(out, s, x0, jax.random.key(0), variance="learned_range",
                               loss=kind).mean()

    params = {"eps": 0.3, "v": 0.1}
    g_hybrid = jax.grad(loss)(params, "hybrid")
    g_simple = jax.grad(loss)(params, "simple")
    np.testing.assert_allclose(g_hybrid["eps"], g_simple["eps"], rtol=1e-6)
    assert g_simple["v"] == 0 and g_hybrid["v"] != 0
    with pytest.raises(ValueError, match="needs variance='learned_range'"):
        d.training_loss(lambda x, t: x, s, x0, jax.random.key(0), loss="hybrid")
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        d.training_loss(lambda x, t: x, s, x0, jax.random.key(0), loss="l2")


def test_vlb_loss_is_unbiased_for_the_bound():
    """E_t[T * L_t] = sum_t L_t: the 'vlb' loss (random t) and the scan over all t (random x_t)
    estimate the same mean; they must agree within 5 combined standard errors."""
    s = d.make_schedule("linear", 20)
    x0 = jnp.round(jax.random.uniform(jax.random.key(1), (1, 3), minval=-1, maxval=1) * 127.5) / 127.5
    shrink = lambda x, t: 0.5 * x
    n = 20000
    batch = jnp.repeat(x0, n, 0)
    bound = d.variational_bound(shrink, s, batch, jax.random.key(2))
    scan_estimate = bound.total - bound.prior
    losses = d.training_loss(shrink, s, batch, jax.random.key(3), loss="vlb")
    stderr = np.sqrt((losses.var() + scan_estimate.var()) / n)
    assert abs(float(losses.mean() - scan_estimate.mean())) < 5 * stderr


def test_variational_bound_structure():
    s = d.make_schedule("linear", 30)
    x0 = jnp.round(jax.random.uniform(jax.random.key(1), (4, 2, 2, 1), minval=-1, maxval=1)
                   * 127.5) / 127.5
    b = jax.jit(lambda s, x, k: d.variational_bound(lambda x, t: 0.9 * x, s, x, k))(
        s, x0, jax.random.key(0))
    assert b.diffusion_terms.shape == (29, 4)
    np.testing.assert_allclose(b.total, b.prior + b.decoder + b.diffusion_terms.sum(0), rtol=1e-5)
    assert np.all(b.diffusion_terms >= -1e-4) and np.all(b.prior >= 0) and np.all(b.decoder > 0)


def _min_snr_weight_reference(betas, t, target, gamma):
    """numpy float64 transcription of diffusers' examples/text_to_image/train_text_to_image.py
    (``compute_snr``; ``mse_loss_weights = stack([snr, gamma]).min() / snr`` for epsilon,
    ``/ (snr + 1)`` for v_prediction) and of lucidrains' denoising_diffusion_pytorch
    ``GaussianDiffusion.__init__`` (``loss_weight = maybe_clipped_snr`` for pred_x0)."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
    snr = alphas_cumprod[t] / (1.0 - alphas_cumprod[t])
    clipped = np.minimum(snr, gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[target]


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weight_matches_float64_reference(target, gamma):
    s = d.make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # Ho et al.'s schedule, not ours
    t = np.array([0, 1, 10, 100, 250, 500, 999])
    weight = jax.jit(lambda t: d.min_snr_weight(s, t, target=target, gamma=gamma))(t)
    np.testing.assert_allclose(weight, _min_snr_weight_reference(betas, t, target, gamma),
                               rtol=2e-5)
    assert weight.shape == t.shape


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_min_snr_loss_is_the_weighted_squared_error(target):
    s = d.make_schedule("linear", 100)
    x0 = jax.random.uniform(jax.random.key(3), (64, 5), minval=-1, maxval=1)
    seen = {}

    def predictor(x, t):
        seen["t"] = np.asarray(t)
        return 0.3 * x

    key = jax.random.key(4)
    plain = d.training_loss(predictor, s, x0, key, target=target)
    weighted = d.training_loss(predictor, s, x0, key, target=target, loss_weighting="min_snr",
                               min_snr_gamma=2.0)
    ref = _min_snr_weight_reference(np.asarray(s.betas, np.float64), seen["t"], target, 2.0)
    np.testing.assert_allclose(weighted, ref * np.asarray(plain), rtol=1e-4)
    assert not np.allclose(weighted, plain)


def test_min_snr_rejects_bad_options():
    s = d.make_schedule("linear", 10)
    x0, fn, key = jnp.zeros((2, 3)), (lambda x, t: x), jax.random.key(0)
    with pytest.raises(ValueError, match="unknown loss_weighting 'snr'"):
        d.training_loss(fn, s, x0, key, loss_weighting="snr")
    with pytest.raises(ValueError, match="loss='vlb'"):
        d.training_loss(fn, s, x0, key, loss="vlb", loss_weighting="min_snr")
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        d.training_loss(fn, s, x0, key, loss_weighting="min_snr", min_snr_gamma=0.0)


def _improved_diffusion_hybrid_loss(betas, x_start, t, noise, model_output):
    """improved-diffusion's L_hybrid for one step, transcribed in float64 numpy from
    openai/improved-diffusion, improved_diffusion/gaussian_diffusion.py: ``GaussianDiffusion``
    ``__init__`` (schedule arrays), ``q_sample``, ``q_posterior_mean_variance``,
    ``p_mean_variance`` (LEARNED_RANGE, EPSILON, clip_denoised=False), ``_vb_terms_bpd`` and
    ``training_losses`` (LossType.RESCALED_MSE), with improved_diffusion/losses.py
    ``normal_kl`` and ``discretized_gaussian_log_likelihood``. Channels last instead of first
    (``mean_flat`` averages over every non-batch axis either way). One substitution:
    ``approx_standard_normal_cdf`` (tanh) is the exact normal CDF, which ddpm_jax computes."""
    def extract(arr, shape):  # _extract_into_tensor
        return arr[t].reshape((-1,) + (1,) * (len(shape) - 1))

    def mean_flat(x):
        return x.mean(axis=tuple(range(1, x.ndim)))

    num_timesteps = len(betas)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
    sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    posterior_log_variance_clipped = np.log(np.append(posterior_variance[1],
                                                      posterior_variance[1:]))
    posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)

    def normal_kl(mean1, logvar1, mean2, logvar2):
        return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2)
                      + ((mean1 - mean2) ** 2) * np.exp(-logvar2))

    def discretized_gaussian_log_likelihood(x, *, means, log_scales):
        centered_x = x - means
        inv_stdv = np.exp(-log_scales)
        cdf_plus = scipy.stats.norm.cdf(inv_stdv * (centered_x + 1.0 / 255.0))
        cdf_min = scipy.stats.norm.cdf(inv_stdv * (centered_x - 1.0 / 255.0))
        log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
        log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
        cdf_delta = cdf_plus - cdf_min
        return np.where(x < -0.999, log_cdf_plus,
                        np.where(x > 0.999, log_one_minus_cdf_min,
                                 np.log(np.maximum(cdf_delta, 1e-12))))

    def q_posterior_mean_variance(x_start, x_t):
        mean = (extract(posterior_mean_coef1, x_t.shape) * x_start
                + extract(posterior_mean_coef2, x_t.shape) * x_t)
        return mean, extract(posterior_log_variance_clipped, x_t.shape)

    def p_mean_variance(model_output, x):
        model_output, model_var_values = np.split(model_output, 2, axis=-1)
        min_log = extract(posterior_log_variance_clipped, x.shape)
        max_log = extract(np.log(betas), x.shape)
        frac = (model_var_values + 1) / 2
        model_log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (extract(sqrt_recip_alphas_cumprod, x.shape) * x
                       - extract(sqrt_recipm1_alphas_cumprod, x.shape) * model_output)
        model_mean, _ = q_posterior_mean_variance(pred_xstart, x)
        return model_mean, model_log_variance

    def _vb_terms_bpd(x_start, x_t):
        true_mean, true_log_variance_clipped = q_posterior_mean_variance(x_start, x_t)
        mean, log_variance = p_mean_variance(model_output, x_t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance_clipped, mean, log_variance))
        kl = kl / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=mean, log_scales=0.5 * log_variance)
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        return np.where((t == 0), decoder_nll, kl)

    x_t = (extract(np.sqrt(alphas_cumprod), x_start.shape) * x_start
           + extract(np.sqrt(1.0 - alphas_cumprod), x_start.shape) * noise)
    vb = _vb_terms_bpd(x_start, x_t) * (num_timesteps / 1000.0)
    eps_prediction = np.split(model_output, 2, axis=-1)[0]
    return mean_flat((noise - eps_prediction) ** 2) + vb


@pytest.mark.parametrize("shape", [(16, 8, 8, 3), (16, 7, 7, 1)])
def test_hybrid_loss_matches_improved_diffusion(shape):
    """L_hybrid with lambda = 0.001 is improved-diffusion's RESCALED_MSE loss with a learned
    range: the VLB term in bits per dimension, scaled by T / 1000 (not nats summed over pixels)."""
    num_timesteps = 100
    s = d.make_schedule("linear", num_timesteps)
    scale = 1000 / num_timesteps  # get_named_beta_schedule("linear", T)
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    np.testing.assert_allclose(np.exp(s.log_betas), betas, rtol=1e-5)
    x0 = jnp.round(jax.random.uniform(jax.random.key(1), shape, minval=-1, maxval=1)
                   * 127.5) / 127.5
    weights = jax.random.normal(jax.random.key(2), (2,))

    def denoise_fn(x, t):  # an eps guess and variance logits in (-1, 1) that depend on x and t
        eps = jnp.tanh(weights[0] * x) + 0.01 * t[:, None, None, None]
        return jnp.concatenate([eps, jnp.tanh(weights[1] * x + 0.3)], axis=-1)

    key = jax.random.key(3)
    ours = d.training_loss(denoise_fn, s, x0, key, variance="learned_range", loss="hybrid",
                           vlb_weight=1e-3)
    t_key, noise_key = jax.random.split(key)  # the draws training_loss makes
    t = jax.random.randint(t_key, x0.shape[:1], 0, num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = d.q_sample(s, x0, t, noise)
    reference = _improved_diffusion_hybrid_loss(
        betas, np.float64(x0), np.asarray(t), np.float64(noise),
        np.float64(denoise_fn(x_t, t)))
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=1e-6)
    assert 0 in t.tolist() and int(t.max()) > 0  # both the decoder and the KL branch
