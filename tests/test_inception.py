"""InceptionV3 (pytorch-fid's FID Inception): its layers against float64 numpy references of the
PyTorch ops and against torch's resize (a fixture), the expected state dict, the loader on random
weights (no weights ship here), the torch-free state-dict reader on torch-written fixtures, and
fetching verified weights from a local HTTP server (never the internet)."""

import hashlib
import http.server
import json
import math
import os
import pathlib
import pickle
import re
import threading
import zipfile

import numpy as np
import pytest

import jax.numpy as jnp

from conftest import run_cli
from ddpm_jax import evaluation
from ddpm_jax.evaluation import downloads, inception, torch_state_dict

FIXTURES = pathlib.Path(__file__).resolve().parent / "data" / "torch_state_dicts"


def random_state_dict(seed=0):
    """Random weights of pytorch-fid's layout, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in inception.state_dict_shapes().items():
        if k.endswith(".conv.weight"):
            state[k] = rng.standard_normal(shape, np.float32) * math.sqrt(2 / math.prod(shape[1:]))
        elif k.endswith((".bn.weight", ".bn.running_var")):
            state[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[k] = 0.1 * rng.standard_normal(shape, np.float32)
    return state


@pytest.fixture(scope="module")
def state():
    return random_state_dict()


@pytest.fixture(scope="module")
def weights_path(state, tmp_path_factory):
    """The random weights as an .npz, with the entries the loader ignores."""
    path = tmp_path_factory.mktemp("inception") / "weights.npz"
    fc = np.random.default_rng(5).normal(0, 0.05, (1008, 2048)).astype(np.float32)
    np.savez(path, **state, **{"fc.weight": fc, "fc.bias": np.zeros(1008, np.float32),
                               "Conv2d_1a_3x3.bn.num_batches_tracked": np.int64(0)})
    return path


@pytest.fixture(scope="module")
def extractor(weights_path):
    return inception.load_inception(str(weights_path), batch_size=2)


@pytest.fixture(scope="module")
def gray_images():
    return np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def gray_features(extractor, gray_images):
    return extractor(gray_images)


def test_state_dict_matches_pytorch_fid():
    # fid_inception_v3() is torchvision's Inception3(num_classes=1008, aux_logits=False) with
    # FID blocks of the same shapes: 94 BasicConv2d (conv weight + 4 BatchNorm tensors each).
    # Its parameters() total 23,850,960 = 21,751,136 conv + 2 x 17,216 BN affine + 2,065,392 fc
    # (torchvision's 27,161,264 for 1000 classes with aux logits, less the 3,326,696 of
    # AuxLogits, plus 8 more classes x 2049).
    shapes = inception.state_dict_shapes()
    assert len(shapes) == 94 * 5
    conv = sum(math.prod(s) for k, s in shapes.items() if k.endswith(".conv.weight"))
    bn_channels = sum(s[0] for k, s in shapes.items() if k.endswith(".bn.weight"))
    assert (conv, bn_channels) == (21_751_136, 17_216)
    assert conv + 2 * bn_channels + 2048 * 1008 + 1008 == 23_850_960
    assert sum(math.prod(s) for s in shapes.values()) == conv + 4 * bn_channels
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6a.branch3x3.conv.weight"] == (384, 288, 3, 3)
    assert shapes["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7b.branch3x3_2b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)


def numpy_basic_conv(x, weight, bn, stride, padding):
    """PyTorch's BasicConv2d in float64: x [N, C, H, W], weight [O, C, kh, kw], eval BatchNorm."""
    (ph, pw), (o, _, kh, kw) = padding, weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    h, w = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], o, h, w))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride * h:stride, j:j + stride * w:stride]
            y += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
    gamma, beta, mean, var = (a[None, :, None, None] for a in bn)
    return np.maximum((y - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0)


@pytest.mark.parametrize("kernel, stride, padding", [((3, 3), 2, (1, 1)), ((1, 3), 1, (0, 1))])
def test_basic_conv_matches_pytorch_layout(kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 8))
    weight = rng.normal(size=(5, 3, *kernel))
    bn = (rng.uniform(0.5, 1.5, 5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2, 5))
    params = inception.fold_batch_norm(weight, *bn)
    layer = inception.BasicConv2d(5, kernel, stride, padding)
    out = layer.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
    expected = numpy_basic_conv(x, weight, bn, stride, padding).transpose(0, 2, 3, 1)
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_avg_pool_does_not_count_padding():
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 3))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones((4, 5)), 1)
    expected = np.zeros_like(x)
    for i in range(4):
        for j in range(5):
            window = padded[:, i:i + 3, j:j + 3]
            expected[:, i, j] = window.sum(axis=(1, 2)) / ones[i:i + 3, j:j + 3].sum()
    np.testing.assert_allclose(inception.avg_pool_3x3(jnp.asarray(x, jnp.float32)), expected,
                               rtol=1e-6, atol=1e-6)


