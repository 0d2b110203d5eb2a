"""Evaluation: distances against scipy / direct formulas, bits/dim against an exact denoiser of
known entropy, the classifier features and their cache, and evaluate.py end to end."""

import json

import numpy as np
import pytest
import scipy.linalg

import jax
import jax.numpy as jnp

import ddpm_jax as d
from conftest import run_cli
from ddpm_jax import data, evaluation, generate, train_lib


def random_features(seed, n=300, f=12, shift=0.0):
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(100).normal(size=(f, f))  # shared: one distribution
    return rng.normal(size=(n, f)) @ mixing + shift


def test_frechet_distance_matches_scipy():
    mu1, s1 = evaluation.feature_statistics(random_features(0))
    mu2, s2 = evaluation.feature_statistics(random_features(1, shift=0.3))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    np.testing.assert_allclose(evaluation.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-9)
    assert abs(evaluation.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    # Singular covariance (N = 5 < F = 12): ~0 against itself, to sqrt(float64 eps) relative as
    # the square roots of its round-off eigenvalues add up (scipy's sqrtm: -2.5e-8 here too).
    mu, s = evaluation.feature_statistics(random_features(2, n=5))
    assert abs(evaluation.frechet_distance(mu, s, mu, s)) < 1e-7 * np.trace(s)
    with pytest.raises(ValueError, match=r"expected means \[F\] and covariances \[F, F\]"):
        evaluation.frechet_distance(mu1, s1, mu2[:3], s2)


def test_kid_unbiased_and_sensitive():
    normal = lambda seed, shift=0.0: np.random.default_rng(seed).normal(size=(600, 12)) + shift
    x, y = normal(0), normal(1)
    # One subset of all N features: exactly the unbiased MMD^2 of the two full sets.
    kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n = len(x)
    direct = ((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1))
              - 2 * kxy.mean())
    full, _ = evaluation.kernel_inception_distance(x, y, num_subsets=1, subset_size=n)
    np.testing.assert_allclose(full, direct, rtol=1e-9)
    same, same_std = evaluation.kernel_inception_distance(x, y, num_subsets=50, subset_size=200)
    shifted, shifted_std = evaluation.kernel_inception_distance(
        x, normal(2, shift=0.5), num_subsets=50, subset_size=200)
    assert abs(same) < 3 * same_std  # std over subsets: 0.014
    assert shifted > 5 * shifted_std and shifted > 50 * same_std  # 1.1 +- 0.12


# Bits/dim of data with known entropy: every pixel i.i.d. from a discretised Gaussian on the 64
# uint8 levels 96..159 (std 8 levels), scored with the exact E[eps | x_t] of that distribution.
LEVELS = np.arange(96, 160)
_LOGITS = -0.5 * ((LEVELS - 127.5) / 8.0) ** 2
PROBS = np.exp(_LOGITS - _LOGITS.max()) / np.exp(_LOGITS - _LOGITS.max()).sum()
BETAS = np.linspace(1e-4, 0.02, 1000)  # float64 reference schedule, independent of the library


def exact_eps(schedule):
    """E[eps | x_t] = (x_t - sqrt(abar) E[x0 | x_t]) / sqrt(1 - abar), where E[x0 | x_t] is a
    softmax over the support: log p_k - (x_t - sqrt(abar) v_k)^2 / (2 (1 - abar))."""
    values = jnp.asarray(LEVELS / 127.5 - 1, jnp.float32)
    log_p = jnp.asarray(np.log(PROBS), jnp.float32)

    def apply_fn(params, x, t):
        abar = d.diffusion.extract(schedule.alphas_cumprod, t, x.ndim)
        logits = log_p - (x[..., None] - jnp.sqrt(abar[..., None]) * values) ** 2 / (
            2 * (1 - abar[..., None]))
        x0 = jnp.sum(jax.nn.softmax(logits, axis=-1) * values, axis=-1)
        return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
    return apply_fn


def discrete_source(n, side, seed):
    """n images [side, side, 1] drawn from PROBS, and their exact NLL in bits/dim."""
    index = np.random.default_rng(seed).choice(len(LEVELS), p=PROBS, size=(n, side, side, 1))
    return (data.ArraySource(LEVELS[index].astype(np.uint8)),
            float(-np.log2(PROBS[index]).mean()))


