"""The scan sampler against analytic optimal denoisers whose exact samples are known."""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import ddpm_jax as d

T = 1000
N = 20_000
BETAS = np.linspace(1e-4, 0.02, T)  # float64 reference schedule, independent of the library
MU, S = 0.3, 0.5


def gaussian_eps(schedule, mu=MU, s=S):
    """E[eps | x_t] for x0 ~ N(mu, s^2): sqrt(1-abar)(x - sqrt(abar) mu) / (abar s^2 + 1 - abar)."""
    def denoise(x, t):
        abar = d.diffusion.extract(schedule.alphas_cumprod, t, x.ndim)
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * mu) / (abar * s**2 + 1 - abar)
    return denoise


def exact_chain_moments(sampler, variance=None, eta=0.0, timesteps=None):
    """Mean and variance of the sampler's output, exactly: with a Gaussian oracle every step is
    affine, x' = A x + B + sigma z, so the moments follow a float64 recursion from N(0, 1)."""
    abar_full = np.cumprod(1 - BETAS)
    ts = np.arange(T) if timesteps is None else timesteps
    abar = abar_full[ts]
    abar_prev = np.append(1.0, abar[:-1])
    beta = 1 - abar / abar_prev
    m, v = 0.0, 1.0
    for i in reversed(range(len(ts))):
        c = np.sqrt(1 - abar[i]) / (abar[i] * S**2 + 1 - abar[i])  # eps_hat = c x - c sqrt(abar) mu
        e_a, e_b = c, -c * np.sqrt(abar[i]) * MU
        post_var = beta[i] * (1 - abar_prev[i]) / (1 - abar[i])
        if sampler == "ddpm":
            k = beta[i] / np.sqrt(1 - abar[i])
            a, b = (1 - k * e_a) / np.sqrt(1 - beta[i]), -k * e_b / np.sqrt(1 - beta[i])
            sig2 = 0.0 if i == 0 else (beta[i] if variance == "fixedlarge" else post_var)
        else:
            x0_a = (1 - np.sqrt(1 - abar[i]) * e_a) / np.sqrt(abar[i])
            x0_b = -np.sqrt(1 - abar[i]) * e_b / np.sqrt(abar[i])
            sig2 = eta**2 * post_var
            w = np.sqrt(max(1 - abar_prev[i] - sig2, 0.0))
            a = np.sqrt(abar_prev[i]) * x0_a + w * e_a
            b = np.sqrt(abar_prev[i]) * x0_b + w * e_b
        m, v = a * m + b, a * a * v + sig2
    return m, v


CASES = [dict(sampler="ddpm", variance="fixedlarge"), dict(sampler="ddpm", variance="fixedsmall"),
         dict(sampler="ddim", eta=0.0), dict(sampler="ddim", eta=1.0),
         dict(sampler="ddim", eta=0.0, num_steps=100)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_gaussian_oracle(case):
    """Samples match the exact chain moments within 5 Monte Carlo standard errors (mean:
    sqrt(v / N); variance: v sqrt(2 / (N - 1))), and the chain itself is close to N(mu, s^2)."""
    s = d.make_schedule("linear", T)
    x = jax.jit(lambda s, k: d.sample(gaussian_eps(s), s, k, (N,), clip_x0=False, **case))(
        s, jax.random.key(0))
    timesteps = d.sampling.sampling_timesteps(T, case.get("num_steps"))
    m, v = exact_chain_moments(case["sampler"], case.get("variance"), case.get("eta", 0.0),
                               timesteps)
    assert abs(float(x.mean()) - m) < 5 * np.sqrt(v / N)
    assert abs(float(x.var()) - v) < 5 * v * np.sqrt(2 / (N - 1))
    # The discretisation bias of the chain itself (exact, float64): under 2% of s with all 1000
    # steps; DDIM with 100 steps shrinks the std by 2.8%, so its allowance is 5%.
    bias = 0.02 if "num_steps" not in case else 0.05
    assert abs(m - MU) < bias * S and abs(np.sqrt(v) - S) < bias * S


def test_mixture_oracle_recovers_weights():
    """x0 ~ 0.3 N(-0.6, 0.1^2) + 0.7 N(0.5, 0.1^2). The optimal eps uses the exact posterior
    mean E[x0 | x_t] of the mixture. The fraction of samples below 0 estimates the weight 0.3 with
    binomial standard error sqrt(0.21 / N) = 0.0032; component means have error 0.1 / sqrt(n_k)."""
    w, means, std = jnp.array([0.3, 0.7]), jnp.array([-0.6, 0.5]), 0.1
    s = d.make_schedule("linear", T)

    def denoise(x, t):
        abar = s.alphas_cumprod[t][..., None]
        var = abar * std**2 + 1 - abar
        xs = x[..., None]
        log_r = jnp.log(w) - 0.5 * (xs - jnp.sqrt(abar) * means) ** 2 / var
        r = jax.nn.softmax(log_r, axis=-1)
        x0_k = means + jnp.sqrt(abar) * std**2 / var * (xs - jnp.sqrt(abar) * means)
        x0_mean = jnp.sum(r * x0_k, axis=-1)
        return (x - jnp.sqrt(abar[..., 0]) * x0_mean) / jnp.sqrt(1 - abar[..., 0])

    for kwargs in [dict(sampler="ddpm", variance="fixedsmall"), dict(sampler="ddim", eta=0.0)]:
        x = np.asarray(jax.jit(lambda k: d.sample(denoise, s, k, (N,), clip_x0=False, **kwargs))(
            jax.random.key(1)))
        low = x < 0
        assert abs(low.mean() - 0.3) < 5 * np.sqrt(0.21 / N), kwargs
        assert abs(x[low].mean() + 0.6) < 5 * 0.1 / np.sqrt(low.sum()) + 0.005, kwargs
        assert abs(x[~low].mean() - 0.5) < 5 * 0.1 / np.sqrt((~low).sum()) + 0.005, kwargs


@functools.lru_cache
def _small_setup():
    s = d.make_schedule("linear", 50)
    return s, gaussian_eps(s)


def test_determinism_and_keys():
    s, f = _small_setup()
    run = jax.jit(lambda k: d.sample(f, s, k, (4, 3)))
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_vmap_over_keys_equals_separate_calls():
    s, f = _small_setup()
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda k: d.sample(f, s, k, (2, 5), sampler="ddim", eta=0.5))(keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], d.sample(f, s, keys[i], (2, 5), sampler="ddim",
                                                        eta=0.5), atol=1e-6)