def torch_bilinear(x, out_h, out_w):
    """F.interpolate(mode='bilinear', align_corners=False) on [N, H, W, C], in float64."""
    def axis(in_size, out_size):
        src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, in_size - 1), src - i0
    (r0, r1, ly), (c0, c1, lx) = axis(x.shape[1], out_h), axis(x.shape[2], out_w)
    rows = x[:, r0] * (1 - ly)[None, :, None, None] + x[:, r1] * ly[None, :, None, None]
    return rows[:, :, c0] * (1 - lx)[None, None, :, None] + rows[:, :, c1] * lx[None, None, :, None]


@pytest.mark.parametrize("in_hw, out_hw", [((7, 5), (16, 11)), ((16, 13), (7, 5))])
def test_resize_matches_pytorch_bilinear(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3))
    out = inception.resize_bilinear(jnp.asarray(x, jnp.float32), out_hw)
    np.testing.assert_allclose(out, torch_bilinear(x, *out_hw), rtol=1e-5, atol=1e-5)


def test_features_from_random_weights(extractor, weights_path, gray_images, gray_features):
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert extractor.name == f"inception_v3_pool3 sha256:{digest[:16]}"
    assert gray_features.shape == (2, 2048) and gray_features.dtype == np.float32
    assert np.isfinite(gray_features).all() and (gray_features >= 0).all()
    assert gray_features.std() > 0 and not np.allclose(gray_features[0], gray_features[1])
    np.testing.assert_array_equal(extractor(gray_images), gray_features)
    # RGB with equal channels is the same image; 3 images take two padded batches.
    rgb = np.concatenate([np.repeat(gray_images, 3, axis=-1), np.zeros((1, 16, 16, 3))])
    rgb_features = extractor(rgb)
    assert rgb_features.shape == (3, 2048)
    np.testing.assert_allclose(rgb_features[:2], gray_features, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"C = 1 or 3, got \(2, 16, 16, 2\)"):
        extractor(np.zeros((2, 16, 16, 2)))


