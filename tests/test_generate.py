"""sample.py and ddpm_jax.generate on a checkpoint made by the tiny config in this session."""

import base64
import dataclasses
import io
import json
import re

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from ddpm_jax import generate, train_lib


@pytest.fixture(scope="module")
def trained(trained_workdir):
    return generate.load_workdir(str(trained_workdir))


def test_load_workdir(trained, trained_workdir):
    assert trained.step == 4 and trained.image_shape == (28, 28, 1)
    assert generate.load_workdir(str(trained_workdir), step=2).step == 2


def test_same_seed_same_samples_different_seed_different(trained):
    a = generate.generate(trained, num_samples=8, seed=0)
    b = generate.generate(trained, num_samples=8, seed=0)
    c = generate.generate(trained, num_samples=8, seed=1)
    assert a.images.shape == (8, 28, 28, 1) and a.images_uint8.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    raw = generate.generate(trained, num_samples=8, seed=0, params="raw")
    assert not np.array_equal(a.images, raw.images)


def test_ddim_batches_and_trajectory(trained):
    s = generate.generate(trained, num_samples=10, seed=0, batch_size=8, sampler="ddim",
                          num_steps=10, trajectory_every=5)
    assert s.images.shape == (10, 28, 28, 1)
    assert s.trajectory.x_t.shape == (2, 8, 28, 28, 1)
    assert s.settings["sampler"] == "ddim" and s.settings["num_steps"] == 10


def test_batches_are_sharded_over_devices_without_changing_the_images(trained):
    """The default mesh spans the 8 simulated devices; one device gives the same images."""
    eight = generate.generate(trained, num_samples=8, seed=0, sampler="ddim", num_steps=5)
    one = generate.generate(trained, num_samples=8, seed=0, sampler="ddim", num_steps=5,
                            mesh=train_lib.data_mesh(jax.devices()[:1]))
    np.testing.assert_allclose(eight.images, one.images, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size=4 must be a positive multiple of the "
                                         "device count 8"):
        generate.generate(trained, num_samples=8, batch_size=4)


@pytest.mark.slow
def test_sample_cli_outputs(trained_workdir, tmp_path):
    out = tmp_path / "samples"
    args = ["sample.py", "--workdir", str(trained_workdir), "--num_samples", "8", "--seed", "3",
            "--trajectory", "--trajectory_every", "5", "--trajectory_samples", "4"]
    result = run_cli(*args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    grid = Image.open(out / "samples.png")
    # 8 images -> 3x3 grid of 28 px tiles upscaled 4x to 112 px (>= 96), 2 px padding
    assert grid.size == (3 * 114 + 2, 3 * 114 + 2)
    npz = np.load(out / "samples.npz")
    assert npz["images"].shape == (8, 28, 28, 1) and npz["images"].dtype == np.uint8
    assert npz["samples"].dtype == np.float32
    settings = json.load(open(out / "sample_settings.json"))
    assert settings["seed"] == 3 and settings["step"] == 4 and settings["params"] == "ema"
    # T = 20 steps, a frame every 5 -> 4 frames, plus the final image.
    gif = Image.open(out / "reverse_process.gif")
    assert gif.n_frames == 5
    html = (out / "reverse_process.html").read_text()
    assert re.search(r'<input[^>]*type="range"[^>]*max="4"', html)
    frames = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(frames) == 10
    for frame in frames:
        Image.open(io.BytesIO(base64.b64decode(frame))).verify()
    again = run_cli(*args, "--out", str(tmp_path / "again"), "--grid_scale", "2")
    assert again.returncode == 0
    assert Image.open(tmp_path / "again" / "samples.png").size == (3 * 58 + 2, 3 * 58 + 2)
    assert (out / "samples.npz").read_bytes() == (tmp_path / "again" / "samples.npz").read_bytes()


def test_bad_inputs(trained, trained_workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a training workdir: no config.json"):
        generate.load_workdir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 3 in .*available steps: \[2, 4\]"):
        generate.load_workdir(str(trained_workdir), step=3)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        generate.generate(trained, num_samples=0)
    with pytest.raises(ValueError, match="unknown sampler 'ddnm'"):
        generate.generate(trained, num_samples=1, sampler="ddnm")
    with pytest.raises(ValueError, match="unknown params 'best'"):
        generate.generate(trained, num_samples=1, params="best")
    result = run_cli("sample.py", "--workdir", str(trained_workdir), "--grid_scale", "0")
    assert result.returncode == 1 and "--grid_scale=0" in result.stderr
    assert not (trained_workdir / "samples").exists()
    result = run_cli("sample.py", "--workdir", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("sample.py: error: ")


@pytest.fixture(scope="module")
def conditional():
    """An untrained 3-class model on 8x8 images, its weights perturbed so labels matter."""
    from configs import test as test_config
    config = test_config.get_config()
    config.model.num_classes = 3
    config.model.attn_resolutions = ()
    model = train_lib.make_model(config, (8, 8, 1))
    ints = np.zeros((1,), np.int32)
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8, 8, 1)), ints, ints)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return generate.Trained(config, (8, 8, 1), model, train_lib.make_schedule_from_config(config),
                            0, params, params)


def test_guidance_scale_zero_is_unconditional_and_labels_are_checked(conditional):
    run = lambda **kw: generate.generate(conditional, num_samples=8, sampler="dpmpp_2m",
                                         num_steps=3, spacing="logsnr", **kw).images
    unconditional = run(labels=[3], guidance_scale=1.0)  # 3 = num_classes: the null label
    np.testing.assert_allclose(run(labels=[0, 1], guidance_scale=0.0), unconditional, atol=1e-6)
    x, t = np.ones((2, 8, 8, 1), np.float32), np.array([5, 5])
    apply = lambda y: conditional.model.apply({"params": conditional.params}, x, t, np.array(y))
    assert not np.allclose(apply([0, 1]), apply([3, 3]), atol=1e-3)  # labels do matter
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 3\]"):
        generate.generate(conditional, num_samples=2, labels=[1, 7])


def test_settings_record_the_spacing_and_guidance_scale_used(trained, conditional):
    """spacing None (configs/test.py's) is the sampler's recommendation, recorded as used; a
    conditional model's default guidance scale is recorded as 1.0."""
    recommended = generate.generate(trained, num_samples=8, sampler="dpmpp_2m", num_steps=5)
    assert recommended.settings["spacing"] == "logsnr"
    assert recommended.settings["guidance_scale"] is None  # unconditional: no guidance at all
    chosen = generate.generate(trained, num_samples=8, sampler="dpmpp_2m", num_steps=5,
                               spacing="time")
    assert chosen.settings["spacing"] == "time"
    assert not np.allclose(chosen.images, recommended.images, atol=1e-3)
    conditional_samples = generate.generate(conditional, num_samples=8, sampler="ddim",
                                            num_steps=2)
    assert conditional_samples.settings["guidance_scale"] == 1.0
    assert conditional_samples.settings["labels"] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_progress_bar_ends_its_line_before_an_error(conditional, capsys):
    """An error raised while sampling (here the U-Net refusing 7x7 images) finds the progress
    bar closed, so the CLIs' one-line error starts on a line of its own."""
    bad = dataclasses.replace(conditional, image_shape=(7, 7, 1))
    with pytest.raises(ValueError, match="image size 7x7 is not divisible by 2"):
        generate.generate(bad, num_samples=8, sampler="ddim", num_steps=2, progress=True)
    err = capsys.readouterr().err
    assert "sample:" in err and err.endswith("\n")
