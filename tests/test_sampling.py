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
    timesteps = np.asarray(d.sampling_timesteps(s, case.get("num_steps")))
    m, v = exact_chain_moments(case["sampler"], case.get("variance"), case.get("eta", 0.0),
                               timesteps)
    assert abs(float(x.mean()) - m) < 5 * np.sqrt(v / N)
    assert abs(float(x.var()) - v) < 5 * v * np.sqrt(2 / (N - 1))
    # The discretisation bias of the chain itself (exact, float64): under 2% of s with all 1000
    # steps; DDIM with 100 steps shrinks the std by 2.8%, so its allowance is 5%.
    bias = 0.02 if "num_steps" not in case else 0.05
    assert abs(m - MU) < bias * S and abs(np.sqrt(v) - S) < bias * S


def exact_dpmpp_2m_sde_moments(abar):
    """Mean and variance of SDE-DPM-Solver++(2M)'s output under the Gaussian oracle, exactly, for
    decreasing noise levels ``abar`` (the sampler's timesteps, noisiest first). Each step is
    affine in the state u = (x, previous x_0 prediction), u' = M u + b + noise, so its mean and
    2x2 covariance follow a float64 recursion from x_T ~ N(0, 1)."""
    levels = np.append(abar, 1.0)
    lam = lambda a: 0.5 * np.log(a / (1 - a)) if a < 1 else np.inf
    mean, cov = np.zeros(2), np.diag([1.0, 0.0])
    for i in range(len(abar)):
        a, a_next = levels[i], levels[i + 1]
        x0_a = np.sqrt(a) * S**2 / (a * S**2 + 1 - a)  # E[x0 | x] = x0_a x + x0_b
        x0_b = MU - x0_a * np.sqrt(a) * MU
        if a_next == 1.0:  # the final step returns the x_0 prediction
            M, b, q = np.array([[x0_a, 0.0], [x0_a, 0.0]]), np.array([x0_b, x0_b]), 0.0
        else:
            h = lam(a_next) - lam(a)
            k = 0.0 if i == 0 else 0.5 * h / (lam(a) - lam(levels[i - 1]))
            A = np.sqrt((1 - a_next) / (1 - a)) * np.exp(-h)
            C = np.sqrt(a_next) * -np.expm1(-2 * h)
            M = np.array([[A + C * (1 + k) * x0_a, -C * k], [x0_a, 0.0]])
            b = np.array([C * (1 + k) * x0_b, x0_b])
            q = (1 - a_next) * -np.expm1(-2 * h)
        mean, cov = M @ mean + b, M @ cov @ M.T + np.diag([q, 0.0])
    return mean[0], cov[0, 0]


@pytest.mark.parametrize("num_steps", [20, 100])
def test_gaussian_oracle_dpmpp_2m_sde(num_steps):
    """SDE-DPM-Solver++(2M) on log-SNR spacing: samples match its exact chain moments within 5
    Monte Carlo standard errors, and the chain is close to N(mu, s^2): its std is 3.4% of s too
    large at 20 steps and 0.14% at 100 (exact, float64), where ancestral sampling respaced to as
    many steps is 22% and 6.4% too small."""
    s = d.make_schedule("linear", T)
    x = jax.jit(lambda k: d.sample(gaussian_eps(s), s, k, (N,), sampler="dpmpp_2m_sde",
                                   num_steps=num_steps, spacing="logsnr", clip_x0=False))(
        jax.random.key(0))
    timesteps = np.asarray(d.sampling_timesteps(s, num_steps, spacing="logsnr"))
    m, v = exact_dpmpp_2m_sde_moments(np.cumprod(1 - BETAS)[timesteps][::-1])
    assert abs(float(x.mean()) - m) < 5 * np.sqrt(v / N)
    assert abs(float(x.var()) - v) < 5 * v * np.sqrt(2 / (N - 1))
    bias = 0.04 if num_steps == 20 else 0.002
    assert abs(m - MU) < 1e-4 and abs(np.sqrt(v) - S) < bias * S, (m, np.sqrt(v))


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