def test_bits_per_dim_of_exact_denoiser_is_a_tight_bound():
    """The bound is >= the data's NLL (5.05 bits/dim) and exceeds it by what the fixed variances
    cost. With the exact mean, that cost is almost all in the decoder: its variance is the
    posterior's beta-tilde at t=2 (5.5e-5, Ho et al.'s fixedlarge) while x_0 given x_1 has
    variance (1 - abar_1) / abar_1 (1.0e-4); for Gaussians that is KL = (r - 1 - ln r) / 2 nats
    with r = 1.83, i.e. 0.164 bits/dim. The other terms cost 0.002 bits/dim (float64, for
    continuous data of this spread). The estimate's Monte Carlo spread over seeds is ~0.02
    bits/dim (4096 pixels, one x_t draw per term), so the gap must be 0.164 +- 0.06."""
    schedule = d.make_schedule("linear", 1000)
    source, nll = discrete_source(64, 8, seed=0)
    r = evaluation.bound_on_split(exact_eps(schedule), {}, schedule, source, batch_size=64)
    abar = np.cumprod(1 - BETAS)
    r_dec = ((1 - abar[0]) / abar[0]) / (BETAS[1] * (1 - abar[0]) / (1 - abar[1]))
    decoder_gap = 0.5 * (r_dec - 1 - np.log(r_dec)) / np.log(2)
    assert abs(decoder_gap - 0.164) < 0.001
    assert r["bpd"] > nll and abs(r["bpd"] - nll - decoder_gap) < 0.06, (r["bpd"], nll)
    parts = r["prior_bpd"] + r["decoder_bpd"] + r["diffusion_bpd"]
    np.testing.assert_allclose(parts, r["bpd"], rtol=1e-5)
    np.testing.assert_allclose(sum(b["bpd"] for b in r["diffusion_bpd_by_t"]),
                               r["diffusion_bpd"], rtol=1e-6)
    assert all(b["bpd"] > -1e-5 for b in r["diffusion_bpd_by_t"])  # KLs, up to float32 round-off
    assert 0 <= r["prior_bpd"] < 1e-5
    assert r["diffusion_bpd_by_t"][0]["t"] == [2, 101]
    assert r["diffusion_bpd_by_t"][-1]["t"] == [902, 1000]  # 999 terms in 10 bins
    assert r["num_examples"] == 64 and 0 < r["bpd_stderr"] < 0.1


