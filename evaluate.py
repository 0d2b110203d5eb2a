r"""Evaluates a trained DDPM: bits/dim, FID, KID and IS, written to a JSON file.

    python evaluate.py --train_classifier --dataset fashion_mnist \
        --classifier runs/classifier_fmnist.msgpack
    python evaluate.py --workdir runs/fmnist --metrics bpd,fid,floor \
        --classifier runs/classifier_fmnist.msgpack --bpd_examples 1000 --num_samples 1000
    python evaluate.py --workdir runs/cifar10 --metrics fid \
        --inception_weights pt_inception-2015-12-05-6726825d.pth --num_samples 50000
    python evaluate.py --workdir runs/cifar10 --metrics fid,is --inception_weights auto \
        --reference_stats fid_stats_cifar10_train.npz --num_samples 50000

``bpd``: the variational bound on --bpd_split (all T terms, or an unbiased Monte Carlo estimate
with --bpd_estimator mc). ``bpd_ode``: bits/dim by the probability-flow ODE on the same images
(score_sde's likelihood, --ode_* flags), with its time per image. ``fid``: FID / KID of
--num_samples samples against --reference_split,
on the classifier's (or InceptionV3's) features. ``floor``: the same for the first --num_samples
real images of --floor_split, the best a model can do at that count. ``is``: the Inception Score
of the same samples (InceptionV3's 1008-way logits, 10 splits).
"""

import json
import os
import re
import sys
import time

from ddpm_jax import xla_setup

xla_setup.configure()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from ddpm_jax import (  # noqa: E402
    compilation_cache, data, distributed, evaluation, generate, likelihood, pretrained,
    run_config, sampling, train_lib)
from ddpm_jax.checkpointing import as_path  # noqa: E402
from ddpm_jax.evaluation import inception  # noqa: E402

METRICS = ("bpd", "bpd_ode", "fid", "is", "floor")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (bpd, fid and is need it or --pretrained).")
flags.DEFINE_string("pretrained", None, "A diffusers model directory or hub id, instead of "
                    "--workdir (then --dataset and --out are needed).")