SAMPLER_CASES = [dict(sampler="ddpm"), dict(sampler="ddim", eta=0.5),
                 dict(sampler="dpmpp_2m", num_steps=10, spacing="logsnr"),
                 dict(sampler="heun", num_steps=10, spacing="karras"),
                 dict(sampler="dpmpp_2m_sde", num_steps=10, spacing="logsnr")]
case_id = lambda c: "-".join(map(str, c.values()))


@pytest.mark.parametrize("case", SAMPLER_CASES, ids=case_id)
def test_determinism_and_keys(case):
    s, f = _small_setup()
    run = jax.jit(lambda k: d.sample(f, s, k, (4, 3), **case))
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("sampler", d.sampling.SAMPLERS)
def test_deterministic_samplers_depend_on_x_T_alone(sampler):
    """With x_T given, the DETERMINISTIC_SAMPLERS (DDIM at eta 0) ignore the key; the others
    draw fresh noise from it at every step."""
    s, f = _small_setup()
    x_T = jax.random.normal(jax.random.key(9), (4, 3))
    run = jax.jit(lambda k: d.sample(f, s, k, (4, 3), sampler=sampler, num_steps=10, x_T=x_T))
    a, b = run(jax.random.key(0)), run(jax.random.key(1))
    assert np.array_equal(a, b) == (sampler in d.sampling.DETERMINISTIC_SAMPLERS)


@pytest.mark.parametrize("case", SAMPLER_CASES[1:], ids=case_id)
def test_vmap_over_keys_equals_separate_calls(case):
    s, f = _small_setup()
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda k: d.sample(f, s, k, (2, 5), **case))(keys)
    single = jax.jit(lambda k: d.sample(f, s, k, (2, 5), **case))
    for i in range(3):
        np.testing.assert_allclose(batched[i], single(keys[i]), atol=1e-5)


@pytest.mark.parametrize("case", [SAMPLER_CASES[0], *SAMPLER_CASES[2:]], ids=case_id)
def test_pmap_and_shard_map(case):
    """shard_map (and, for ancestral sampling, pmap) agree with vmap over the same keys."""
    s, f = _small_setup()
    n = jax.device_count()
    assert n == 8, "conftest simulates 8 CPU devices"
    keys = jax.random.split(jax.random.key(0), n)
    expected = jax.vmap(lambda k: d.sample(f, s, k, (2, 3), **case))(keys)  # as the test above
    if case["sampler"] == "ddpm":
        pmapped = jax.pmap(lambda k: d.sample(f, s, k, (2, 3), **case))(keys)
        np.testing.assert_allclose(pmapped, expected, atol=1e-5)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.jit(jax.shard_map(lambda k: d.sample(f, s, k[0], (2, 3), **case)[None],
                                    mesh=mesh, in_specs=P("data"), out_specs=P("data")))(keys)
    np.testing.assert_allclose(sharded, expected, atol=1e-5)


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


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_trajectory_of_the_ode_samplers(sampler):
    """Frames as for the other samplers; the last step returns the x_0 prediction at t = 0."""
    s, f = _small_setup()
    x0, traj = d.sample(f, s, jax.random.key(0), (3, 2), sampler=sampler, num_steps=10,
                        spacing="logsnr", trajectory_every=1)
    assert traj.x_t.shape == (10, 3, 2)
    np.testing.assert_array_equal(traj.timesteps,
                                  np.asarray(d.sampling_timesteps(s, 10, spacing="logsnr"))[::-1])
    np.testing.assert_allclose(x0, traj.pred_x0[-1], atol=1e-5)


@pytest.mark.parametrize("sampler,expected", [
    ("ddpm", "time"), ("ddim", "time"), ("dpmpp_2m", "logsnr"), ("dpmpp_2m_sde", "logsnr"),
    ("heun", "karras")])
def test_each_sampler_defaults_to_its_recommended_spacing(sampler, expected):
    """spacing=None (the default) visits the timesteps of the sampler's own recommendation."""
    s, f = _small_setup()
    assert d.sampling.default_spacing(sampler) == expected
    _, traj = d.sample(f, s, jax.random.key(0), (1, 2), sampler=sampler, num_steps=10,
                       trajectory_every=1)
    np.testing.assert_array_equal(
        traj.timesteps, np.asarray(d.sampling_timesteps(s, 10, spacing=expected))[::-1])
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        d.sampling.default_spacing("dpm")