def test_bound_masks_padding_and_is_sharding_invariant():
    """Images past num_examples and eval_batches' padding are left out exactly; the result does
    not depend on the number of devices the batch is split over."""
    schedule = d.make_schedule("linear", 20)
    source, _ = discrete_source(40, 4, seed=1)
    images, _ = source.read(np.arange(36))
    run = lambda src, **kw: evaluation.bound_on_split(exact_eps(schedule), {}, schedule, src,
                                                      batch_size=16, **kw)
    cut = run(source, num_examples=36)
    padded = run(data.ArraySource(images))
    one_device = run(source, num_examples=36, mesh=train_lib.data_mesh(jax.devices()[:1]))
    assert cut["num_examples"] == padded["num_examples"] == 36
    for key in ("bpd", "bpd_stderr", "prior_bpd", "decoder_bpd", "diffusion_bpd"):
        np.testing.assert_allclose(cut[key], padded[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(cut[key], one_device[key], rtol=1e-5, err_msg=key)
    assert run(source)["bpd"] != cut["bpd"]
    with pytest.raises(ValueError, match=r"num_examples must be in \[1, 40\].*got 41"):
        run(source, num_examples=41)
    with pytest.raises(ValueError, match="batch_size=12 must be a positive multiple of the mesh"):
        evaluation.bound_on_split(exact_eps(schedule), {}, schedule, source, batch_size=12)


def test_mc_bound_is_unbiased_within_its_stated_error():
    """The Monte Carlo bound (prior and decoder exact, K = 3 stratified timesteps of the 19
    diffusion terms, strata of 7, 6, 6) against the full bound on T = 20 (the tiny config's
    schedule), each on its own 2048 images: independent estimates of the same expectation, so
    z = (mc - full) / sqrt(se_mc^2 + se_full^2) is N(0, 1). The denoiser is the exact one shrunk
    by 0.6, so every diffusion term is large and varies with t (a wrong stratum weight would
    show: the diffusion part is ~40x the MC standard error)."""
    schedule = d.make_schedule("linear", 20)
    exact = exact_eps(schedule)
    shrunk = lambda params, x, t: 0.6 * exact(params, x, t)
    run = lambda seed, **kw: evaluation.bound_on_split(
        shrunk, {}, schedule, discrete_source(2048, 4, seed=seed)[0], batch_size=512, seed=seed,
        **kw)
    full, mc = run(10), run(11, estimator="mc", timesteps_per_image=3)
    z = (mc["bpd"] - full["bpd"]) / np.hypot(mc["bpd_stderr"], full["bpd_stderr"])
    assert abs(z) < 3, (z, mc["bpd"], full["bpd"])
    assert mc["diffusion_bpd"] > 20 * mc["bpd_stderr"], (mc["diffusion_bpd"], mc["bpd_stderr"])
    assert mc["estimator"] == "mc" and mc["timesteps_per_image"] == 3
    assert [b["t"] for b in mc["diffusion_bpd_by_t"]] == [[2, 8], [9, 14], [15, 20]]
    np.testing.assert_allclose(mc["prior_bpd"] + mc["decoder_bpd"] + mc["diffusion_bpd"],
                               mc["bpd"], rtol=1e-5)
    with pytest.raises(ValueError, match=r"sampled timesteps must be in \[1, 19\].*got 20"):
        run(0, estimator="mc", timesteps_per_image=20)
    with pytest.raises(ValueError, match="unknown bits/dim estimator 'exact'"):
        run(0, estimator="exact")
    with pytest.raises(ValueError, match="'mc' estimator needs timesteps_per_image"):
        run(0, estimator="mc")


@pytest.fixture(scope="module")
def trained(trained_workdir):
    return generate.load_workdir(str(trained_workdir))


@pytest.fixture(scope="module")
def splits(fashion_dir):
    load = lambda split: data.load_split("fashion_mnist", split, data_dir=fashion_dir)
    return load("train[:512]"), load("test[:64]")


@pytest.fixture(scope="module")
def classifier(splits, tmp_path_factory):
    train, test = splits
    params, accuracy = evaluation.train_classifier(train, test, steps=30, batch_size=32)
    path = str(tmp_path_factory.mktemp("classifier") / "classifier.msgpack")
    evaluation.save_classifier(path, params, image_shape=train.image_shape,
                               num_classes=train.num_classes,
                               provenance={"dataset": "fashion_mnist", "test_accuracy": accuracy})
    return path, accuracy


def test_bits_per_dim_of_checkpoint(trained, splits):
    run = lambda **kw: evaluation.bits_per_dim(trained, splits[1], batch_size=16,
                                               num_examples=24, num_t_bins=19, **kw)
    r = run()
    assert r["num_examples"] == 24 and r["step"] == 4 and r["params"] == "ema"
    assert r["num_timesteps"] == 20 and r["variance"] == "fixedlarge"
    assert np.isfinite(r["bpd"]) and r["bpd"] > 0 and r["bpd_stderr"] > 0
    np.testing.assert_allclose(r["prior_bpd"] + r["decoder_bpd"] + r["diffusion_bpd"], r["bpd"],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="unknown params 'best'"):
        evaluation.bits_per_dim(trained, splits[1], params="best", batch_size=16)
    # The Monte Carlo bound with K = T - 1 strata of one timestep each uses the full bound's
    # noise: the same numbers.
    mc = run(estimator="mc", timesteps_per_image=19)
    for key in ("bpd", "bpd_stderr", "prior_bpd", "decoder_bpd", "diffusion_bpd"):
        np.testing.assert_allclose(mc[key], r[key], rtol=2e-6, err_msg=key)
    assert [b["t"] for b in mc["diffusion_bpd_by_t"]] == [[t, t] for t in range(2, 21)]
    np.testing.assert_allclose([b["bpd"] for b in mc["diffusion_bpd_by_t"]],
                               [b["bpd"] for b in r["diffusion_bpd_by_t"]], rtol=2e-6)
    assert r["estimator"] == "full" and "timesteps_per_image" not in r


def test_a_classifier_file_from_before_convs_per_stage_has_one_conv_per_stage(tmp_path):
    """Files written before ``convs_per_stage`` existed (one conv per stage) keep their features."""
    import flax.serialization
    old = evaluation.Classifier(10, convs_per_stage=1)
    images = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1), minval=-1.0)
    params = old.init(jax.random.key(1), images)["params"]
    info = dict(image_shape=[28, 28, 1], num_classes=10, channels=[32, 64], num_features=128)
    path = tmp_path / "old.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(
        {"params": params, "info": json.dumps(info)}))
    extractor, _ = evaluation.load_classifier(str(path))
    np.testing.assert_allclose(extractor(np.asarray(images)),
                               old.apply({"params": params}, images)[1], rtol=1e-4, atol=1e-5)