def test_pmap_and_shard_map():
    s, f = _small_setup()
    n = jax.device_count()
    assert n == 8, "conftest simulates 8 CPU devices"
    keys = jax.random.split(jax.random.key(0), n)
    expected = np.stack([d.sample(f, s, k, (2, 3)) for k in keys])
    pmapped = jax.pmap(lambda k: d.sample(f, s, k, (2, 3)))(keys)
    np.testing.assert_allclose(pmapped, expected, atol=1e-6)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.jit(jax.shard_map(lambda k: d.sample(f, s, k[0], (2, 3))[None], mesh=mesh,
                                    in_specs=P("data"), out_specs=P("data")))(keys)
    np.testing.assert_allclose(sharded, expected, atol=1e-6)


def test_last_step_adds_no_noise_and_trajectory():
    s, f = _small_setup()
    x0, traj = d.sample(f, s, jax.random.key(0), (3, 2), trajectory_every=1)
    assert traj.x_t.shape == (50, 3, 2) and traj.pred_x0.shape == (50, 3, 2)
    np.testing.assert_array_equal(traj.timesteps, np.arange(49, -1, -1))
    # Frame 49 is the input to the last step (t = 0), whose output is its mean: the x0 prediction.
    np.testing.assert_allclose(x0, traj.pred_x0[-1], atol=1e-6)
    _, traj10 = d.sample(f, s, jax.random.key(0), (3, 2), trajectory_every=10)
    assert traj10.x_t.shape == (5, 3, 2)
    np.testing.assert_array_equal(traj10.timesteps, [49, 39, 29, 19, 9])
    np.testing.assert_allclose(traj10.x_t, traj.x_t[::10], atol=1e-6)
    _, ddim = d.sample(f, s, jax.random.key(0), (3, 2), sampler="ddim", num_steps=10,
                       trajectory_every=5)
    np.testing.assert_array_equal(ddim.timesteps, [49, 22])


def test_program_size_does_not_grow_with_steps():
    """The schedule is an argument, so the HLO is the same text for T=10 and T=1000 up to the
    array sizes; a loose 1.1 ratio on the op count guards against unrolling."""
    f = lambda x, t: 0.1 * x
    def ops(T):
        s = d.make_schedule("linear", T)
        text = jax.jit(lambda s, k: d.sample(f, s, k, (2, 2))).lower(s, jax.random.key(0)).as_text()
        return len(text.splitlines())
    assert ops(1000) < 1.1 * ops(10)


def test_progress_callback_counts_steps():
    s, f = _small_setup()
    seen = []
    jax.block_until_ready(d.sample(f, s, jax.random.key(0), (1, 2), progress=seen.append))
    jax.effects_barrier()
    assert sorted(int(i) for i in seen) == list(range(50))


def test_classifier_free_guidance():
    cond = lambda x, t, y: x * 0 + y[:, None].astype(jnp.float32)
    x, t, y = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), jnp.array([2, 4])
    for scale, expected in [(1.0, [2, 4]), (0.0, [10, 10]), (2.0, [-6, -2])]:
        out = d.classifier_free_guidance(cond, y, null_label=10, guidance_scale=scale)(x, t)
        np.testing.assert_allclose(out[:, 0], expected)


def test_bad_inputs():
    s, f = _small_setup()
    with pytest.raises(ValueError, match="unknown sampler 'ddmp'"):
        d.sample(f, s, jax.random.key(0), (1, 2), sampler="ddmp")
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 50\], got 60"):
        d.sample(f, s, jax.random.key(0), (1, 2), num_steps=60)
    with pytest.raises(ValueError, match="trajectory_every=7 must be a positive divisor"):
        d.sample(f, s, jax.random.key(0), (1, 2), trajectory_every=7)
