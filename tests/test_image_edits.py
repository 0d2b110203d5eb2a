"""sample.py's editing modes (ddpm_jax.image_edits) and evaluate.py's bpd_ode on the tiny run."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from ddpm_jax import generate, image_edits
from ddpm_jax.evaluation import ode_bits_per_dim
from ddpm_jax.data import load_split


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 56x56 RGBA picture (converted and resized as image folders are) and a 28x28 mask whose
    left half is white (kept)."""
    root = tmp_path_factory.mktemp("edit_inputs")
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[..., 0] = np.arange(56)[:, None] * 4
    rgba[..., 1] = np.arange(56)[None, :] * 4
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "picture.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[:, :14] = 255
    Image.fromarray(mask).save(root / "left.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(root / "white.png")
    (root / "not_an_image.png").write_text("hello")
    return root


def test_read_image_and_mask(files):
    image = image_edits.read_image(files / "picture.png", (28, 28, 1))
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    assert image[0, 0, 0] < image[-1, -1, 0]  # the gradient survives the resize
    mask = image_edits.read_mask(files / "left.png", (28, 28, 1))
    assert mask.shape == (28, 28, 1) and mask[:, :14].min() == 1 and mask[:, 14:].max() == 0
    with pytest.raises(ValueError, match="cannot read image .*not_an_image.png"):
        image_edits.read_image(files / "not_an_image.png", (28, 28, 1))


@pytest.mark.slow
def test_edit_modes_on_the_tiny_run(trained_workdir, files):
    trained = generate.load_workdir(str(trained_workdir))
    out = image_edits.edit(trained, mode="inpaint", num_samples=3, image=files / "picture.png",
                           mask=files / "left.png", resample=2, jump=5)
    known = image_edits.read_image(files / "picture.png", (28, 28, 1))
    assert out.images_uint8.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(out.images_uint8[:, :, :14], np.broadcast_to(
        known[:, :14], (3, 28, 14, 1)))
    assert out.settings["sampler"] == "ddpm" and out.settings["resample"] == 2
    row = image_edits.edit(trained, mode="interpolate", num_samples=4, seed=1)
    assert row.settings["sampler"] == "ddim" and row.settings["eta"] == 0.0
    assert row.images.shape == (4, 28, 28, 1) and np.isfinite(row.images).all()
    assert not np.allclose(row.images[0], row.images[-1])
    with pytest.raises(ValueError, match=r"sdedit needs \['image', 'strength'\]; missing "
                                         r"\['strength'\], not used \[\]"):
        image_edits.edit(trained, mode="sdedit", num_samples=1, image=files / "picture.png")
    with pytest.raises(ValueError, match=r"mask .*white.png' is all white: nothing to fill in"):
        image_edits.edit(trained, mode="inpaint", num_samples=1, image=files / "picture.png",
                         mask=files / "white.png")
    with pytest.raises(ValueError, match="interpolate needs a deterministic sampler"):
        image_edits.edit(trained, mode="interpolate", num_samples=2, sampler="ddpm")


@pytest.mark.slow
def test_ode_bits_per_dim_on_the_tiny_run(trained_workdir, fashion_dir):
    """Finite and positive (4 training steps: the ODE's score is far from the data's, so the
    value itself is large), with its timing; fixed steps."""
    trained = generate.load_workdir(str(trained_workdir))
    source = load_split("fashion_mnist", "test[:16]", data_dir=str(fashion_dir))
    out = ode_bits_per_dim(trained, source, batch_size=8, num_examples=8, num_steps=4)
    assert np.isfinite(out["bpd"]) and out["bpd"] > 0 and out["solver_steps"] == 4
    assert out["num_examples"] == 8 and out["seconds_per_image"] > 0


@pytest.mark.slow
def test_sample_cli_edit_modes(trained_workdir, files, tmp_path):
    common = ["sample.py", "--workdir", str(trained_workdir)]
    runs = {"inpaint": ["--inpaint", str(files / "picture.png"), "--mask",
                        str(files / "left.png"), "--num_samples", "4", "--resample", "2"],
            "sdedit": ["--init_image", str(files / "picture.png"), "--strength", "0.5",
                       "--num_samples", "4"],
            "interpolate": ["--interpolate", "5"]}
    for mode, args in runs.items():
        out = tmp_path / mode
        result = run_cli(*common, *args, "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        images = np.load(out / "samples.npz")["images"]
        settings = json.loads((out / "sample_settings.json").read_text())
        assert settings["mode"] == mode and images.shape[1:] == (28, 28, 1)
        assert settings["workdir"] == str(trained_workdir)  # sample.py restores it before the edit
        assert Image.open(out / "samples.png").size[0] > 0
    assert np.load(tmp_path / "interpolate" / "samples.npz")["images"].shape[0] == 5
    bad = run_cli(*common, "--inpaint", str(files / "picture.png"), "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and not (tmp_path / "x").exists()
    assert (bad.stderr.strip().splitlines()[-1]
            == "sample.py: error: --inpaint and --mask go together")


@pytest.mark.slow
def test_evaluate_cli_bpd_ode(trained_workdir, fashion_dir, tmp_path):
    out = tmp_path / "metrics.json"
    result = run_cli("evaluate.py", "--workdir", str(trained_workdir),
                     f"--data_dir={fashion_dir}", "--metrics", "bpd,bpd_ode", "--out", str(out),
                     "--bpd_split", "test[:16]", "--bpd_examples", "8", "--bpd_batch_size", "8",
                     "--ode_num_steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    ode, bound = metrics["bpd_ode"], metrics["bpd"]
    assert ode["num_examples"] == bound["num_examples"] == 8 and ode["solver_steps"] == 4
    assert np.isfinite(ode["bpd"]) and ode["seconds_per_image"] > 0 and ode["wall_s"] > 0
