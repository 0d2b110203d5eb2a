"""diffusers-format load / save, bare parameter files, and sampling from a pretrained model.

The fixtures in tests/data/ were written by diffusers itself
(tests/data/make_diffusers_fixtures.py); these tests need neither torch nor diffusers, except
``test_diffusers_builds_our_export`` (skipped without diffusers, i.e. in CI, whose ``make test``
installs only ``.[test]``).
"""

import hashlib
import http.server
import json
import pathlib
import shutil
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from conftest import run_cli
from ddpm_jax import generate, pretrained
from ddpm_jax.models import UNet
from ddpm_jax.models.layers import timestep_embedding
from ddpm_jax.schedules import make_schedule

DATA = pathlib.Path(__file__).parent / "data"
TINY = DATA / "ho_tiny"
LAYOUT_256 = DATA / "ho256_layout"


def _apply_nchw(p: pretrained.Pretrained, x_nchw: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Our model on diffusers' NCHW layout."""
    out = jax.jit(lambda params, x, t: p.model.apply({"params": params}, x, t))(
        p.params, x_nchw.transpose(0, 2, 3, 1), t)
    return np.asarray(out).transpose(0, 3, 1, 2)


def _rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _param_shapes(model: UNet, image_shape):
    labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)),
                                             jnp.zeros((1,), jnp.int32), labels))["params"]


def _random_params(model: UNet, image_shape, seed: int = 0):
    """Random values for every parameter, so no zero-initialised layer hides a wrong mapping."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), jnp.float32),
                        _param_shapes(model, image_shape))


def _copy_fixture(tmp_path, *, config=None, scheduler=None, tensors=None) -> pathlib.Path:
    """ho_tiny in ``tmp_path`` with its config fields, scheduler fields or tensors changed."""
    out = tmp_path / "model"
    shutil.copytree(TINY, out)
    for name, changes in ((pretrained.CONFIG_NAME, config),
                          (pretrained.SCHEDULER_NAME, scheduler)):
        if changes:
            fields = json.loads((out / name).read_text())
            (out / name).write_text(json.dumps({**fields, **changes}))
    if tensors is not None:
        weights = out / pretrained.WEIGHTS_NAME
        weights.write_bytes(safetensors.numpy.save(tensors(safetensors.numpy.load_file(weights))))
    return out


# --- diffusers' own outputs ---------------------------------------------------------------------


def test_matches_diffusers_ho_configuration():
    p = pretrained.load(str(TINY))
    ref = np.load(TINY / "outputs.npz")
    assert p.image_shape == (32, 32, 3)
    assert (p.model.base_channels, tuple(p.model.channel_mults), tuple(p.model.attn_resolutions),
            p.model.num_res_blocks, p.model.num_groups) == (8, (1, 2), (16,), 2, 4)
    assert (p.variance, p.target, p.clip_x0) == ("fixedlarge", "eps", True)
    np.testing.assert_allclose(p.schedule.betas, ref["betas"], rtol=1e-6)
    np.testing.assert_allclose(p.schedule.alphas_cumprod, ref["alphas_cumprod"], rtol=1e-5)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p.params))  # stored as float16
    x = np.random.RandomState(0).randn(3, 3, 32, 32).astype(np.float32)
    assert _rel_err(_apply_nchw(p, x, ref["t"]), ref["out"]) < 1e-5


def test_matches_diffusers_256_block_layout():
    """Six levels, attention only at the fifth (16 px high at 256): the level/attention mapping."""
    p = pretrained.load(str(LAYOUT_256))
    ref = np.load(LAYOUT_256 / "outputs.npz")
    assert p.image_shape == (256, 256, 3)
    assert tuple(p.model.channel_mults) == (1, 1, 2, 2, 4, 4)
    assert tuple(p.model.attn_resolutions) == (16,)
    assert (p.variance, p.target, p.clip_x0) == ("fixedsmall", "v", False)
    # squaredcos_cap_v2: diffusers' float32 betas; its float32 cumprod drifts ~1e-5 at the tail.
    np.testing.assert_allclose(p.schedule.betas, ref["betas"], rtol=1e-6)
    np.testing.assert_allclose(p.schedule.alphas_cumprod, ref["alphas_cumprod"], rtol=3e-5)
    x = np.random.RandomState(1).randn(1, 3, 256, 256).astype(np.float32)
    out = _apply_nchw(p, x, ref["t"])
    assert _rel_err(out[:, :, ::16, ::16], ref["out_every_16"]) < 1e-5
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), ref["channel_mean"], rtol=1e-4)


def test_legacy_attention_names_load(tmp_path):
    """Early diffusers files name attention query/key/value/proj_attn; they load the same."""
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def rename(tensors):
        out = {}
        for name, value in tensors.items():
            for new, old in legacy.items():
                name = name.replace(f".{new}.", f".{old}.")
            out[name] = value
        return out

    renamed = pretrained.load(str(_copy_fixture(tmp_path, tensors=rename)))
    original = pretrained.load(str(TINY))
    jax.tree.map(np.testing.assert_array_equal, renamed.params, original.params)


# --- the released models' configs ---------------------------------------------------------------


@pytest.mark.parametrize("name, image_shape, num_params", [
    ("ddpm-cifar10-32", (32, 32, 3), 35_746_307),
    ("ddpm-celebahq-256", (256, 256, 3), 113_673_219),
])
def test_released_configs(name, image_shape, num_params):
    """Copies of the released config.json files build Ho et al.'s networks to the parameter."""
    directory = DATA / "released" / name
    model, shape = pretrained.unet_from_config(
        json.loads((directory / pretrained.CONFIG_NAME).read_text()))
    assert shape == image_shape
    assert tuple(model.attn_resolutions) == (16,)
    assert sum(x.size for x in jax.tree.leaves(_param_shapes(model, image_shape))) == num_params
    schedule, defaults = pretrained.schedule_from_config(
        json.loads((directory / pretrained.SCHEDULER_NAME).read_text()))
    np.testing.assert_array_equal(schedule.betas, make_schedule("linear", 1000).betas)
    assert defaults == dict(variance="fixedsmall", target="eps", clip_x0=True)


