"""Sample quality against model calls: FID / KID and wall time of each sampler at a few step counts.

    python benchmarks/sampler_quality.py --workdir runs/fmnist \
        --classifier runs/classifier_fmnist.msgpack --num_samples 1000 \
        --out benchmarks/results/sampler_quality

Every row samples ``--num_samples`` images with the same seed from the same checkpoint and
compares them with ``--reference_split`` through the classifier's features
(``ddpm_jax.evaluation.fid_kid``). Writes ``<out>.json`` (the rows and their provenance),
``<out>.md`` (the table) and ``<out>.png`` (FID against model calls, log scale). Wall time covers
sampling, compilation and feature extraction, on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time

# The grid: ancestral DDPM at 1000 steps and respaced to 100 and 50; DDIM at 10-100;
# DPM-Solver++(2M) and its SDE variant at 10-50 on the recommended log-SNR spacing; Heun at about
# the same numbers of model calls (2 steps - 1). Entries are sampler:steps[:spacing].
DEFAULT_GRID = ("ddpm:1000,ddpm:100,ddpm:50,ddim:10,ddim:20,ddim:50,ddim:100,"
                "dpmpp_2m:10:logsnr,dpmpp_2m:20:logsnr,dpmpp_2m:50:logsnr,"
                "dpmpp_2m_sde:10:logsnr,dpmpp_2m_sde:20:logsnr,dpmpp_2m_sde:50:logsnr,"
                "heun:5:karras,heun:10:karras,heun:25:karras,heun:50:karras")
COLOURS = {"ddpm": (31, 119, 180), "ddim": (255, 127, 14), "dpmpp_2m": (44, 160, 44),
           "dpmpp_2m_sde": (148, 103, 189), "heun": (214, 39, 40)}


def parse_grid(text: str) -> list[dict]:
    """``'ddim:10,dpmpp_2m:20:logsnr'`` -> [{sampler, num_steps, spacing}, ...], validated; an
    entry without a spacing takes its sampler's (``sampling.default_spacing``)."""
    from ddpm_jax import sampling
    rows = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise ValueError(f"bad grid entry {item!r}; expected sampler:steps[:spacing]")
        sampler = parts[0]
        spacing = parts[2] if len(parts) == 3 else (
            sampling.default_spacing(sampler) if sampler in sampling.SAMPLERS else None)
        if sampler not in sampling.SAMPLERS or spacing not in sampling.SPACINGS:
            raise ValueError(f"bad grid entry {item!r}: samplers {list(sampling.SAMPLERS)}, "
                             f"spacings {list(sampling.SPACINGS)}")
        rows.append(dict(sampler=sampler, num_steps=int(parts[1]), spacing=spacing))
    if not rows:
        raise ValueError("the grid is empty")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| sampler | spacing | steps | model calls | FID | KID (± std over subsets) "
             "| wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["sampler"], r["model_calls"])):
        lines.append(f"| {r['sampler']} | {r['spacing']} | {r['num_steps']} | {r['model_calls']} "
                     f"| {r['fid']:.2f} | {r['kid']:.2f} ± {r['kid_std']:.2f} "
                     f"| {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, *, title: str) -> None:
    """FID against model calls (log x), one line per sampler and spacing, drawn with Pillow."""
    from PIL import Image, ImageDraw
    width, height, left, right, top, bottom = 760, 480, 70, 190, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    calls = [r["model_calls"] for r in rows]
    fids = [r["fid"] for r in rows]
    lo_x, hi_x = math.log10(min(calls)) - 0.1, math.log10(max(calls)) + 0.1
    lo_y, hi_y = 0.0, max(fids) * 1.1 or 1.0
    to_px = lambda c, f: (left + (math.log10(c) - lo_x) / (hi_x - lo_x) * (width - left - right),
                          height - bottom - (f - lo_y) / (hi_y - lo_y) * (height - top - bottom))
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for decade in range(math.floor(lo_x), math.ceil(hi_x) + 1):
        for mult in (1, 2, 5):
            c = mult * 10 ** decade
            if lo_x <= math.log10(c) <= hi_x:
                x, _ = to_px(c, 0)
                draw.line([x, height - bottom, x, height - bottom + 5], fill="black")
                draw.text((x - 8, height - bottom + 8), str(c), fill="black")
    for i in range(6):
        f = lo_y + i * (hi_y - lo_y) / 5
        _, y = to_px(10 ** lo_x, f)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((8, y - 6), f"{f:.1f}", fill="black")
    draw.text((left + 150, height - 25), "model calls per image (log scale)", fill="black")
    draw.text((8, 12), f"FID   {title}", fill="black")
    lines = sorted({(r["sampler"], r["spacing"]) for r in rows})
    for k, (sampler, spacing) in enumerate(lines):
        # One line per sampler and spacing; a sampler's further spacings in lighter shades.
        shade = [s for s, _ in lines[:k]].count(sampler)
        colour = tuple(round(c + (255 - c) * shade / 3) for c in COLOURS.get(sampler, (0, 0, 0)))
        points = sorted((r["model_calls"], r["fid"]) for r in rows
                        if (r["sampler"], r["spacing"]) == (sampler, spacing))
        xy = [to_px(c, f) for c, f in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([width - right + 15, top + 20 * k + 6, width - right + 35, top + 20 * k + 6],
                  fill=colour, width=3)
        draw.text((width - right + 40, top + 20 * k), f"{sampler} {spacing}", fill="black")
    image.save(path)


def measure(args: argparse.Namespace) -> dict:
    import jax
    from ddpm_jax import evaluation, generate, sampling
    grid = parse_grid(args.grid)
    trained = generate.load_workdir(args.workdir, step=args.step)
    for row in grid:  # validate every entry before the first (long) sampling run
        sampling.sampling_timesteps(trained.schedule, row["num_steps"], spacing=row["spacing"])
    dataset, data_dir = trained.config.data.name, args.data_dir or trained.config.data.data_dir
    extractor, info = evaluation.load_classifier(args.classifier)
    split_tag = re.sub(r"[^\w.-]+", "_", args.reference_split).strip("_")
    reference = evaluation.reference_statistics(
        extractor, dataset=dataset, split=args.reference_split, data_dir=data_dir,
        cache=f"{os.path.splitext(args.classifier)[0]}.{dataset}.{split_tag}.reference.npz")
    rows = []
    for row in grid:
        start = time.perf_counter()
        result = evaluation.fid_kid(
            trained, num_samples=args.num_samples, reference=reference,
            feature_extractor=extractor, seed=args.seed, batch_size=args.batch_size,
            kid_subsets=args.kid_subsets,
            kid_subset_size=min(args.kid_subset_size, args.num_samples), **row)
        rows.append({**result, "wall_s": round(time.perf_counter() - start, 1)})
        print(json.dumps({k: rows[-1][k] for k in ("sampler", "spacing", "num_steps",
                                                   "model_calls", "fid", "kid", "wall_s")}),
              flush=True)
    return {"workdir": os.path.abspath(args.workdir), "step": trained.step,
            "dataset": dataset, "reference_split": args.reference_split,
            "num_samples": args.num_samples, "seed": args.seed, "classifier": info,
            "devices": [str(d) for d in jax.devices()], "machine": platform.platform(),
            "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="Training workdir (after make demo).")
    parser.add_argument("--classifier", required=True,
                        help="Feature classifier (evaluate.py --train_classifier).")
    parser.add_argument("--out", default="benchmarks/results/sampler_quality",
                        help="Output path without extension: .json, .md and .png are written.")
    parser.add_argument("--grid", default=DEFAULT_GRID, help="sampler:steps[:spacing],...")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=None,
                        help="Images per sampler call (default: all at once).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="Checkpoint (default: latest).")
    parser.add_argument("--reference_split", default="test")
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: the run's).")
    parser.add_argument("--kid_subsets", type=int, default=100)
    parser.add_argument("--kid_subset_size", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        results = measure(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"sampler_quality.py: error: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(results["rows"]))
    plot(results["rows"], args.out + ".png",
         title=f"{results['num_samples']} samples vs {results['reference_split']}, "
               f"step {results['step']}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ddpm_jax import xla_setup
    xla_setup.configure()
    main()