@pytest.mark.parametrize("sampler", d.sampling.SAMPLERS)
def test_program_size_does_not_grow_with_steps(sampler):
    """The schedule is an argument, so the HLO is the same text for 10 and 1000 steps up to the
    array sizes; a loose 1.1 ratio on the op count guards against unrolling."""
    f = lambda x, t: 0.1 * x
    def ops(T):
        s = d.make_schedule("linear", T)
        text = jax.jit(lambda s, k: d.sample(f, s, k, (2, 2), sampler=sampler)).lower(
            s, jax.random.key(0)).as_text()
        return len(text.splitlines())
    assert ops(1000) < 1.1 * ops(10)


@pytest.mark.parametrize("sampler", ["ddpm", "heun"])
def test_progress_callback_counts_steps(sampler):
    s, f = _small_setup()
    seen = []
    jax.block_until_ready(d.sample(f, s, jax.random.key(0), (1, 2), sampler=sampler,
                                   progress=seen.append))
    jax.effects_barrier()
    assert sorted(int(i) for i in seen) == list(range(50))


def test_classifier_free_guidance():
    cond = lambda x, t, y: x * 0 + y[:, None].astype(jnp.float32)
    x, t, y = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), jnp.array([2, 4])
    for scale, expected in [(1.0, [2, 4]), (0.0, [10, 10]), (2.0, [-6, -2])]:
        out = d.classifier_free_guidance(cond, y, null_label=10, guidance_scale=scale)(x, t)
        np.testing.assert_allclose(out[:, 0], expected)


def test_guidance_runs_only_the_passes_its_scale_needs():
    """A Python scale of 1 calls the model once on the labels, 0 once on the null label; any other
    scale, or a traced one, makes one call on both halves (counted at trace time)."""
    calls = []
    def cond(x, t, y):
        calls.append(np.asarray(y).tolist() if not isinstance(y, jax.core.Tracer) else len(y))
        return x * 0 + y[:, None].astype(jnp.float32)
    x, t, y = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), jnp.array([2, 4])
    for scale, expected in [(1.0, [[2, 4]]), (0.0, [[10, 10]]), (1, [[2, 4]]),
                            (2.0, [[2, 4, 10, 10]])]:
        calls.clear()
        d.classifier_free_guidance(cond, y, null_label=10, guidance_scale=scale)(x, t)
        assert calls == expected, scale
    calls.clear()
    traced = jax.jit(lambda s: d.classifier_free_guidance(cond, y, null_label=10,
                                                          guidance_scale=s)(x, t))
    np.testing.assert_allclose(traced(1.0)[:, 0], [2, 4])
    assert calls == [4]  # both halves in one call of batch 2 B
    calls.clear()
    s, _ = _small_setup()
    sample_fn = lambda y: d.classifier_free_guidance(cond, y, null_label=10, guidance_scale=1.0)
    jax.jit(lambda y: d.sample(sample_fn(y), s, jax.random.key(0), (2, 3), sampler="ddim",
                               num_steps=5))(y)
    assert calls == [2]  # one traced pass of batch B inside the scan


def test_guidance_checks_labels():
    cond = lambda x, t, y: x * 0 + y[:, None].astype(jnp.float32)
    x, t = jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32)
    guided = lambda y, **kw: d.classifier_free_guidance(
        cond, jnp.asarray(y), **{"null_label": 10, "guidance_scale": 2.0, **kw})(x, t)
    for y, message in (([11, 0], r"labels hold 11, outside \[0, 10\]"),
                       ([-1, 0], r"labels hold -1, outside \[0, 10\]"),
                       ([1, 2, 3], r"labels must have shape \[B\] = \[2\], got shape \(3,\)")):
        with pytest.raises(ValueError, match=message):
            guided(y)
    np.testing.assert_allclose(guided([1, 2], null_label=None, guidance_scale=1.0)[:, 0], [1, 2])
    for scale in (0.0, 3.0, jnp.float32(1.0)):
        with pytest.raises(ValueError, match=f"guidance_scale={scale} needs a model with a null "
                                             "label"):
            guided([1, 2], null_label=None, guidance_scale=scale)