# --- round trips --------------------------------------------------------------------------------

CASES = {
    "ho": (dict(base_channels=8, channel_mults=(1, 2), attn_resolutions=(14,), num_groups=4),
           (28, 28, 1), ("linear", {}), dict(variance="fixedlarge", target="eps", clip_x0=True)),
    "conditional_learned_cosine": (
        dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
             num_groups=4, num_classes=3, out_channels=6, flip_sin_to_cos=True, freq_shift=0),
        (16, 16, 3), ("cosine", {}), dict(variance="learned_range", target="v", clip_x0=False)),
    "sigmoid_x0_nonsquare": (
        dict(base_channels=8, channel_mults=(1, 2), attn_resolutions=(8,), num_groups=2),
        (8, 12, 2), ("sigmoid", {}), dict(variance="fixedsmall", target="x0", clip_x0=True)),
}


def _case(name):
    fields, image_shape, (kind, kwargs), defaults = CASES[name]
    model = UNet(**fields)
    return model, image_shape, make_schedule(kind, 20, **kwargs), defaults


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_load_round_trip(name, tmp_path):
    """Identical parameters, fields and attention levels: the same function (the outputs are
    compared with diffusers' in test_diffusers_builds_our_export)."""
    model, image_shape, schedule, defaults = _case(name)
    params = _random_params(model, image_shape)
    pretrained.save(str(tmp_path), model, params, schedule, image_shape=image_shape, **defaults)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [pretrained.CONFIG_NAME, pretrained.SCHEDULER_NAME, pretrained.WEIGHTS_NAME])
    loaded = pretrained.load(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
    assert loaded.image_shape == image_shape
    assert dict(variance=loaded.variance, target=loaded.target,
                clip_x0=loaded.clip_x0) == defaults
    for field in ("base_channels", "num_res_blocks", "num_groups", "num_classes",
                  "flip_sin_to_cos", "freq_shift"):
        assert getattr(loaded.model, field) == getattr(model, field), field
    assert tuple(loaded.model.channel_mults) == tuple(model.channel_mults)
    assert (loaded.model.out_channels or image_shape[-1]) == (model.out_channels or image_shape[-1])
    heights = [image_shape[0] // 2 ** i for i in range(len(model.channel_mults))]
    assert ([h in loaded.model.attn_resolutions for h in heights]
            == [h in model.attn_resolutions for h in heights])
    np.testing.assert_allclose(loaded.schedule.betas, schedule.betas, rtol=1e-6)
    # trained_betas are float32: their cumulative product drifts ~1e-5 at the tail.
    np.testing.assert_allclose(loaded.schedule.alphas_cumprod, schedule.alphas_cumprod, rtol=5e-5)
    scheduler = json.loads((tmp_path / pretrained.SCHEDULER_NAME).read_text())
    expected = {"linear": "linear", "cosine": "squaredcos_cap_v2"}.get(
        CASES[name][2][0])  # sigmoid (ours is not GeoDiff's) is listed as trained_betas
    assert (scheduler["trained_betas"] is None) == (expected is not None)
    if expected:
        assert scheduler["beta_schedule"] == expected


def test_class_embeddings_without_our_null_label_are_all_classes(tmp_path):
    """Our export records that its last class embedding is the null label; a diffusers config
    without that key (any class-conditional model diffusers wrote) maps N embeddings to N classes:
    generate's default labels cycle over all N, and guidance is refused with one line."""
    model, image_shape, schedule, defaults = _case("conditional_learned_cosine")
    params = _random_params(model, image_shape)
    ours_dir, foreign_dir = tmp_path / "ours", tmp_path / "foreign"
    pretrained.save(str(ours_dir), model, params, schedule, image_shape=image_shape, **defaults)
    config = json.loads((ours_dir / pretrained.CONFIG_NAME).read_text())
    assert config["num_class_embeds"] == 4 and config[pretrained.NULL_LABEL_KEY] is True
    ours = pretrained.load(str(ours_dir))
    assert ours.model.num_classes == 3 and ours.model.has_null_label
    shutil.copytree(ours_dir, foreign_dir)
    del config[pretrained.NULL_LABEL_KEY]
    (foreign_dir / pretrained.CONFIG_NAME).write_text(json.dumps(config))
    foreign = pretrained.load(str(foreign_dir))
    assert foreign.model.num_classes == 4 and not foreign.model.has_null_label
    jax.tree.map(np.testing.assert_array_equal, foreign.params, params)
    samples = generate.generate(foreign, num_samples=8, sampler="ddim", num_steps=2)
    assert samples.settings["labels"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert samples.settings["guidance_scale"] == 1.0 and np.all(np.isfinite(samples.images))
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs a model with a null label"):
        generate.generate(foreign, num_samples=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"label 4 is outside \[0, 3\] \(the classes; the "
                                         "model has no null label\)"):
        generate.generate(foreign, num_samples=2, labels=[4])
    again = tmp_path / "again"  # and it is saved back without a null label
    pretrained.save(str(again), foreign.model, foreign.params, foreign.schedule,
                    image_shape=image_shape, **defaults)
    config = json.loads((again / pretrained.CONFIG_NAME).read_text())
    assert config["num_class_embeds"] == 4 and config[pretrained.NULL_LABEL_KEY] is False


def test_released_fixture_round_trip(tmp_path):
    """A diffusers-written directory saved again reads back the same, configs included."""
    p = pretrained.load(str(TINY))
    pretrained.save(str(tmp_path), p.model, p.params, p.schedule, image_shape=p.image_shape,
                    variance=p.variance, target=p.target, clip_x0=p.clip_x0)
    again = pretrained.load(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, again.params, p.params)
    ours, theirs = (json.loads((d / pretrained.CONFIG_NAME).read_text()) for d in (tmp_path, TINY))
    assert {k: theirs[k] for k in ours if k != "_class_name"} == {
        k: v for k, v in ours.items() if k != "_class_name"}
    scheduler = json.loads((tmp_path / pretrained.SCHEDULER_NAME).read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == (
        "linear", 1e-3, 0.2)


def test_pipeline_layout_loads(tmp_path):
    """A pipeline directory (unet/ and scheduler/ subfolders) loads like a flat one."""
    shutil.copytree(TINY, tmp_path / "unet")
    shutil.copytree(TINY, tmp_path / "scheduler")
    (tmp_path / "unet" / pretrained.SCHEDULER_NAME).unlink()
    p = pretrained.load(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, p.params, pretrained.load(str(TINY)).params)


@pytest.mark.parametrize("suffix", pretrained.PARAM_FORMATS)
def test_params_files(suffix, tmp_path):
    model, image_shape, _, _ = _case("ho")
    params = _random_params(model, image_shape)
    path = str(tmp_path / f"params{suffix}")
    pretrained.save_params(path, params)
    jax.tree.map(np.testing.assert_array_equal, pretrained.load_params(path), params)
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
    restored = pretrained.load_params(path, like=like)
    assert {x.dtype for x in jax.tree.leaves(restored)} == {jnp.dtype(jnp.bfloat16)}
    other = {**params, "conv_in": {**params["conv_in"], "bias": np.zeros(4, np.float32)}}
    with pytest.raises(ValueError, match=r"tensor conv_in/bias has shape \(8,\), expected \(4,\)"):
        pretrained.load_params(path, like=other)
    smaller = {k: v for k, v in params.items() if k != "conv_out"}
    with pytest.raises(ValueError, match=r"unused tensors conv_out/bias, conv_out/kernel"):
        pretrained.load_params(path, like=smaller)


def test_params_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown parameter file extension '.pt' of .*; expected "
                                         r"one of \['.msgpack', '.safetensors'\]"):
        pretrained.save_params(str(tmp_path / "p.pt"), {"a": np.zeros(2)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load_params(str(tmp_path / "p.msgpack"))
    pretrained.save_params(str(tmp_path / "p.msgpack"), {"a": {"b": np.zeros(2)}})
    with pytest.raises(ValueError, match=r"missing tensors a/c \(1 of 2 needed\)"):
        pretrained.load_params(str(tmp_path / "p.msgpack"),
                               like={"a": {"b": np.zeros(2), "c": np.zeros(1)}})


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, message", [
    (dict(downsample_padding=1), "config.json field downsample_padding=1 cannot be expressed by "
                                 "ddpm_jax; expected 0"),
    (dict(resnet_time_scale_shift="scale_shift"), "field resnet_time_scale_shift='scale_shift' "
                                                  "cannot be expressed"),
    (dict(norm_eps=1e-5), r"field norm_eps=1e-05 cannot be expressed by ddpm_jax; expected 1e-06"),
    (dict(class_embed_type="timestep"), "field class_embed_type='timestep'"),
    (dict(down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"]),
     r"field down_block_types\[1\]='CrossAttnDownBlock2D' cannot be expressed"),
    (dict(up_block_types=["UpBlock2D", "UpBlock2D"]),
     r"up_block_types\[0\]='UpBlock2D' .* expected 'AttnUpBlock2D', the mirror of "
     r"down_block_types\[1\]"),
    (dict(attention_head_dim=8), r"attention_head_dim=8 .* expected null or the channels of "
                                 r"every attention layer \[16\] \(ddpm_jax's attention has a "
                                 r"single head"),
    (dict(block_out_channels=[8, 12]), r"block_out_channels=\[8, 12\] .* multiples of the first"),
    (dict(sample_size=None), "sample_size is null"),
    (dict(sample_size=31), r"sample_size 31 is not divisible by 2\^\(levels - 1\) = 2"),
    (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
])
def test_config_errors(config, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        pretrained.load(str(_copy_fixture(tmp_path, config=config)))


def test_missing_config_fields_mean_diffusers_defaults(tmp_path):
    """An omitted field is diffusers' default (downsample_padding=1), not Ho et al.'s."""
    fields = json.loads((TINY / pretrained.CONFIG_NAME).read_text())
    del fields["downsample_padding"]
    with pytest.raises(ValueError, match="downsample_padding=1 cannot be expressed"):
        pretrained.unet_from_config(fields)


@pytest.mark.parametrize("scheduler, message", [
    (dict(variance_type="learned"), "scheduler_config.json field variance_type='learned' cannot be "
                                    "expressed by ddpm_jax; expected one of"),
    (dict(thresholding=True), "field thresholding=True"),
    (dict(beta_schedule="laplace"), "field beta_schedule='laplace'"),
    (dict(clip_sample_range=2.0), "field clip_sample_range=2.0"),
    (dict(prediction_type="flow"), "field prediction_type='flow'"),
    (dict(trained_betas=[0.1, 0.2]), "trained_betas has 2 values but num_train_timesteps is 20"),
    (dict(variance_type="learned_range"), r"out_channels=3 does not fit "
                                          r"variance='learned_range' with 3 input channels; "
                                          r"expected 6"),
])
def test_scheduler_errors(scheduler, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        pretrained.load(str(_copy_fixture(tmp_path, scheduler=scheduler)))


def test_tensor_errors(tmp_path):
    name = "down_blocks.1.attentions.0.to_q.weight"
    cases = [
        (lambda t: {k: v for k, v in t.items() if k != name},
         rf"missing tensors {name} \(1 of 208 needed\)"),
        (lambda t: {**t, "class_embedding.weight": np.zeros((3, 32), np.float32)},
         "unused tensors class_embedding.weight"),
        (lambda t: {**t, name: np.zeros((16, 8), np.float16)},
         rf"tensor {name} has shape \(16, 8\), expected \(16, 16\)"),
    ]
    for i, (change, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            pretrained.load(str(_copy_fixture(tmp_path / str(i), tensors=change)))


def test_file_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="'not a dir' is not a directory"):
        pretrained.load("not a dir")
    model_dir = _copy_fixture(tmp_path)
    (model_dir / pretrained.WEIGHTS_NAME).rename(model_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="only safetensors is read"):
        pretrained.load(str(model_dir))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"'google/ddpm-cifar10-32' is not a local directory; to "
                                          r"download it from the Hugging Face Hub install "
                                          r"huggingface_hub \(pip install 'ddpm_jax\[hub\]'\)"):
        pretrained.load("google/ddpm-cifar10-32")


class _Hub(http.server.BaseHTTPRequestHandler):
    """The few Hugging Face Hub endpoints snapshot_download uses, serving ho_tiny's files as
    the repository google/ddpm-cifar10-32 at commit 0...0."""

    files = {p.name: p.read_bytes() for p in TINY.iterdir()}
    requests: list[str] = []
    repo, sha = "google/ddpm-cifar10-32", "0" * 40

    def log_message(self, *args):
        pass

    def _reply(self, with_body: bool):
        self.requests.append(self.path)
        headers = {}
        if self.path.startswith(f"/api/models/{self.repo}/revision/"):
            body = json.dumps({"id": self.repo, "sha": self.sha, "siblings": [
                {"rfilename": n} for n in self.files]}).encode()
        elif self.path.startswith(f"/api/models/{self.repo}/tree/"):
            body = json.dumps([{"type": "file", "path": n, "size": len(b),
                                "oid": hashlib.sha1(b).hexdigest()}
                               for n, b in self.files.items()]).encode()
        elif self.path.startswith(f"/{self.repo}/resolve/{self.sha}/"):
            body = self.files[self.path.rsplit("/", 1)[-1]]
            headers = {"X-Repo-Commit": self.sha, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
        else:
            body = b""
        self.send_response(404 if not body else 200)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self):
        self._reply(True)

    def do_HEAD(self):
        self._reply(False)


def test_hub_id_downloads_from_the_hub(monkeypatch, tmp_path):
    """A hub id is fetched by huggingface_hub, here from a local server (no network): only the
    files the loader uses."""
    constants = pytest.importorskip("huggingface_hub.constants")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    try:
        p = pretrained.load("google/ddpm-cifar10-32")
    finally:
        server.shutdown()
    assert p.source == "google/ddpm-cifar10-32" and p.image_shape == (32, 32, 3)
    jax.tree.map(np.testing.assert_array_equal, p.params, pretrained.load(str(TINY)).params)
    fetched = {r.rsplit("/", 1)[-1] for r in _Hub.requests if "/resolve/" in r}
    assert fetched == {"config.json", "scheduler_config.json",
                       "diffusion_pytorch_model.safetensors"}


def test_save_errors(tmp_path):
    model, image_shape, schedule, defaults = _case("ho")
    params = _random_params(model, image_shape)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="UNet field resample_with_conv=False cannot be expressed"):
        pretrained.save(str(out), UNet(**CASES["ho"][0], resample_with_conv=False), params,
                        schedule, image_shape=image_shape)
    with pytest.raises(ValueError, match="unknown variance 'fixed_large'"):
        pretrained.save(str(out), model, params, schedule, image_shape=image_shape,
                        variance="fixed_large")
    with pytest.raises(ValueError, match=r"params: missing tensors conv_out/bias"):
        pretrained.save(str(out), model, {k: v for k, v in params.items() if k != "conv_out"},
                        schedule, image_shape=image_shape)
    assert not out.exists()  # nothing written before every check passed


def test_timestep_embedding_conventions():
    """flip_sin_to_cos and freq_shift against a numpy transcription of diffusers 0.42.1,
    models/embeddings.py, get_timestep_embedding (exponent / (half_dim - downscale_freq_shift),
    then [sin, cos], swapped when flip_sin_to_cos)."""
    t = np.array([0.0, 3.0, 999.0])
    for flip in (False, True):
        for shift in (0, 1):
            half = 4
            emb = t[:, None] * np.exp(-np.log(10000) * np.arange(half) / (half - shift))[None]
            emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=-1)
            if flip:
                emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
            ours = timestep_embedding(jnp.asarray(t), 2 * half, flip_sin_to_cos=flip,
                                      freq_shift=shift)
            np.testing.assert_allclose(ours, emb, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="freq_shift=4 must be below half the embedding width 4"):
        timestep_embedding(jnp.asarray(t), 8, freq_shift=4)


# --- sampling and the command lines -------------------------------------------------------------


def test_generate_from_your_own_model():
    """Any model, parameters and schedule sample through generate, without a config."""
    model = UNet(base_channels=4, channel_mults=(1,), attn_resolutions=(), num_groups=2)
    p = pretrained.Pretrained(model=model, params=_random_params(model, (8, 8, 1)),
                              schedule=make_schedule("linear", 5), image_shape=(8, 8, 1))
    samples = generate.generate(p, num_samples=8, seed=0)
    assert samples.images.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples.images))
    assert samples.settings["pretrained"] is None and samples.settings["variance"] == "fixedlarge"


def test_export_cli_error(tmp_path):
    result = run_cli("export_pretrained.py", "--workdir", str(tmp_path), "--out",
                     str(tmp_path / "o"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "export_pretrained.py: error: ") and "is not a training workdir: no config.json" in (
        result.stderr)


@pytest.mark.slow
def test_export_sample_and_evaluate_with_pretrained(trained_workdir, fashion_dir, tmp_path):
    """A workdir exported with export_pretrained.py samples exactly like the workdir through
    sample.py --pretrained, and evaluate.py --pretrained computes the bound."""
    exported = tmp_path / "exported"
    result = run_cli("export_pretrained.py", "--workdir", str(trained_workdir), "--out",
                     str(exported))
    assert result.returncode == 0, result.stderr[-3000:]
    names = (trained_workdir / "labels.json").read_text()  # Fashion-MNIST's class names
    assert (exported / "labels.json").read_text() == names  # carried into the export
    trained = generate.load_workdir(str(trained_workdir))
    p = pretrained.load(str(exported))
    jax.tree.map(np.testing.assert_array_equal, p.params, trained.ema_params)
    assert (p.variance, p.target, p.clip_x0) == ("fixedlarge", "eps", True)
    expected = generate.generate(trained, num_samples=8, seed=2)
    result = run_cli("sample.py", "--pretrained", str(exported), "--num_samples", "8",
                     "--seed", "2", "--out", str(tmp_path / "samples"))
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.load(tmp_path / "samples" / "samples.npz")["images"]
    np.testing.assert_array_equal(images, expected.images_uint8)
    settings = json.loads((tmp_path / "samples" / "sample_settings.json").read_text())
    assert settings["pretrained"] == str(exported) and settings["step"] is None
    out = tmp_path / "metrics.json"
    result = run_cli("evaluate.py", "--pretrained", str(exported), "--metrics", "bpd",
                     "--dataset", "fashion_mnist", f"--data_dir={fashion_dir}",
                     "--bpd_split", "test[:16]", "--bpd_batch_size", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["pretrained"] == str(exported) and np.isfinite(metrics["bpd"]["bpd"])


# --- with diffusers installed (the [bench] extra; not in CI) -------------------------------------


def test_diffusers_builds_our_export(tmp_path):
    """NOT RUN IN CI (needs torch + diffusers): diffusers loads our export and computes the same,
    and our tables of diffusers' defaults are its current ones."""
    pytest.importorskip("diffusers")
    import inspect

    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    for cls, ours in ((UNet2DModel, pretrained.UNET_DEFAULTS),
                      (DDPMScheduler, pretrained.SCHEDULER_DEFAULTS)):
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if k != "self"}
        assert defaults == ours, cls.__name__
    for name in ("conditional_learned_cosine",):  # the Ho case: the fixtures, other way round
        model, image_shape, schedule, defaults = _case(name)
        params = _random_params(model, image_shape, seed=5)
        out = tmp_path / name
        pretrained.save(str(out), model, params, schedule, image_shape=image_shape, **defaults)
        unet = UNet2DModel.from_pretrained(out).eval()
        scheduler = DDPMScheduler.from_pretrained(out)
        np.testing.assert_allclose(scheduler.betas.numpy(), schedule.betas, rtol=1e-6)
        x = np.random.RandomState(0).randn(2, *image_shape).astype(np.float32)
        t = np.array([0, 17])
        labels = None if model.num_classes is None else np.array([1, 3])
        ours = np.asarray(model.apply({"params": params}, x, t, labels))
        with torch.no_grad():
            theirs = unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                          None if labels is None else torch.from_numpy(labels)).sample.numpy()
        assert _rel_err(ours, theirs.transpose(0, 2, 3, 1)) < 1e-5, name
