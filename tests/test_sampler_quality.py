"""benchmarks/sampler_quality.py end to end on the tiny trained run, with tiny n."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from ddpm_jax import data, evaluation

spec = importlib.util.spec_from_file_location("sampler_quality",
                                              ROOT / "benchmarks" / "sampler_quality.py")
sampler_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sampler_quality)


def test_parse_grid():
    assert sampler_quality.parse_grid("ddim:10,heun:5:karras") == [
        dict(sampler="ddim", num_steps=10, spacing="time"),
        dict(sampler="heun", num_steps=5, spacing="karras")]
    assert len(sampler_quality.parse_grid(sampler_quality.DEFAULT_GRID)) == 17
    for bad in ("ddim", "ddim:ten", "plms:10", "ddim:10:cosine", ""):
        with pytest.raises(ValueError):
            sampler_quality.parse_grid(bad)


@pytest.mark.slow
def test_table_and_plot(trained_workdir, fashion_dir, tmp_path):
    load = lambda split: data.load_split("fashion_mnist", split, data_dir=fashion_dir)
    train, test = load("train[:64]"), load("test[:32]")
    params, accuracy = evaluation.train_classifier(train, test, steps=3, batch_size=16)
    classifier = str(tmp_path / "classifier.msgpack")
    evaluation.save_classifier(classifier, params, image_shape=train.image_shape,
                               num_classes=train.num_classes, provenance={"accuracy": accuracy})
    out = str(tmp_path / "quality")
    sampler_quality.main([
        "--workdir", str(trained_workdir), "--classifier", classifier, "--out", out,
        "--grid", "ddim:2,dpmpp_2m:2:logsnr,heun:2:karras", "--num_samples", "8",
        "--reference_split", "test[:32]", "--data_dir", str(fashion_dir), "--kid_subsets", "2"])
    with open(out + ".json") as f:
        results = json.load(f)
    rows = results["rows"]
    assert [(r["sampler"], r["spacing"], r["model_calls"]) for r in rows] == [
        ("ddim", "time", 2), ("dpmpp_2m", "logsnr", 2), ("heun", "karras", 3)]
    assert all(r["num_samples"] == 8 and np.isfinite(r["fid"]) and r["wall_s"] > 0 for r in rows)
    assert results["step"] == 4 and results["reference_split"] == "test[:32]"
    table = open(out + ".md").read().splitlines()
    assert len(table) == 5 and table[2].startswith("| ddim | time | 2 | 2 |")
    pixels = np.asarray(Image.open(out + ".png").convert("RGB")).reshape(-1, 3)
    for colour in (sampler_quality.COLOURS[r["sampler"]] for r in rows):
        assert (pixels == colour).all(axis=1).sum() > 20  # each sampler's points are drawn