def test_bad_inputs():
    """Each bad argument ends in one line naming it, not in JAX internals."""
    s, f = _small_setup()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="unknown sampler 'ddmp'"):
        d.sample(f, s, key, (1, 2), sampler="ddmp")
    with pytest.raises(ValueError, match="unknown spacing 'log'"):
        d.sample(f, s, key, (1, 2), spacing="log")
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 50\], got 60"):
        d.sample(f, s, key, (1, 2), num_steps=60)
    with pytest.raises(TypeError, match="num_steps must be an integer, got 10.0"):
        d.sample(f, s, key, (1, 2), num_steps=10.0)
    with pytest.raises(ValueError, match="trajectory_every=7 must be a positive divisor of the "
                                         "number of sampling steps 50"):
        d.sample(f, s, key, (1, 2), trajectory_every=7)
    with pytest.raises(TypeError, match="trajectory_every must be an integer, got 2.5"):
        d.sample(f, s, key, (1, 2), trajectory_every=2.5)
    with pytest.raises(ValueError, match=r"shape must be a non-empty tuple .* got \(\)"):
        d.sample(f, s, key, ())
    with pytest.raises(ValueError, match=r"timesteps t must have shape \[B\] = \[3\]"):
        d.ddim_step(s, jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((2,), jnp.int32), key,
                    eta=0.0)


def test_trajectory_every_accepts_any_integer():
    s, f = _small_setup()
    _, a = d.sample(f, s, jax.random.key(0), (1, 2), num_steps=20, trajectory_every=np.int64(10))
    _, b = d.sample(f, s, jax.random.key(0), (1, 2), num_steps=20, trajectory_every=10)
    np.testing.assert_array_equal(a.x_t, b.x_t)
    assert a.x_t.shape == (2, 1, 2)


# --- the fast samplers against exact references ---------------------------------------------


def _alpha_sigma(abar):
    return np.sqrt(abar), np.sqrt(1 - abar)


def test_order_of_convergence_against_the_exact_ode_solution():
    """Gaussian data N(mu, s^2), optimal denoiser: the probability-flow ODE keeps each sample's
    standardised value z, so x at index 0 is exactly sqrt(abar_0) mu + sqrt(abar_0 s^2 + 1 -
    abar_0) z for the z of x_T (taken at index T-1). Every sampler ends with the same step, the
    x_0 prediction at index 0 (Karras et al.'s final Euler step), which maps that exact x to
    mu + s^2 / sqrt(s^2 + sigma_0^2) z with sigma_0^2 = (1 - abar_0) / abar_0; that is the
    reference. The fitted slope of log max error vs log N (N = 5, 10, 20, 40) must be about -1
    for DDIM and about -2 for the second-order solvers (DPM-Solver++ on its recommended log-SNR
    spacing, Heun on Karras's; measured slopes: -0.99, -1.83, -2.43)."""
    s = d.make_schedule("linear", T)
    key, n = jax.random.key(0), 64
    x_T = np.asarray(jax.random.normal(jax.random.split(key)[0], (n,)), np.float64)
    abar = np.cumprod(1 - BETAS)
    z = (x_T - np.sqrt(abar[-1]) * MU) / np.sqrt(abar[-1] * S**2 + 1 - abar[-1])
    reference = MU + S**2 / np.sqrt(S**2 + (1 - abar[0]) / abar[0]) * z
    assert np.abs(reference - (MU + S * z)).max() < 1e-3  # the shared last step's own error
    steps = np.array([5, 10, 20, 40])
    cases = {("ddim", "time"): (-1.15, -0.85), ("dpmpp_2m", "logsnr"): (-2.3, -1.7),
             ("heun", "karras"): (-2.6, -1.9)}
    for (sampler, spacing), (low, high) in cases.items():
        errors = [np.abs(np.asarray(d.sample(gaussian_eps(s), s, key, (n,), sampler=sampler,
                                             num_steps=int(k), spacing=spacing, clip_x0=False))
                         - reference).max() for k in steps]
        slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert low < slope < high, (sampler, spacing, slope, errors)


