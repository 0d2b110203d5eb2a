"""Trains a DDPM: python train.py --config configs/fashion_mnist.py --workdir runs/fmnist

Overrides: --config.training.num_steps=2000 and so on. Re-running the same command resumes from
the latest checkpoint in the workdir; a changed model, diffusion or image shape is refused, other
changes than run length, logging, checkpointing and sampling settings need
--allow_config_changes (README, Resume). The workdir may be gs://...
"""

import sys

from ddpm_jax import xla_setup

xla_setup.configure()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ddpm_jax import compilation_cache, distributed, train_lib  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and previews.")
flags.DEFINE_bool("allow_config_changes", False, "On resume, accept a changed training setup "
                  "(optimizer, batch size, data, seed...); a changed model, diffusion or image "
                  "shape is always refused.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    distributed.initialize_from_flags()
    compilation_cache.enable_from_flags()
    try:
        train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                     allow_config_changes=FLAGS.allow_config_changes)
    # OSError: unwritable or corrupt files; MemoryError: the accelerator's memory (one line).
    except (ValueError, OSError, FloatingPointError, MemoryError) as e:
        sys.exit(f"train.py: error: {e}")


if __name__ == "__main__":
    app.run(main)
