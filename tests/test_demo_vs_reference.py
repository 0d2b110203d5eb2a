"""benchmarks/demo_vs_reference.py: the demo-against-reference harness, on tiny inputs."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from ddpm_jax import data, evaluation

_spec = importlib.util.spec_from_file_location("demo_vs_reference",
                                               ROOT / "benchmarks" / "demo_vs_reference.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


@pytest.fixture(scope="module")
def inputs(fashion_dir, tmp_path_factory):
    """A 20-step classifier, real training images as the 'demo', uniform noise as 'reference'."""
    tmp = tmp_path_factory.mktemp("demo_vs_reference")
    load = lambda split: data.load_split("fashion_mnist", split, data_dir=fashion_dir)
    train, test = load("train[:512]"), load("test[:64]")
    params, accuracy = evaluation.train_classifier(train, test, steps=20, batch_size=32)
    classifier = str(tmp / "classifier.msgpack")
    evaluation.save_classifier(classifier, params, image_shape=train.image_shape,
                               num_classes=train.num_classes, provenance={"steps": 20})
    (tmp / "run" / "samples").mkdir(parents=True)
    real = train.read(np.arange(32))[0]
    np.savez(tmp / "run" / "samples" / "samples.npz", images=real)
    noise = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp / "noise.npz", images=noise)
    return tmp, classifier


def test_scores_both_on_the_same_features_and_writes_json_and_png(inputs, fashion_dir):
    tmp, classifier = inputs
    args = ["--demo", str(tmp / "run"), "--classifier", classifier,
            "--reference", str(tmp / "noise.npz"), "--num_samples", "32",
            "--reference_split", "test[:64]", "--data_dir", str(fashion_dir),
            "--kid_subsets", "5"]
    results = harness.main(args)
    demo, reference = results["demo"], results["reference"]
    assert demo["num_images"] == reference["num_images"] == 32
    assert demo["reference"] == reference["reference"]  # the same split and feature network
    assert demo["fid"] < reference["fid"]  # real images beat uniform noise
    assert results["fid_ratio"] == pytest.approx(demo["fid"] / reference["fid"])
    assert results["meets_goal"] == (results["fid_ratio"] <= 0.7)
    out = tmp / "run" / "samples" / "demo_vs_reference.json"
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    # Two grids of 32 images (6 x 6 cells of 28 px upscaled 4x, 2 px padding), a 16 px gap,
    # a 24 px title strip.
    grid = 6 * (4 * 28 + 2) + 2
    assert Image.open(tmp / "run" / "samples" / "demo_vs_reference.png").size == (
        2 * grid + 16, grid + 24)
    assert harness.main(args)["demo"]["fid"] == demo["fid"]  # deterministic, cached reference


def test_too_few_images_is_an_error(inputs):
    tmp, classifier = inputs
    with pytest.raises(ValueError, match="holds 32 demo images; 40 are needed"):
        harness.main(["--demo", str(tmp / "run" / "samples" / "samples.npz"),
                      "--classifier", classifier, "--reference", str(tmp / "noise.npz"),
                      "--num_samples", "40"])
    with pytest.raises(FileNotFoundError, match="no reference samples at"):
        harness.main(["--demo", str(tmp / "run"), "--classifier", classifier,
                      "--reference", str(tmp / "missing.npz"), "--num_samples", "32"])