ONE_POINT_CASES = [("ddim", "time", "eps"), ("dpmpp_2m", "time", "x0"), ("dpmpp_2m", "logsnr", "v"),
                   ("dpmpp_2m", "karras", "eps"), ("heun", "time", "v"), ("heun", "logsnr", "eps"),
                   ("heun", "karras", "x0"), ("dpmpp_2m_sde", "logsnr", "v")]


@pytest.mark.parametrize("sampler,spacing,target", ONE_POINT_CASES)
def test_one_point_data_is_recovered_exactly(sampler, spacing, target):
    """x_0 = c with the exact denoiser eps = (x - sqrt(abar) c) / sqrt(1 - abar): every
    deterministic sampler, and the SDE solver whatever its noise, returns c, on every spacing and
    with every target."""
    s = d.make_schedule("linear", T)
    c = jnp.array([0.7, -1.3, 2.5])  # beyond [-1, 1]: clipping is off
    point = lambda x: jnp.broadcast_to(c, x.shape)

    def denoise(x, t):
        eps = d.predict_eps_from_x0(s, x, t, point(x))
        return {"eps": eps, "x0": point(x), "v": d.v_from_x0_eps(s, point(x), t, eps)}[target]

    x = d.sample(denoise, s, jax.random.key(3), (4, 3), sampler=sampler, num_steps=10,
                 spacing=spacing, target=target, clip_x0=False)
    np.testing.assert_allclose(x, point(x), atol=1e-4)


def test_dpmpp_first_order_equals_ddim():
    """Without history DPM-Solver++ is DDIM with eta 0 (Lu et al. 2022, sec. 4.1): step by step
    along a log-SNR-respaced chain with a non-Gaussian denoiser."""
    s = d.respace(d.make_schedule("linear", T), d.sampling_timesteps(
        d.make_schedule("linear", T), 25, spacing="logsnr"))
    f = lambda x, t: jnp.tanh(x) * 0.8 + 0.05 * t[:, None]
    dpm = jax.jit(lambda x, t: d.dpmpp_2m_step(s, f(x, t), x, t, None, clip_x0=False)[0])
    ddim = jax.jit(lambda x, t: d.ddim_step(s, f(x, t), x, t, jax.random.key(1), eta=0.0,
                                            clip_x0=False)[0])
    x_dpm = x_ddim = jax.random.normal(jax.random.key(0), (8, 3))
    for i in reversed(range(25)):
        t = jnp.full((8,), i)
        x_dpm, x_ddim = dpm(x_dpm, t), ddim(x_ddim, t)
        np.testing.assert_allclose(x_dpm, x_ddim, atol=1e-5, rtol=1e-5)


def _dpmpp_2m_reference(abar_levels, x, denoise):
    """diffusers ``DPMSolverMultistepScheduler`` (algorithm_type='dpmsolver++',
    solver_type='midpoint', final_sigmas_type='zero'), schedulers/scheduling_dpmsolver_multistep.py:
    ``dpm_solver_first_order_update`` and ``multistep_dpm_solver_second_order_update`` transcribed
    in float64, VP form. ``abar_levels`` decreasing noise, ending at 1 (clean)."""
    m1 = None
    for i in range(len(abar_levels) - 1):
        alpha_s0, sigma_s0 = _alpha_sigma(abar_levels[i])
        alpha_t, sigma_t = _alpha_sigma(abar_levels[i + 1])
        m0 = denoise(x, i)
        lower_order = m1 is None or i == len(abar_levels) - 2  # final step into sigma = 0
        if lower_order:
            if sigma_t == 0:
                x = m0  # sigma_t / sigma_s0 = 0, exp(-h) = 0
            else:
                h = np.log(alpha_t / sigma_t) - np.log(alpha_s0 / sigma_s0)
                x = (sigma_t / sigma_s0) * x - (alpha_t * (np.exp(-h) - 1.0)) * m0
        else:
            alpha_s1, sigma_s1 = _alpha_sigma(abar_levels[i - 1])
            lambda_t, lambda_s0 = np.log(alpha_t / sigma_t), np.log(alpha_s0 / sigma_s0)
            h, h_0 = lambda_t - lambda_s0, lambda_s0 - np.log(alpha_s1 / sigma_s1)
            r0 = h_0 / h
            D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            x = ((sigma_t / sigma_s0) * x - (alpha_t * (np.exp(-h) - 1.0)) * D0
                 - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * D1)
        m1 = m0
    return x