def test_classifier_features_and_reference_cache(classifier, splits, fashion_dir, tmp_path):
    path, accuracy = classifier
    assert accuracy > 0.3  # 30 steps on 512 images; chance is 0.1
    extractor, info = evaluation.load_classifier(path)
    assert info["test_accuracy"] == accuracy and info["image_shape"] == [28, 28, 1]
    assert info["sha256"][:16] in extractor.name
    images = splits[1].read(np.arange(7))[0]
    features = extractor(data.to_model_range(images))
    assert features.shape == (7, 128) and np.all(features >= 0)
    with pytest.raises(ValueError, match=r"images have shape \(32, 32, 3\) but the classifier"):
        extractor(np.zeros((2, 32, 32, 3)))

    calls = []
    counting = evaluation.FeatureFunction(extractor.name,
                                          lambda x: calls.append(len(x)) or extractor.fn(x), 32)
    cache = str(tmp_path / "reference.npz")
    ref = lambda split, ex=counting: evaluation.reference_statistics(
        ex, dataset="fashion_mnist", split=split, data_dir=fashion_dir, cache=cache)
    first = ref("test[:40]")
    assert first.features.shape == (40, 128) and first.sigma.shape == (128, 128)
    # Batches of 32 here against 500 above: float32 round-off only.
    np.testing.assert_allclose(first.features[:7], features, rtol=1e-4, atol=1e-4)
    num_calls = len(calls)
    again = ref("test[:40]")  # from the cache
    assert len(calls) == num_calls
    np.testing.assert_array_equal(again.mu, first.mu)
    assert ref("test[:48]").features.shape == (48, 128) and len(calls) > num_calls  # new split
    # Another copy of the dataset (issue 22): its own cache entry, not the first copy's stats.
    copy = tmp_path / "copy_of_data"
    copy.symlink_to(fashion_dir, target_is_directory=True)
    num_calls = len(calls)
    other = evaluation.reference_statistics(counting, dataset="fashion_mnist", split="test[:48]",
                                            data_dir=copy, cache=cache)
    assert len(calls) > num_calls and other.provenance["data_dir"] == str(copy)
    renamed = evaluation.FeatureFunction("another network", extractor.fn)
    assert ref("test[:48]", renamed).provenance["feature_network"] == "another network"


def test_fid_kid_of_checkpoint(trained, classifier, fashion_dir):
    extractor, _ = evaluation.load_classifier(classifier[0])
    reference = evaluation.reference_statistics(extractor, dataset="fashion_mnist",
                                                split="test[:64]", data_dir=fashion_dir)
    r = evaluation.fid_kid(trained, num_samples=16, reference=reference,
                           feature_extractor=extractor, sampler="ddim", num_steps=5,
                           kid_subsets=10)
    assert r["fid"] > 0 and np.isfinite(r["kid"]) and r["kid_subset_size"] == 16
    assert r["num_samples"] == 16 and r["sampler"] == "ddim" and r["num_steps"] == 5
    assert r["params"] == "ema" and r["step"] == 4 and r["eta"] == 0.0
    assert r["reference"] == {**reference.provenance, "num_examples": 64}
    assert r["feature_network"] == extractor.name
    with pytest.raises(ValueError, match="reference statistics were computed with 'other'"):
        evaluation.fid_kid(trained, num_samples=16, feature_extractor=extractor,
                           reference=evaluation.ReferenceStats(
                               reference.mu, reference.sigma, reference.features,
                               {**reference.provenance, "feature_network": "other"}))


