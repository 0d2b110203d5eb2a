"""InceptionV3 (pytorch-fid's FID Inception): its layers against float64 numpy references of the
PyTorch ops, the expected state dict, and the loader on random weights (no weights ship here)."""

import hashlib
import json
import math
import sys

import numpy as np
import pytest

import jax.numpy as jnp

from conftest import run_cli
from ddpm_jax.evaluation import inception


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
    np.savez(path, **state, **{"fc.weight": np.zeros((1008, 2048), np.float32),
                               "fc.bias": np.zeros(1008, np.float32),
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


def test_pth_state_dict(state, gray_images, gray_features, tmp_path, monkeypatch):
    """A .pth reads like the .npz where torch is installed (the [bench] extra); without torch,
    the error names the conversion."""
    path = tmp_path / "weights.pth"
    try:
        import torch
    except ImportError:
        path.write_bytes(b"not read without torch")
    else:
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
        np.testing.assert_array_equal(
            inception.load_inception(str(path), batch_size=2)(gray_images), gray_features)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match=r"needs torch.*convert it to \.npz.*np\.savez"):
        inception.load_inception(str(path))


def test_errors(state, tmp_path):
    def write(name, tensors):
        np.savez(tmp_path / name, **tensors)
        return str(tmp_path / name)

    with pytest.raises(FileNotFoundError, match="no Inception weights file .*never downloads"):
        inception.load_inception(str(tmp_path / "absent.npz"))
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown extension '\.h5'.*expected \.npz, or \.pth"):
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


@pytest.mark.slow
def test_evaluate_cli_with_inception_weights(weights_path, fashion_dir, tmp_path):
    """``evaluate.py --metrics floor --inception_weights``: real train images vs the test split
    on pool3 features, with the weights' identity in the report."""
    out = tmp_path / "floor.json"
    result = run_cli("evaluate.py", "--metrics", "floor", "--dataset", "fashion_mnist",
                     f"--data_dir={fashion_dir}", "--inception_weights", str(weights_path),
                     "--out", str(out), "--num_samples", "8", "--reference_split", "test[:8]",
                     "--floor_split", "train[:8]", "--kid_subsets", "2", "--feature_batch_size", "8",
                     "--reference_cache", str(tmp_path / "reference.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    name = metrics["feature_network"]["name"]
    assert name.startswith("inception_v3_pool3 sha256:")
    assert metrics["floor"]["num_images"] == 8 and metrics["floor"]["fid"] > 0
    assert metrics["floor"]["reference"]["feature_network"] == name
    bad = run_cli("evaluate.py", "--metrics", "floor", "--dataset", "fashion_mnist",
                  "--inception_weights", str(tmp_path / "missing.npz"), "--out", str(out))
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "evaluate.py: error: no Inception weights file")