def _heun_reference(abar_levels, x, denoise):
    """Karras et al. (2022) Algorithm 1 with S_churn = 0, as k-diffusion's ``sample_heun``
    (crowsonkb/k-diffusion, k_diffusion/sampling.py) and diffusers'
    ``HeunDiscreteScheduler.step`` (schedulers/scheduling_heun_discrete.py), transcribed in
    float64 in the VE variables x~ = x / alpha, sigma = sqrt((1 - abar) / abar)."""
    sigmas = np.sqrt((1 - abar_levels) / abar_levels)
    x = x / np.sqrt(abar_levels[0])
    ve_denoise = lambda x, i: denoise(x * np.sqrt(abar_levels[i]), i)
    for i in range(len(sigmas) - 1):
        denoised = ve_denoise(x, i)
        d_ = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d_ * dt  # Euler method
        else:
            x_2 = x + d_ * dt
            denoised_2 = ve_denoise(x_2, i + 1)
            d_2 = (x_2 - denoised_2) / sigmas[i + 1]
            x = x + (d_ + d_2) / 2 * dt
    return x


def _dpmpp_2m_sde_reference(abar_levels, x, denoise, noises):
    """k-diffusion's ``sample_dpmpp_2m_sde`` (crowsonkb/k-diffusion, k_diffusion/sampling.py;
    eta 1, s_noise 1, solver_type 'midpoint', ``noises[i]`` as its noise sampler's draw at step
    i), transcribed in float64 in the VE variables x~ = x / alpha,
    sigma = sqrt((1 - abar) / abar); returned as x = alpha x~ (alpha = 1 at the end)."""
    sigmas = np.sqrt((1 - abar_levels) / abar_levels)
    x = x / np.sqrt(abar_levels[0])
    eta, old_denoised, h_last = 1.0, None, None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x * np.sqrt(abar_levels[i]), i)
        if sigmas[i + 1] == 0:
            x = denoised  # Denoising step
        else:
            t, s = -np.log(sigmas[i]), -np.log(sigmas[i + 1])
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * np.exp(-eta_h) * x - np.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * -np.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
            x = x + noises[i] * sigmas[i + 1] * np.sqrt(-np.expm1(-2 * eta_h))
        old_denoised, h_last = denoised, h
    return x


@pytest.mark.parametrize("sampler,reference", [("dpmpp_2m", _dpmpp_2m_reference),
                                               ("heun", _heun_reference),
                                               ("dpmpp_2m_sde", _dpmpp_2m_sde_reference)])
@pytest.mark.parametrize("target", ["eps", "v"])
def test_against_transcribed_reference(sampler, reference, target):
    """The whole chain against the reference code's algorithm, with a nonlinear x_0-predictor,
    on karras-spaced timesteps (uneven step ratios exercise the multistep coefficients); the SDE
    solver's reference gets the noise the sampler draws at each step."""
    full = d.make_schedule("linear", T)
    timesteps = np.asarray(d.sampling_timesteps(full, 12, spacing="karras"))
    abar = np.cumprod(1 - BETAS)[timesteps]
    x0_hat = lambda x, abar_t: np.tanh(1.5 * x) * np.sqrt(abar_t) + 0.1  # any smooth predictor

    def model(x, t):  # the network: predicts ``target`` from the x0-predictor, at model time t
        a = full.alphas_cumprod[t][:, None]
        x0 = jnp.tanh(1.5 * x) * jnp.sqrt(a) + 0.1
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return eps if target == "eps" else jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0

    noise_key, step_key = jax.random.split(jax.random.key(5))
    x_T = np.asarray(jax.random.normal(noise_key, (6, 2)))
    levels = np.append(abar[::-1], 1.0)
    noises = {} if sampler != "dpmpp_2m_sde" else dict(noises=[  # step j is schedule index 11 - j
        np.asarray(jax.random.normal(jax.random.fold_in(step_key, 11 - j), (6, 2)), np.float64)
        for j in range(12)])
    expected = reference(levels, x_T.astype(np.float64), lambda x, i: x0_hat(x, levels[i]),
                         **noises)
    ours = d.sample(model, full, jax.random.key(5), (6, 2), sampler=sampler, num_steps=12,
                    spacing="karras", target=target, clip_x0=False)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4)


