"""Exports a training workdir in diffusers' format (UNet2DModel + DDPMScheduler):
python export_pretrained.py --workdir runs/fmnist --out runs/fmnist/diffusers

Writes config.json, diffusion_pytorch_model.safetensors and scheduler_config.json (the EMA
parameters by default), and the run's class names (labels.json) when it has them. sample.py and
evaluate.py read the directory with --pretrained, diffusers with UNet2DModel.from_pretrained /
DDPMScheduler.from_pretrained.
"""

import sys

from ddpm_jax import xla_setup

xla_setup.configure()

from absl import app, flags, logging  # noqa: E402

from ddpm_jax import data, generate, pretrained  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (train.py --workdir).")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_enum("params", "ema", list(generate.PARAMS), "EMA or raw parameters.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        trained = generate.load_workdir(FLAGS.workdir, step=FLAGS.step)
        config = trained.config
        pretrained.save(FLAGS.out, trained.model, trained.chosen_params(FLAGS.params),
                        trained.schedule, image_shape=trained.image_shape,
                        variance=config.diffusion.variance, target=config.diffusion.target,
                        clip_x0=config.sampling.clip_x0)
        class_names = data.read_class_names(FLAGS.workdir)
        if class_names is not None:  # sample.py --pretrained --labels=<name> reads them
            data.write_class_names(FLAGS.out, class_names)
    except (ValueError, OSError) as e:  # OSError: files, unreadable checkpoints
        sys.exit(f"export_pretrained.py: error: {e}")
    print(FLAGS.out)


if __name__ == "__main__":
    app.run(main)
