"""The demo's samples against the PyTorch reference's: FID and KID on the same features.

    python benchmarks/demo_vs_reference.py --demo runs/fmnist \\
        --classifier runs/classifier_fmnist.msgpack

``--demo`` is a training workdir (its ``samples/samples.npz``, written by ``sample.py
--num_samples 256``) or a ``samples.npz``; ``--reference`` defaults to the diffusers samples in
``../shared/reference/`` beside the repository. The first ``--num_samples`` (256) images of each
are scored with the classifier's penultimate-layer features (``evaluate.py --train_classifier``)
against the whole ``--reference_split`` (Fashion-MNIST test, 10,000 images), with the same KID
subsets and seed for both. Prints both scores and the demo / reference FID ratio (the demo's
goal: <= 0.7), writes them as JSON and the two grids side by side as a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ddpm_jax import data, evaluation, visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REFERENCE = os.path.join(ROOT, "..", "shared", "reference",
                                 "diffusers_12min_fmnist_samples.npz")
FID_RATIO_GOAL = 0.7  # issue 19: demo FID <= 0.7 x the reference's at n = 256
GRID_IMAGES = 64  # images per grid in the side-by-side PNG
HEADER_PIXELS = 24
DATASET = "fashion_mnist"


def samples_path(demo: str) -> str:
    """The samples.npz of a workdir (``<workdir>/samples/samples.npz``) or the file itself."""
    return os.path.join(demo, "samples", "samples.npz") if os.path.isdir(demo) else demo


def load_images(path: str, *, num_images: int, name: str) -> np.ndarray:
    """The first ``num_images`` of an .npz's uint8 ``images`` [N, H, W, C]."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {name} samples at {path!r}")
    with np.load(path) as f:
        if "images" not in f:
            raise ValueError(f"{path!r} has no 'images' array (keys: {sorted(f.keys())})")
        images = f["images"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{name} images in {path!r} must be uint8 [N, H, W, C]; got "
                         f"{images.dtype} {images.shape}")
    if len(images) < num_images:
        raise ValueError(f"{path!r} holds {len(images)} {name} images; {num_images} are needed "
                         f"(sample.py --num_samples {num_images})")
    return images[:num_images]


def score(images: np.ndarray, extractor: evaluation.FeatureFunction,
          reference: evaluation.ReferenceStats, *, kid_subsets: int, seed: int) -> dict[str, Any]:
    """FID and KID of uint8 images [N, H, W, C] against the reference statistics."""
    features = extractor(data.to_model_range(images))
    return evaluation.compare_features(features, reference, kid_subsets=kid_subsets,
                                       kid_subset_size=len(images), seed=seed)


def side_by_side(left: np.ndarray, right: np.ndarray, *, titles: tuple[str, str],
                 gap: int = 16) -> np.ndarray:
    """Two uint8 grids [H, W, C] (C = 1 or 3, the same for both) side by side, titled, on
    white: [max(H) + 24, W_left + gap + W_right, C]."""
    rgb = left.shape[-1] == 3
    to_pil = lambda grid: Image.fromarray(grid if rgb else grid[..., 0])
    height = max(left.shape[0], right.shape[0])
    width = left.shape[1] + gap + right.shape[1]
    canvas = Image.new("RGB" if rgb else "L", (width, height + HEADER_PIXELS), "white")
    canvas.paste(to_pil(left), (0, HEADER_PIXELS))
    canvas.paste(to_pil(right), (left.shape[1] + gap, HEADER_PIXELS))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 6), titles[0], fill="black")
    draw.text((left.shape[1] + gap + 4, 6), titles[1], fill="black")
    image = np.asarray(canvas)
    return image if rgb else image[..., None]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", required=True, help="training workdir or samples.npz")
    parser.add_argument("--classifier", required=True, help="feature classifier file")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="reference samples .npz")
    parser.add_argument("--num_samples", type=int, default=256, help="images scored from each")
    parser.add_argument("--reference_split", default="test", help="real images compared with")
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
    parser.add_argument("--kid_subsets", type=int, default=100, help="KID subset pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets")
    parser.add_argument("--out", default=None,
                        help="JSON (default: demo_vs_reference.json beside the demo's samples)")
    parser.add_argument("--png", default=None, help="side-by-side grids (default: beside --out)")
    args = parser.parse_args(argv)
    if args.num_samples < 2:
        parser.error(f"--num_samples must be >= 2, got {args.num_samples}")
    return args


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    demo_file = samples_path(args.demo)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(demo_file)),
                                   "demo_vs_reference.json")
    png = args.png or os.path.splitext(out)[0] + ".png"
    demo = load_images(demo_file, num_images=args.num_samples, name="demo")
    reference_images = load_images(args.reference, num_images=args.num_samples, name="reference")
    if demo.shape[1:] != reference_images.shape[1:]:
        raise ValueError(f"demo images are {demo.shape[1:]}, reference images "
                         f"{reference_images.shape[1:]}")
    extractor, info = evaluation.load_classifier(args.classifier)
    cache = f"{args.classifier}.{DATASET}.{args.reference_split}.reference.npz"
    real = evaluation.reference_statistics(extractor, dataset=DATASET,
                                           split=args.reference_split, data_dir=args.data_dir,
                                           cache=cache)
    kw = dict(kid_subsets=args.kid_subsets, seed=args.seed)
    results = {"demo": {"samples": os.path.abspath(demo_file), **score(demo, extractor, real, **kw)},
               "reference": {"samples": os.path.abspath(args.reference),
                             **score(reference_images, extractor, real, **kw)}}
    fid_ratio = results["demo"]["fid"] / results["reference"]["fid"]
    results.update(fid_ratio=fid_ratio,
                   kid_ratio=results["demo"]["kid"] / results["reference"]["kid"],
                   goal=f"fid_ratio <= {FID_RATIO_GOAL}", meets_goal=fid_ratio <= FID_RATIO_GOAL,
                   feature_network={"name": extractor.name, "file": args.classifier, **info},
                   side_by_side=os.path.abspath(png))
    grids = [visualize.make_grid(images[:GRID_IMAGES]) for images in (demo, reference_images)]
    titles = (f"ddpm_jax demo: FID {results['demo']['fid']:.2f}",
              f"diffusers 12-min reference: FID {results['reference']['fid']:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    visualize.save_png(png, side_by_side(*grids, titles=titles))
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    n = args.num_samples
    for name in ("demo", "reference"):
        r = results[name]
        print(f"{name:9s} FID@{n} {r['fid']:8.3f}   KID@{n} {r['kid']:.5f} +- {r['kid_std']:.5f}")
    print(f"demo / reference: FID x{fid_ratio:.3f}, KID x{results['kid_ratio']:.3f} "
          f"(goal: FID x{FID_RATIO_GOAL} or less: {'met' if results['meets_goal'] else 'not met'})")
    print(f"wrote {out} and {png}")
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"demo_vs_reference.py: error: {e}")