def test_dpmpp_2m_with_classifier_free_guidance():
    """Guidance combines the two predictions affinely, so with an exact one-point denoiser per
    class (c_y for label y, c_null unconditional) the guided chain returns
    c_null + s (c_y - c_null) for every target."""
    s = d.make_schedule("linear", T)
    centres = jnp.array([-0.5, 0.25, 0.0])  # classes 0, 1 and the null label 2

    def cond(x, t, y):
        c = jnp.broadcast_to(centres[y][:, None], x.shape)
        return d.predict_eps_from_x0(s, x, t, c)

    labels = jnp.array([0, 1, 1, 0])
    guided = d.classifier_free_guidance(cond, labels, null_label=2, guidance_scale=3.0)
    x = d.sample(guided, s, jax.random.key(0), (4, 2), sampler="dpmpp_2m", num_steps=15,
                 spacing="logsnr", clip_x0=False)
    expected = 3.0 * centres[labels]
    np.testing.assert_allclose(x, jnp.broadcast_to(expected[:, None], x.shape), atol=1e-4)


# --- timestep spacing ---------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", d.sampling.SPACINGS)
@pytest.mark.parametrize("num_steps", [2, 7, 20, 999])
def test_sampling_timesteps(spacing, num_steps):
    """S distinct increasing indices with both ends; the same under jit with a traced schedule;
    'logsnr' and 'karras' are the nearest trained timesteps to their continuous levels (checked
    in float64) where no two levels round to one timestep."""
    s = d.make_schedule("linear", T)
    ts = np.asarray(d.sampling_timesteps(s, num_steps, spacing=spacing))
    assert len(ts) == num_steps and ts[0] == 0 and ts[-1] == T - 1 and np.all(np.diff(ts) > 0)
    traced = jax.jit(lambda s: d.sampling_timesteps(s, num_steps, spacing=spacing))(s)
    np.testing.assert_array_equal(traced, ts)
    abar = np.cumprod(1 - BETAS)
    lam = np.log(abar / (1 - abar))
    u = np.linspace(0, 1, num_steps)
    if spacing == "time":
        expected = np.round(np.linspace(0, T - 1, num_steps))
    elif spacing == "logsnr":
        expected = np.argmin(np.abs(lam[None] - (lam[0] + u * (lam[-1] - lam[0]))[:, None]), 1)
    else:
        sig = np.exp(-lam / 2)
        ramp = (sig[0] ** (1 / 7) + u * (sig[-1] ** (1 / 7) - sig[0] ** (1 / 7))) ** 7
        expected = np.argmin(np.abs(np.log(sig)[None] - np.log(ramp)[:, None]), 1)
    if num_steps <= 20:  # at 999 steps most log-SNR levels collide near t = 0 and are pushed
        assert np.all(np.diff(expected) > 0)
        assert np.all(np.abs(ts - expected) <= 1)
        assert np.mean(ts == expected) > 0.9  # float32 vs float64 ties aside


def test_model_calls():
    assert d.sampling.model_calls("heun", 10) == 19 and d.sampling.model_calls("dpmpp_2m", 10) == 10
    assert d.sampling.model_calls("dpmpp_2m_sde", 10) == 10
    calls = []
    s, f = _small_setup()
    counting = lambda x, t: (jax.debug.callback(lambda: calls.append(1)), f(x, t))[1]
    jax.block_until_ready(d.sample(counting, s, jax.random.key(0), (1, 2), sampler="heun",
                                   num_steps=10))
    jax.effects_barrier()
    assert len(calls) == 19
