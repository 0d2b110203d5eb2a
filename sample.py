"""Samples from a trained DDPM: python sample.py --workdir runs/fmnist --out runs/fmnist/samples
or from a diffusers model: python sample.py --pretrained google/ddpm-cifar10-32 --out samples

Writes samples.png (grid), samples.npz (uint8 images and float samples) and sample_settings.json;
with --trajectory also reverse_process.html (every step of an ancestral chain: slider, play) and
reverse_process.gif.

Editing (docs/guides/editing.md), the same outputs:
    python sample.py --workdir runs/fmnist --inpaint shirt.png --mask left.png --resample 5
    python sample.py --workdir runs/fmnist --init_image shirt.png --strength 0.5
    python sample.py --workdir runs/fmnist --interpolate 8
"""

import os
import sys

from ddpm_jax import xla_setup

xla_setup.configure()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from ddpm_jax import (  # noqa: E402
    checkpointing, compilation_cache, data, distributed, generate, image_edits, pretrained,
    sampling)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
flags.DEFINE_string("pretrained", None, "A diffusers model directory or hub id, instead of "
                    "--workdir.")
flags.DEFINE_string("out", None, "Output directory (default: <workdir>/samples).")
flags.DEFINE_integer("num_samples", 64, "Number of images.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_enum("params", "ema", list(generate.PARAMS), "EMA or raw parameters.")
flags.DEFINE_integer("batch_size", None, "Images per sampler call (default: all).", lower_bound=1)
flags.DEFINE_string("sampler", None, f"One of {list(sampling.SAMPLERS)} (default: the config's).")
flags.DEFINE_integer("num_steps", None, "Sampling steps (default: all T).")
flags.DEFINE_string("spacing", None, f"One of {list(sampling.SPACINGS)} (default: the config's, "
                    "else the sampler's recommendation, sampling.default_spacing).")
flags.DEFINE_float("eta", None, "DDIM eta in [0, 1] (0: deterministic).", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_string("variance", None, "fixedlarge or fixedsmall (default: the config's).")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale (conditional models).")
flags.DEFINE_list("labels", None, "Class labels, cycled over the samples (conditional models): "
                  "numbers, or names from labels.json in --workdir or a --pretrained directory "
                  "(e.g. --labels=cats,dogs).")
flags.DEFINE_bool("trajectory", False, "Also record all T steps of ancestral sampling of "
                  "--trajectory_samples samples (a run of its own, whatever --sampler) and write "
                  "them as reverse_process.html (every step) and reverse_process.gif.")
flags.DEFINE_integer("trajectory_samples", 4, "Samples in the --trajectory run (the page holds "
                     "2 (T + 1) frames of them: ~5 MB for 4 at 28x28, ~20 MB for 16).",
                     lower_bound=1)
flags.DEFINE_integer("grid_scale", None, "Upscaling factor of samples.png's images (default: "
                     "the smallest giving at least 96 pixels per image).", lower_bound=1)
flags.DEFINE_string("inpaint", None, "Inpaint this image file where --mask is black "
                    "(--num_samples completions; ddpm or ddim).")
flags.DEFINE_string("mask", None, "Mask image for --inpaint: white keeps, black is filled in.")
flags.DEFINE_integer("resample", 1, "RePaint's resampling passes for --inpaint.", lower_bound=1)
flags.DEFINE_integer("jump", 1, "RePaint's jump length for --inpaint (divides the steps).",
                     lower_bound=1)
flags.DEFINE_string("init_image", None, "SDEdit this image file at --strength "
                    "(--num_samples edits).")
flags.DEFINE_float("strength", None, "SDEdit strength in (0, 1] (1: ignore the image).")
flags.DEFINE_integer("interpolate", None, "A row of N images between two noises x_T drawn from "
                     "--seed (slerp; a deterministic sampler).", lower_bound=2)
flags.mark_flags_as_mutual_exclusive(["workdir", "pretrained"], required=True)
flags.mark_flags_as_mutual_exclusive(["inpaint", "init_image", "interpolate"])


def edit_mode() -> str | None:
    """The editing mode the flags ask for (None: plain sampling); one-line errors for flags
    that do not go together."""
    mode = ("inpaint" if FLAGS.inpaint else "sdedit" if FLAGS.init_image
            else "interpolate" if FLAGS.interpolate else None)
    if (FLAGS.mask is not None) != (mode == "inpaint"):
        raise ValueError("--inpaint and --mask go together")
    if (FLAGS.strength is not None) != (mode == "sdedit"):
        raise ValueError("--init_image and --strength go together")
    if mode and (FLAGS.trajectory or FLAGS.labels or FLAGS.guidance_scale is not None
                 or FLAGS.batch_size):
        raise ValueError(f"{mode} does not take --trajectory, --labels, --guidance_scale or "
                         f"--batch_size")
    return mode


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_flags()
    if FLAGS.pretrained and not FLAGS.out:
        sys.exit("sample.py: error: --pretrained needs --out")
    compilation_cache.enable_from_flags()
    out = FLAGS.out or os.fspath(checkpointing.as_path(FLAGS.workdir) / "samples")
    try:
        mode = edit_mode()
        # Restored once, for the samples and the trajectory alike.
        source = generate.resolve(
            pretrained.load(FLAGS.pretrained) if FLAGS.pretrained else FLAGS.workdir, FLAGS.step)
        process = None
        if mode:
            result = image_edits.edit(
                source, mode=mode, num_samples=FLAGS.interpolate or FLAGS.num_samples,
                seed=FLAGS.seed, step=FLAGS.step, params=FLAGS.params,
                image=FLAGS.inpaint or FLAGS.init_image, mask=FLAGS.mask,
                strength=FLAGS.strength, resample=FLAGS.resample, jump=FLAGS.jump,
                sampler=FLAGS.sampler, num_steps=FLAGS.num_steps, spacing=FLAGS.spacing,
                eta=FLAGS.eta, variance=FLAGS.variance)
        else:
            # A run's class names, or an exported run's (export_pretrained.py carries labels.json).
            class_names = data.read_class_names(FLAGS.workdir or FLAGS.pretrained)
            labels = data.parse_labels(FLAGS.labels, class_names) if FLAGS.labels else None
            result = generate.generate(
                source, num_samples=FLAGS.num_samples, seed=FLAGS.seed, step=FLAGS.step,
                params=FLAGS.params, batch_size=FLAGS.batch_size, sampler=FLAGS.sampler,
                num_steps=FLAGS.num_steps, spacing=FLAGS.spacing, eta=FLAGS.eta,
                variance=FLAGS.variance, guidance_scale=FLAGS.guidance_scale, labels=labels,
                progress=jax.process_index() == 0)
            if FLAGS.trajectory:
                process = generate.reverse_process(
                    source, num_samples=FLAGS.trajectory_samples, seed=FLAGS.seed,
                    step=FLAGS.step, params=FLAGS.params, variance=FLAGS.variance,
                    guidance_scale=FLAGS.guidance_scale, labels=labels,
                    progress=jax.process_index() == 0)
    except (ValueError, OSError, ImportError) as e:  # OSError: missing or corrupt checkpoints
        sys.exit(f"sample.py: error: {e}")
    if jax.process_index() == 0:
        for path in generate.write_outputs(out, result, reverse_process=process,
                                           grid_scale=FLAGS.grid_scale):
            print(path)


if __name__ == "__main__":
    app.run(main)