@pytest.mark.slow
def test_evaluate_cli(trained_workdir, fashion_dir, tmp_path):
    classifier = str(tmp_path / "classifier.msgpack")
    data = f"--data_dir={fashion_dir}"
    result = run_cli("evaluate.py", "--train_classifier", "--dataset", "fashion_mnist", data,
                     "--classifier", classifier, "--classifier_steps", "5",
                     "--classifier_batch_size", "32", "--classifier_train_split", "train[:256]",
                     "--classifier_test_split", "test[:64]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["steps"] == 5
    out = tmp_path / "metrics.json"
    result = run_cli("evaluate.py", "--workdir", str(trained_workdir), data,
                     "--metrics", "bpd,fid,floor", "--out", str(out), "--classifier", classifier,
                     "--bpd_split", "test[:32]", "--bpd_examples", "16", "--bpd_batch_size", "8",
                     "--bpd_estimator", "mc", "--bpd_timesteps", "5",
                     "--num_samples", "16", "--sample_batch_size", "16", "--sampler", "ddim",
                     "--num_steps", "4",
                     "--reference_split", "test[:64]", "--floor_split", "train[:32]",
                     "--kid_subsets", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["step"] == 4 and metrics["dataset"] == "fashion_mnist"
    assert metrics["bpd"]["split"] == "test[:32]" and metrics["bpd"]["num_examples"] == 16
    assert np.isfinite(metrics["bpd"]["bpd"])
    assert metrics["bpd"]["estimator"] == "mc" and metrics["bpd"]["timesteps_per_image"] == 5
    fid = metrics["fid"]
    assert fid["num_samples"] == 16 and fid["sampler"] == "ddim" and fid["num_steps"] == 4
    assert fid["reference"]["split"] == "test[:64]" and fid["reference"]["num_examples"] == 64
    assert metrics["floor"]["split"] == "train[:32]" and metrics["floor"]["num_images"] == 16
    assert metrics["feature_network"]["steps"] == 5
    assert list(tmp_path.glob("classifier.fashion_mnist.test_64.reference.npz"))
    bad = run_cli("evaluate.py", "--workdir", str(trained_workdir), "--metrics", "fid,bleu")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        "evaluate.py: error: unknown metrics ['bleu']; expected any of "
        "['bpd', 'bpd_ode', 'fid', 'is', 'floor']")


def test_evaluate_cli_names_the_flag_k_comes_from(tmp_path):
    result = run_cli("evaluate.py", "--workdir", str(tmp_path), "--metrics", "bpd",
                     "--bpd_estimator", "mc")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "evaluate.py: error: --bpd_estimator=mc needs --bpd_timesteps (K, the timesteps per image)")


@pytest.mark.slow
def test_train_classifier_on_a_runs_own_labelled_folder(tmp_path):
    """--train_classifier --workdir reads the run's data as it trained on it: here a folder with
    labels from its subfolders, split into train[:90%] and train[90%:] (a folder has no 'test')."""
    from PIL import Image
    from configs import test as test_config
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "light"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(60 + 120 * c + rng.normal(0, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    config = test_config.get_config()
    config.data.update(name="folder", path=str(tmp_path / "images"), image_size=8, channels=1,
                       labels_from_subdirs=True, cache_dir=str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(config.to_json_best_effort())
    classifier = tmp_path / "classifier.msgpack"
    result = run_cli("evaluate.py", "--train_classifier", "--workdir", str(tmp_path / "run"),
                     "--classifier", str(classifier), "--classifier_steps", "3",
                     "--classifier_batch_size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout)
    assert (info["dataset"], info["train_split"], info["test_split"]) == (
        "folder", "train[:90%]", "train[90%:]")
    _, saved = evaluation.load_classifier(str(classifier))
    assert saved["num_classes"] == 2 and saved["image_shape"] == [8, 8, 1]