flags.DEFINE_list("metrics", ["bpd", "fid"], f"Any of {list(METRICS)}.")
flags.DEFINE_string("out", None, "Output JSON (default: <workdir>/metrics.json).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_enum("params", "ema", list(generate.PARAMS), "EMA or raw parameters.")
flags.DEFINE_string("dataset", None, "tfds dataset (default: the run's).")
flags.DEFINE_string("data_dir", None, "tfds data dir (default: the run's).")
flags.DEFINE_integer("seed", 0, "Seed of the bound's noise, the samples and the KID subsets.")
# Bits/dim.
flags.DEFINE_string("bpd_split", "test", "Split for bits/dim.")
flags.DEFINE_integer("bpd_examples", None, "Evaluate the first N images (default: all).")
flags.DEFINE_integer("bpd_batch_size", 64, "Global batch size of the bound.")
flags.DEFINE_enum("bpd_estimator", "full", list(evaluation.bound.ESTIMATORS),
                  "full: all T terms per image; mc: prior and decoder exact + --bpd_timesteps "
                  "stratified timesteps (unbiased, T/K times cheaper).")
flags.DEFINE_integer("bpd_timesteps", None, "K, timesteps per image of --bpd_estimator=mc.")
# Bits/dim by the probability-flow ODE.
flags.DEFINE_enum("ode_trace", "hutchinson", list(likelihood.TRACES),
                  "Divergence: one Hutchinson probe per image, or exact (small images only).")
flags.DEFINE_enum("ode_solver", "dopri5", sorted(likelihood.SOLVERS), "The diffrax solver.")
flags.DEFINE_integer("ode_num_steps", None, "Fixed solver steps (default: adaptive, "
                     "--ode_tolerance).", lower_bound=1)
flags.DEFINE_float("ode_tolerance", 1e-5, "rtol = atol of the adaptive steps.")
# FID / KID.
flags.DEFINE_string("classifier", None, "Feature classifier file (written by --train_classifier).")
flags.DEFINE_string("inception_weights", None,
                    "InceptionV3 weights: 'auto' (pytorch-fid's, downloaded once into --cache_dir "
                    "and verified) or a path (.pth read without torch, or .npz): pool3 features "
                    "instead of the classifier's, and the logits of the Inception Score.")
flags.DEFINE_string("cache_dir", None,
                    "Cache of downloaded weights (default: $XDG_CACHE_HOME/ddpm_jax or "
                    "~/.cache/ddpm_jax).")
flags.DEFINE_integer("feature_batch_size", 200, "Images per feature-network call.")
flags.DEFINE_integer("num_samples", 1000, "Generated (and, for floor, real) images.")
flags.DEFINE_integer("sample_batch_size", 256, "Images per sampler call, a multiple of the "
                     "device count.")
flags.DEFINE_string("sampler", None, f"One of {list(sampling.SAMPLERS)} (default: the run's).")
flags.DEFINE_integer("num_steps", None, "Sampling steps (default: the run's config).")
flags.DEFINE_string("spacing", None, f"One of {list(sampling.SPACINGS)} (default: the run's, "
                    "else the sampler's recommendation, sampling.default_spacing).")
flags.DEFINE_float("eta", None, "DDIM eta in [0, 1] (default: the run's config).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_string("reference_split", None, "Real images the samples are compared with "
                    "(default: test; train of a folder, which has no other split).")
flags.DEFINE_string("floor_split", "train", "Real images compared with the reference for floor.")
flags.DEFINE_string("reference_cache", None,
                    "Reference statistics .npz (default: beside the classifier or Inception "
                    "weights file, named after the "
                    "dataset and split); recomputed when its provenance differs.")
flags.DEFINE_string("reference_stats", None,
                    "Precomputed reference (mu, sigma) .npz in pytorch-fid / TTUR's format, used "
                    "instead of --reference_split (FID only; its SHA-256 goes into the JSON).")
flags.DEFINE_string("save_reference_stats", None,
                    "Also write the --reference_split statistics as a pytorch-fid / TTUR .npz.")
flags.DEFINE_integer("kid_subsets", 100, "KID subset pairs.")
flags.DEFINE_integer("kid_subset_size", 1000, "KID subset size.")
# Classifier training.
flags.DEFINE_bool("train_classifier", False, "Train the feature classifier and save it.")
flags.DEFINE_integer("classifier_steps", 2000, "Classifier training steps.")
flags.DEFINE_integer("classifier_batch_size", 128, "Classifier batch size.")
flags.DEFINE_string("classifier_train_split", None, "Classifier training split (default: train; "
                    "train[:90%] of a folder).")
flags.DEFINE_string("classifier_test_split", None, "Split for the classifier's accuracy (default: "
                    "test; train[90%:] of a folder).")


def _timed(fn, *args, **kwargs) -> dict:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return {**result, "wall_s": round(time.perf_counter() - start, 1)}


def _dataset(config) -> tuple[str, str | None, dict]:
    """(dataset, data dir, ``load_split``'s other options): --dataset / --data_dir, else the
    run's (``config``, None without a run). The run's own dataset is read as it trained on it
    (image size; a folder's path and settings); another --dataset as the dataset comes."""
    dataset = FLAGS.dataset or (config.data.name if config else None)
    if not dataset:
        raise ValueError("--dataset is needed without --workdir (a pretrained model does not "
                         "name its dataset)")
    data_dir = FLAGS.data_dir or (config.data.data_dir if config else None)
    own_data = config is not None and dataset == config.data.name
    return dataset, data_dir, run_config.split_options(config) if own_data else {}


def _split(value: str | None, dataset: str, *, tfds: str, folder: str) -> str:
    """A split flag's value, or its default: ``tfds`` for a tfds dataset, ``folder`` for an
    image folder (which has only 'train')."""
    return value or (folder if dataset == data.FOLDER else tfds)


def train_classifier() -> dict:
    """Trains and saves the classifier on --dataset or the --workdir run's own data; returns its
    info."""
    if not (FLAGS.dataset or FLAGS.workdir) or not FLAGS.classifier:
        raise ValueError("--train_classifier needs --dataset or --workdir (a run: its own data, "
                         "e.g. a labelled folder) and --classifier (the output file)")
    dataset, data_dir, split_options = _dataset(
        generate.load_config(FLAGS.workdir) if FLAGS.workdir else None)
    splits = (_split(FLAGS.classifier_train_split, dataset, tfds="train", folder="train[:90%]"),
              _split(FLAGS.classifier_test_split, dataset, tfds="test", folder="train[90%:]"))
    train, test = (data.load_split(dataset, split, data_dir=data_dir, **split_options)
                   for split in splits)
    params, accuracy = evaluation.train_classifier(
        train, test, steps=FLAGS.classifier_steps, batch_size=FLAGS.classifier_batch_size,
        seed=FLAGS.seed)
    provenance = dict(dataset=dataset, train_split=splits[0], test_split=splits[1],
                      steps=FLAGS.classifier_steps, batch_size=FLAGS.classifier_batch_size,
                      seed=FLAGS.seed, test_accuracy=accuracy)
    if jax.process_index() == 0:
        evaluation.save_classifier(FLAGS.classifier, params, image_shape=train.image_shape,
                                   num_classes=train.num_classes, provenance=provenance)
    return {"classifier": FLAGS.classifier, **provenance}


def _feature_network() -> tuple:
    """(extractor, its description for the JSON, the IS logits' weight or None) from the flags."""
    if FLAGS.inception_weights:
        path = (inception.fetch_pytorch_fid_weights(FLAGS.cache_dir)
                if FLAGS.inception_weights == "auto" else FLAGS.inception_weights)
        extractor = inception.load_inception(path, batch_size=FLAGS.feature_batch_size)
        logits_weight = inception.logits_weight(path) if "is" in FLAGS.metrics else None
        info = {"file": str(path), "sha256": inception.weights_sha256(path)}
    elif "is" in FLAGS.metrics:
        raise ValueError("is needs --inception_weights: the Inception Score is defined on "
                         "InceptionV3's 1008-way logits")
    elif FLAGS.classifier:
        extractor, info = evaluation.load_classifier(FLAGS.classifier,
                                                     batch_size=FLAGS.feature_batch_size)
        info, logits_weight = {"file": FLAGS.classifier, **info}, None
    else:
        raise ValueError("fid and floor need --classifier (train one with --train_classifier) "
                         "or --inception_weights")
    return extractor, {"name": extractor.name, **info}, logits_weight


def _reference(extractor, weights_file: str, dataset: str, data_dir: str | None,
               split_options: dict):
    """--reference_stats, or the cached statistics of --reference_split (exported when asked)."""
    if FLAGS.reference_stats:
        return evaluation.load_reference_stats(FLAGS.reference_stats,
                                               feature_network=extractor.name)
    split = _split(FLAGS.reference_split, dataset, tfds="test", folder="train")
    split_tag = re.sub(r"[^\w.-]+", "_", split).strip("_")
    cache = FLAGS.reference_cache or (
        f"{os.path.splitext(weights_file)[0]}.{dataset}.{split_tag}.reference.npz")
    reference = evaluation.reference_statistics(
        extractor, dataset=dataset, split=split, data_dir=data_dir, cache=cache,
        **split_options)
    if FLAGS.save_reference_stats and jax.process_index() == 0:
        evaluation.save_reference_stats(FLAGS.save_reference_stats, reference)
    return reference


def evaluate() -> dict:
    """Computes the requested metrics; returns them with their provenance."""
    unknown = sorted(set(FLAGS.metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected any of {list(METRICS)}")
    if FLAGS.save_reference_stats and (FLAGS.reference_stats
                                       or not {"fid", "floor"} & set(FLAGS.metrics)):
        raise ValueError("--save_reference_stats exports the statistics of --reference_split: "
                         "it needs --metrics fid or floor, and no --reference_stats")
    if "bpd" in FLAGS.metrics and FLAGS.bpd_estimator == "mc" and FLAGS.bpd_timesteps is None:
        raise ValueError("--bpd_estimator=mc needs --bpd_timesteps (K, the timesteps per image)")
    needs_run = {"bpd", "bpd_ode", "fid", "is"} & set(FLAGS.metrics)
    if needs_run and not (FLAGS.workdir or FLAGS.pretrained):
        raise ValueError(f"metrics {sorted(needs_run)} need --workdir or --pretrained")
    if FLAGS.workdir and FLAGS.pretrained:
        raise ValueError("--workdir and --pretrained are exclusive")
    if FLAGS.pretrained:
        trained = generate.as_trained(pretrained.load(FLAGS.pretrained))
    else:
        trained = generate.load_workdir(FLAGS.workdir, step=FLAGS.step) if FLAGS.workdir else None
    dataset, data_dir, split_options = _dataset(
        trained.config if trained and not FLAGS.pretrained else None)
    open_split = lambda split: data.load_split(dataset, split, data_dir=data_dir,
                                               keep_in_memory=False, **split_options)
    results = {"dataset": dataset}
    if FLAGS.pretrained:
        results.update(pretrained=FLAGS.pretrained)
    elif trained:
        results.update(workdir=os.fspath(as_path(FLAGS.workdir)), step=trained.step)
    if "bpd" in FLAGS.metrics:
        source = open_split(FLAGS.bpd_split)
        results["bpd"] = {"split": FLAGS.bpd_split, **_timed(
            evaluation.bits_per_dim, trained, source, params=FLAGS.params,
            batch_size=FLAGS.bpd_batch_size, num_examples=FLAGS.bpd_examples, seed=FLAGS.seed,
            estimator=FLAGS.bpd_estimator, timesteps_per_image=FLAGS.bpd_timesteps)}
    if "bpd_ode" in FLAGS.metrics:
        source = open_split(FLAGS.bpd_split)
        results["bpd_ode"] = {"split": FLAGS.bpd_split, **_timed(
            evaluation.ode_bits_per_dim, trained, source, params=FLAGS.params,
            batch_size=FLAGS.bpd_batch_size, num_examples=FLAGS.bpd_examples, seed=FLAGS.seed,
            trace=FLAGS.ode_trace, solver=FLAGS.ode_solver, num_steps=FLAGS.ode_num_steps,
            rtol=FLAGS.ode_tolerance, atol=FLAGS.ode_tolerance)}
    if {"fid", "is", "floor"} & set(FLAGS.metrics):
        extractor, results["feature_network"], logits_weight = _feature_network()
    if {"fid", "floor"} & set(FLAGS.metrics):
        reference = _reference(extractor, results["feature_network"]["file"], dataset, data_dir,
                               split_options)
        kid = dict(kid_subsets=FLAGS.kid_subsets, kid_subset_size=FLAGS.kid_subset_size,
                   seed=FLAGS.seed)
    if {"fid", "is"} & set(FLAGS.metrics):
        # One set of samples for FID, KID and IS, reported under "fid" (or "is" when alone).
        fid = "fid" in FLAGS.metrics
        results["fid" if fid else "is"] = _timed(
            evaluation.fid_kid, trained, num_samples=FLAGS.num_samples,
            reference=reference if fid else None, feature_extractor=extractor,
            params=FLAGS.params, batch_size=FLAGS.sample_batch_size, sampler=FLAGS.sampler,
            num_steps=FLAGS.num_steps, spacing=FLAGS.spacing, eta=FLAGS.eta,
            logits_weight=logits_weight, **(kid if fid else {}))
    if "floor" in FLAGS.metrics:
        def floor():
            real = open_split(FLAGS.floor_split)
            features = evaluation.split_features(extractor, real, num_examples=FLAGS.num_samples)
            return {"split": FLAGS.floor_split,
                    **evaluation.compare_features(features, reference, **kid)}
        results["floor"] = _timed(floor)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_flags()
    compilation_cache.enable_from_flags()
    try:
        if FLAGS.train_classifier:
            results = _timed(train_classifier)
            out = FLAGS.out
        else:
            if not (FLAGS.out or FLAGS.workdir):
                raise ValueError("--out is needed without --workdir")
            results = evaluate()
            out = FLAGS.out or as_path(FLAGS.workdir) / "metrics.json"
    except (ValueError, OSError, ImportError) as e:  # OSError: files, ConnectionError
        sys.exit(f"evaluate.py: error: {e}")
    text = json.dumps(results, indent=2)
    if jax.process_index() == 0:
        if out:
            out = as_path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    app.run(main)