def test_errors(state, tmp_path):
    def write(name, tensors):
        np.savez(tmp_path / name, **tensors)
        return str(tmp_path / name)

    with pytest.raises(FileNotFoundError, match="no Inception weights file .*'auto' to download"):
        inception.load_inception(str(tmp_path / "absent.npz"))
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown extension '\.h5'.*expected \.npz, \.pth or"):
        inception.load_inception(str(tmp_path / "weights.h5"))
    # Key checks come before shape checks: placeholders suffice.
    tiny = {k: np.zeros(1, np.float32) for k in state}
    missing = write("missing.npz",
                    {k: v for k, v in tiny.items() if not k.startswith("Mixed_7c.")})
    with pytest.raises(ValueError, match=r"45 missing keys .*missing\.npz.*\['Mixed_7c\."):
        inception.load_inception(missing)
    extra = write("extra.npz", {**tiny, "AuxLogits.fc.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected keys .*\['AuxLogits\.fc\.weight'\]"):
        inception.load_inception(extra)
    key = "Mixed_6b.branch7x7_2.conv.weight"
    wrong = write("wrong.npz", {**state, key: state[key].transpose(0, 1, 3, 2)})
    with pytest.raises(ValueError, match=rf"'{key}' in .*wrong\.npz' has shape \(128, 128, 7, 1\), "
                                         r"expected \(128, 128, 1, 7\)"):
        inception.load_inception(wrong)


def test_resize_matches_torch_interpolate():
    """32x32 -> 299x299 as pytorch-fid resizes, against torch's own output (a fixture)."""
    with np.load(FIXTURES / "resize_expected.npz") as f:
        images, expected = f["images"], f["resized_every_13th"]
    out = inception.resize_bilinear(jnp.asarray(images.transpose(0, 2, 3, 1)), (299, 299))
    np.testing.assert_allclose(np.asarray(out)[:, ::13, ::13], expected.transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_read_state_dict_equals_torch(fmt):
    """Both torch.save formats, written by torch (tests/data/torch_state_dicts/make_*.py):
    strided, offset, 0-d, half, bfloat16, bool and integer tensors and a Parameter."""
    state = torch_state_dict.read_state_dict(FIXTURES / f"state_dict_{fmt}.pth")
    with np.load(FIXTURES / "state_dict_expected.npz") as f:
        assert list(state) == f.files
        for k in f.files:
            assert state[k].shape == f[k].shape, k
            np.testing.assert_array_equal(state[k].astype(f[k].dtype), f[k], err_msg=k)
    assert state["bfloat"].dtype.name == "bfloat16" and state["half"].dtype == np.float16
    assert state["bn.num_batches_tracked"].shape == () and state["mask"].dtype == bool


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload, refused", [
    (_RunsCode(), "posix.system"),
    ({"w": pickle.loads(pickle.dumps(np.float32))}, "numpy.float32"),
])
def test_read_state_dict_refuses_other_globals_by_name(tmp_path, payload, refused):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing global {refused} in .*evil"):
        torch_state_dict.read_state_dict(path)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (
        torch_state_dict._LEGACY_MAGIC, torch_state_dict._LEGACY_PROTOCOL, {}, payload)))
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing global {refused}"):
        torch_state_dict.read_state_dict(legacy)


