"""sample.py and ddpm_jax.generate on a checkpoint made by the tiny config in this session."""

import dataclasses
import json
import re

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from ddpm_jax import generate, train_lib, visualize
from test_visualize import decode_viewer_page


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


@pytest.fixture(scope="module")
def process(trained):
    return generate.reverse_process(trained, num_samples=3, seed=2)


def test_reverse_process_records_every_ancestral_step(trained, process):
    """All T = 20 steps and the final sample, with t and the schedule's log-SNR; the chain is
    ancestral DDPM whatever the config's sampler, starts from the x_T of a ``generate`` call with
    the same seed (another batch size, another sampler) and, for DDPM over all T steps, ends on
    its images."""
    assert process.x_t.shape == process.pred_x0.shape == (21, 3, 28, 28, 1)
    assert process.x_t.dtype == np.uint8
    np.testing.assert_array_equal(process.t, np.arange(20, -1, -1))
    abar = np.cumprod(1 - np.asarray(trained.schedule.betas, np.float64))
    np.testing.assert_allclose(process.log_snr[:-1], np.log(abar / (1 - abar))[::-1], atol=1e-4)
    assert process.log_snr[-1] == np.inf
    np.testing.assert_array_equal(process.x_t[-1], process.pred_x0[-1])
    assert process.settings["sampler"] == "ddpm" and process.settings["num_steps"] == 20
    ddpm = generate.generate(trained, num_samples=8, seed=2, sampler="ddpm", num_steps=20)
    np.testing.assert_array_equal(process.x_t[-1], ddpm.images_uint8[:3])
    ddim = generate.generate(trained, num_samples=16, seed=2, sampler="ddim", num_steps=5,
                             trajectory_every=5)
    np.testing.assert_array_equal(process.x_t[0], visualize.to_uint8(ddim.trajectory.x_t[0, :3]))
    config = ml_collections.ConfigDict(trained.config.to_dict())
    config.sampling.sampler, config.sampling.num_steps = "dpmpp_2m", 4
    again = generate.reverse_process(dataclasses.replace(trained, config=config), num_samples=3,
                                     seed=2)
    np.testing.assert_array_equal(again.x_t, process.x_t)


def test_write_outputs_writes_the_viewer_and_a_log_snr_gif(trained, process, tmp_path,
                                                          monkeypatch):
    """The page holds every frame of the chain as grids, with its t and log-SNR; the GIF holds
    the frames ``log_snr_frames`` picks, ending on the final samples."""
    monkeypatch.setattr(generate, "GIF_FRAMES", 8)
    samples = generate.generate(trained, num_samples=5, seed=2, sampler="ddim", num_steps=4)
    paths = generate.write_outputs(tmp_path, samples, reverse_process=process)
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == [
        "reverse_process.gif", "reverse_process.html", "sample_settings.json", "samples.npz",
        "samples.png"]
    page = (tmp_path / "reverse_process.html").read_text()
    data = decode_viewer_page(page)
    grid = lambda images: visualize.make_grid(images, scale=1, pad_value=generate.GRID_PAD_VALUE)
    assert data["x_t"].shape == (21, *grid(process.x_t[0]).shape)
    for f in (0, 10, 20):
        np.testing.assert_array_equal(data["x_t"][f], grid(process.x_t[f]))
        np.testing.assert_array_equal(data["x0_pred"][f], grid(process.pred_x0[f]))
    assert data["t"] == process.t.tolist()
    np.testing.assert_allclose(data["log_snr"][:-1], process.log_snr[:-1], atol=1e-4)
    assert "all T = 20 steps" not in page and "T = 20 steps of ancestral DDPM" in page
    assert "samples.png was made with ddim in 4 steps" in page
    assert "starts from the same noise x_T as the first 3 images of samples.png" in page
    picks = visualize.log_snr_frames(process.log_snr, 8)
    with Image.open(tmp_path / "reverse_process.gif") as gif:
        assert gif.n_frames == 8
        gif.seek(7)
        last = np.asarray(gif.convert("L"))
    np.testing.assert_array_equal(last, np.kron(grid(process.x_t[picks[-1]])[..., 0],
                                                np.ones((2, 2), np.uint8)))  # scale 2


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
            "--trajectory", "--trajectory_samples", "4"]
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
    assert settings["workdir"] == str(trained_workdir)  # restored once, its source carried along
    # T = 20 steps: 20 frames of the chain plus the final image, on the page and in the GIF.
    assert Image.open(out / "reverse_process.gif").n_frames == 21
    html = (out / "reverse_process.html").read_text()
    assert re.search(r'<input[^>]*type="range"[^>]*max="20"', html)
    data = decode_viewer_page(html)
    assert data["x_t"].shape == data["x0_pred"].shape == (21, 62, 62, 1)  # 4 tiles, 2 x 2
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