class _Server:
    """A local HTTP server of one file; counts GET requests; can drop the connection half-way."""

    def __init__(self, body: bytes):
        self.body, self.requests, self.drop = body, 0, False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                if server.drop:
                    self.wfile.write(server.body[:len(server.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights-0123abcd.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server(os.urandom(300_000))
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_fetch_weights_downloads_once_and_verifies(server, tmp_path):
    digest = hashlib.sha256(server.body).hexdigest()
    path = downloads.fetch_weights(server.url, digest, cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "weights-0123abcd.pth"
    assert path.read_bytes() == server.body and server.requests == 1
    # Cached: verified and reused without a request (a prefix of 8 hex digits suffices).
    assert downloads.fetch_weights(server.url, digest[:8].upper(),
                                   cache_dir=tmp_path / "cache") == path
    assert server.requests == 1
    assert os.listdir(tmp_path / "cache") == ["weights-0123abcd.pth"]


def test_fetch_weights_wrong_digest_names_both_and_leaves_nothing(server, tmp_path):
    digest = hashlib.sha256(server.body).hexdigest()
    with pytest.raises(ValueError, match=rf"SHA-256 {digest}, expected {'0' * 64}.*deleted"):
        downloads.fetch_weights(server.url, "0" * 64, cache_dir=tmp_path)
    assert os.listdir(tmp_path) == []
    (tmp_path / "weights-0123abcd.pth").write_bytes(b"something else")
    with pytest.raises(ValueError, match=r"the cached .* has SHA-256 [0-9a-f]{64}, expected "):
        downloads.fetch_weights(server.url, digest, cache_dir=tmp_path)
    assert server.requests == 1  # the cached file is checked, not downloaded again
    with pytest.raises(ValueError, match="sha256 must be 8 to 64 hex digits, got 'abc'"):
        downloads.fetch_weights(server.url, "abc", cache_dir=tmp_path)


def test_fetch_weights_dropped_connection_or_no_network(server, tmp_path):
    server.drop = True
    digest = hashlib.sha256(server.body).hexdigest()
    with pytest.raises(ConnectionError, match=r"closed after 150000 of 300000 bytes.*put the file "
                                              r"at .*weights-0123abcd\.pth by hand"):
        downloads.fetch_weights(server.url, digest, cache_dir=tmp_path)
    assert os.listdir(tmp_path) == []
    server.httpd.shutdown()
    server.httpd.server_close()  # nothing listens on the port any more
    with pytest.raises(ConnectionError) as error:
        downloads.fetch_weights(server.url, digest, cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and f"put the file at {tmp_path / 'weights-0123abcd.pth'} by hand" \
        f" (its SHA-256 starts with {digest})" in message
    assert os.listdir(tmp_path) == []


def test_fetch_pytorch_fid_weights_converts_once(tmp_path, monkeypatch):
    """The 'auto' path: fetched, verified, converted to .npz once; the .npz keeps the .pth's
    SHA-256 as the weights' identity (served here: the small torch-written fixture)."""
    body = (FIXTURES / "state_dict_zip.pth").read_bytes()
    local = _Server(body)
    digest = hashlib.sha256(body).hexdigest()
    monkeypatch.setattr(inception, "PYTORCH_FID_WEIGHTS_URL", local.url)
    monkeypatch.setattr(inception, "PYTORCH_FID_WEIGHTS_SHA256", digest[:8])
    try:
        npz = inception.fetch_pytorch_fid_weights(tmp_path)
        assert npz == tmp_path / "weights-0123abcd.npz" and local.requests == 1
        mtime = npz.stat().st_mtime_ns
        assert inception.fetch_pytorch_fid_weights(tmp_path) == npz and local.requests == 1
        assert npz.stat().st_mtime_ns == mtime
    finally:
        local.httpd.shutdown()
        local.httpd.server_close()
    state, identity = inception.read_weights(npz)
    assert identity == digest == inception.weights_sha256(npz)
    assert inception.read_weights(tmp_path / "weights-0123abcd.pth")[1] == digest
    np.testing.assert_array_equal(state["conv.weight"],
                                  np.load(FIXTURES / "state_dict_expected.npz")["conv.weight"])


def test_inception_score_matches_improved_gan():
    """Against a transcription of openai/improved-gan inception_score.py get_inception_score
    (softmax predictions, 10 consecutive splits, exp of the mean KL to the split's marginal)."""
    logits = np.random.default_rng(0).normal(0, 3, (1003, 1008))
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(10):
        part = preds[(i * preds.shape[0] // 10):((i + 1) * preds.shape[0] // 10), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    mean, std = evaluation.inception_score(logits)
    np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-9)
    assert 1 < mean < 1008
    # One class for every image: 1; each of 1008 classes once per split: 1008 (the extremes).
    assert evaluation.inception_score(np.full((20, 1008), 0.0), splits=2) == (1.0, 0.0)
    one_hot = np.tile(np.eye(1008) * 100.0, (2, 1))
    np.testing.assert_allclose(evaluation.inception_score(one_hot, splits=2)[0], 1008, rtol=1e-6)
    with pytest.raises(ValueError, match=r"N >= splits >= 1, got shape \(5, 1008\) and splits=10"):
        evaluation.inception_score(logits[:5])


def test_reference_stats_round_trip(tmp_path):
    features = np.random.default_rng(0).normal(size=(50, 6))
    mu, sigma = evaluation.feature_statistics(features)
    computed = evaluation.ReferenceStats(mu, sigma, features, {"feature_network": "net"})
    path = str(tmp_path / "stats.npz")
    evaluation.save_reference_stats(path, computed)
    with np.load(path) as f:
        assert sorted(f.files) == ["mu", "sigma"]  # pytorch-fid's --save-stats keys
    loaded = evaluation.load_reference_stats(path, feature_network="net")
    np.testing.assert_array_equal(loaded.mu, mu)
    np.testing.assert_array_equal(loaded.sigma, sigma)
    assert loaded.provenance["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    samples = features[:20] + 0.5
    against_file = evaluation.compare_features(samples, loaded)
    against_features = evaluation.compare_features(samples, computed, kid_subsets=2)
    assert against_file["fid"] == against_features["fid"] > 0
    assert "kid" not in against_file and "kid" in against_features
    assert against_file["reference"]["file"] == os.path.abspath(path)
    np.savez(tmp_path / "bad.npz", m=mu, s=sigma)
    with pytest.raises(ValueError, match=r"lack \['mu', 'sigma'\]; expected pytorch-fid"):
        evaluation.load_reference_stats(str(tmp_path / "bad.npz"), feature_network="net")


@pytest.mark.slow
def test_evaluate_cli_with_inception_weights(weights_path, fashion_dir, trained_workdir,
                                             tmp_path):
    """``evaluate.py --inception_weights``: FID, IS and floor of a run on pool3 features, the
    reference statistics exported in pytorch-fid's format, the weights' SHA-256 in the report;
    a bad --reference_stats file fails with one line. (One process: Inception compiles once.)"""
    out, stats, cache = tmp_path / "metrics.json", tmp_path / "stats.npz", tmp_path / "ref.npz"
    common = ["--dataset", "fashion_mnist", f"--data_dir={fashion_dir}", "--inception_weights",
              str(weights_path), "--out", str(out)]
    result = run_cli("evaluate.py", "--metrics", "fid,is,floor", *common, "--workdir",
                     str(trained_workdir), "--num_samples", "16", "--sample_batch_size", "16",
                     "--sampler", "ddim", "--num_steps", "2", "--feature_batch_size", "16",
                     "--reference_split", "test[:16]", "--floor_split", "train[:16]",
                     "--kid_subsets", "2", "--reference_cache", str(cache),
                     "--save_reference_stats", str(stats))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    name = metrics["feature_network"]["name"]
    assert name.startswith("inception_v3_pool3 sha256:")
    assert metrics["feature_network"]["sha256"] == hashlib.sha256(
        weights_path.read_bytes()).hexdigest()
    fid = metrics["fid"]
    assert fid["fid"] > 0 and fid["reference"]["feature_network"] == name
    assert fid["inception_score_splits"] == 10 and 1 < fid["inception_score"] < 1008
    assert metrics["floor"]["num_images"] == 16 and metrics["floor"]["fid"] > 0
    exported = evaluation.load_reference_stats(str(stats), feature_network=name)
    with np.load(cache) as f:  # the statistics the run compared against
        np.testing.assert_array_equal(exported.mu, f["mu"])
        np.testing.assert_array_equal(exported.sigma, f["sigma"])
    np.savez(tmp_path / "bad.npz", mean=exported.mu)
    for args, error in [
            (["--reference_stats", str(tmp_path / "bad.npz")],
             "reference statistics .*bad.npz' lack \\['mu', 'sigma'\\]"),
            (["--inception_weights", str(tmp_path / "missing.npz")],
             "no Inception weights file .*missing.npz")]:
        bad = run_cli("evaluate.py", "--metrics", "floor", *common, *args)
        assert bad.returncode != 0
        assert re.match(f"evaluate.py: error: {error}", bad.stderr.strip().splitlines()[-1])
