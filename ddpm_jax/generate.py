"""Sampling from a training workdir or a pretrained model: checkpoint in, images out.

    from ddpm_jax import generate, pretrained
    images = generate.generate("runs/fmnist", num_samples=16, seed=0).images  # [16, 28, 28, 1]
    images = generate.generate(pretrained.load("google/ddpm-cifar10-32"), num_samples=16).images
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from ddpm_jax import run_config, sampling, schedules, train_lib, visualize
from ddpm_jax.checkpointing import Checkpointer, as_path
from ddpm_jax.models import UNet
from ddpm_jax.pretrained import Pretrained
from ddpm_jax.schedules import Schedule

PARAMS = ("ema", "raw")
GIF_FRAMES = 100  # reverse_process.gif: frames spaced evenly in log-SNR (visualize.log_snr_frames)
GIF_HOLD_LAST_MS = 2500  # how long the GIF shows the final samples before it loops
GRID_PAD_VALUE = 64  # the reverse process's grids: dark grey lines between tiles


@dataclasses.dataclass(frozen=True)
class Trained:
    """A restored run: its config, model, image shape, schedule, step and parameter sets
    (``step`` is None for a pretrained model, see ``as_trained``), and where it came from
    (``source``: ``{"workdir": path}`` or ``{"pretrained": id}``, recorded in the settings of
    what is sampled from it)."""

    config: ml_collections.ConfigDict
    image_shape: tuple[int, int, int]
    model: UNet
    schedule: Schedule
    step: int | None
    params: Any
    ema_params: Any
    source: dict[str, str] = dataclasses.field(default_factory=dict)

    def chosen_params(self, params: str) -> Any:
        """The ``'ema'`` or ``'raw'`` parameter set."""
        if params not in PARAMS:
            raise ValueError(f"unknown params {params!r}; expected one of {list(PARAMS)}")
        return self.ema_params if params == "ema" else self.params


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of a training workdir (its config.json)."""
    config_path = as_path(workdir) / run_config.CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{os.fspath(as_path(workdir))!r} is not a training workdir: no "
                                f"config.json (train there first with train.py --workdir)")
    return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def load_workdir(workdir: str, *, step: int | None = None) -> Trained:
    """Restores the config and the (latest, or ``step``) checkpoint of a training workdir."""
    config = load_config(workdir)
    workdir = as_path(workdir)
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoints in {ckpt.directory}")
        image_shape = run_config.read_image_shape(workdir)
        model = train_lib.make_model(config, image_shape)
        template = jax.eval_shape(
            lambda: train_lib.create_train_state(model, train_lib.make_optimizer(config),
                                                 jax.random.key(0), image_shape))
        state = ckpt.restore(template, step)
    return Trained(config, image_shape, model, train_lib.make_schedule_from_config(config),
                   int(state.step), state.params, state.ema_params,
                   {"workdir": os.fspath(workdir)})


def as_trained(model: Pretrained) -> Trained:
    """A pretrained model as a run: its sampler defaults become the config's ``diffusion`` and
    ``sampling`` fields (ancestral sampling over all T steps), and both parameter sets are its."""
    config = ml_collections.ConfigDict(dict(
        data=dict(name=None, data_dir=None),
        diffusion=dict(target=model.target, variance=model.variance),
        sampling=dict(sampler="ddpm", num_steps=None, spacing=None, eta=0.0,
                      clip_x0=model.clip_x0)))
    return Trained(config, model.image_shape, model.model, model.schedule, None, model.params,
                   model.params, {"pretrained": model.source})


def resolve(source: str | Trained | Pretrained, step: int | None) -> Trained:
    """A workdir (restored at ``step``), ``Trained`` or ``Pretrained`` as a ``Trained``."""
    if isinstance(source, Pretrained):
        return as_trained(source)
    return source if isinstance(source, Trained) else load_workdir(source, step=step)


def source_settings(trained: Trained) -> dict[str, str | None]:
    """Where samples of ``trained`` came from, for their settings: ``workdir`` (None for a
    pretrained model) and, for a pretrained model, its id (``pretrained``)."""
    return {"workdir": trained.source.get("workdir"),
            **({"pretrained": trained.source["pretrained"]} if "pretrained" in trained.source
               else {})}


@dataclasses.dataclass(frozen=True)
class Samples:
    """Generated images (float in [-1, 1] and uint8) and, if asked, the reverse process of the
    first batch: ``trajectory`` frames of x_t / x0-predictions [F, B, H, W, C]."""

    images: np.ndarray
    images_uint8: np.ndarray
    trajectory: sampling.Trajectory | None
    settings: dict


def generate(workdir: str | Trained | Pretrained, *, num_samples: int, seed: int = 0,
             step: int | None = None, params: str = "ema", batch_size: int | None = None,
             sampler: str | None = None, num_steps: int | None = None,
             spacing: str | None = None, eta: float | None = None,
             variance: str | None = None, guidance_scale: float | None = None,
             labels: list[int] | None = None, trajectory_every: int | None = None,
             progress: bool = False, mesh: Mesh | None = None) -> Samples:
    """Samples ``num_samples`` images from a workdir's checkpoint, batch by batch.

    Each batch is sharded over the mesh's ``data`` axis. With several processes, every process
    calls ``generate`` with the same arguments; each computes its devices' share of every batch
    and all of them receive all the images.

    Args:
      workdir: a training workdir, a ``Trained`` from ``load_workdir``, or a ``Pretrained``
        (from ``pretrained.load``, or built from any model, params and schedule).
      num_samples: how many images, >= 1.
      seed: sampling seed; the same seed, checkpoint and settings give identical images.
      step: checkpoint step (default: latest).
      params: ``'ema'`` (default) or ``'raw'`` parameters.
      batch_size: images per sampler call (default: all at once, rounded up to a multiple of
        the mesh size); a multiple of the mesh size.
      sampler, num_steps, spacing, eta: override the run's ``config.sampling`` (a spacing of
        None in both is the sampler's recommendation, ``sampling.default_spacing``).
      variance: ``'fixedlarge'`` / ``'fixedsmall'`` (default: the training config's).
      guidance_scale: classifier-free guidance scale for conditional models (default: the run's
        ``sampling.guidance_scale``, else 1; 0 is unconditional). 1 and 0 run one model pass
        per step, other scales two. A model without a null label (``UNet.has_null_label``)
        allows only 1.
      labels: class labels in [0, num_classes) for conditional models, and num_classes itself
        (the null label: unconditional) when the model has one; cycled over the samples
        (default 0, 1, ..., num_classes - 1).
      trajectory_every: also record the reverse process of the first batch every k steps.
      progress: show a progress bar over timesteps.
      mesh: a mesh with a ``data`` axis (default: every device of every process). The images do
        not depend on it beyond float rounding.
    """
    trained = resolve(workdir, step)
    config, model = trained.config, trained.model
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chosen = trained.chosen_params(params)
    mesh = train_lib.data_mesh() if mesh is None else mesh
    if batch_size is None:
        batch_size = math.ceil(num_samples / mesh.size) * mesh.size
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the device "
                         f"count {mesh.size}")
    s = run_config.sampling_settings(config, sampler=sampler, num_steps=num_steps,
                                    spacing=spacing, eta=eta, variance=variance)
    if s["spacing"] is None:  # recorded in the settings as the spacing actually used
        s["spacing"] = sampling.default_spacing(s["sampler"])
    # Validates num_steps before any work; the progress bar counts these steps.
    steps = len(sampling.sampling_timesteps(trained.schedule, s["num_steps"],
                                            spacing=s["spacing"]))
    image_shape = trained.image_shape
    num_batches = math.ceil(num_samples / batch_size)
    all_labels, scale = None, None
    if model.num_classes is not None:
        cycle = labels or list(range(model.num_classes))
        bad = [y for y in cycle if not 0 <= y < model.num_labels]
        if bad:
            null = (f", and {model.num_classes} for unconditional samples"
                    if model.has_null_label else "; the model has no null label")
            raise ValueError(f"label {bad[0]} is outside [0, {model.num_labels - 1}] (the "
                             f"classes{null})")
        all_labels = np.resize(np.asarray(cycle, np.int32), num_batches * batch_size)
        scale = (run_config.guidance_scale(config) if guidance_scale is None
                 else float(guidance_scale))
        if scale != 1.0 and not model.has_null_label:
            raise ValueError(f"guidance_scale={scale} needs a model with a null label; this "
                             "one has none (a diffusers class-conditional model not exported by "
                             "ddpm_jax), so only guidance_scale=1 is possible")
    elif labels or guidance_scale is not None:
        raise ValueError("labels and guidance_scale need a class-conditional model "
                         "(config.model.num_classes is None)")
    chosen = train_lib.replicate(chosen, mesh)
    bar = tqdm(total=steps * num_batches, desc="sample", disable=not progress, dynamic_ncols=True)

    sharded = NamedSharding(mesh, P("data"))

    def run(p, key, batch_labels, with_trajectory):
        if batch_labels is None:
            denoise_fn = train_lib.denoiser(model, p)
        else:
            denoise_fn = sampling.classifier_free_guidance(
                lambda x, t, y: model.apply({"params": p}, x, t, y), batch_labels,
                null_label=model.num_classes if model.has_null_label else None,
                guidance_scale=scale)
        sharded_fn = lambda x, t: denoise_fn(jax.lax.with_sharding_constraint(x, sharded), t)
        return sampling.sample(
            sharded_fn, trained.schedule, key, (batch_size, *image_shape), **s,
            trajectory_every=trajectory_every if with_trajectory else None,
            progress=(lambda i: bar.update(1)) if progress else None)

    run_jit = jax.jit(run, static_argnums=3)
    gather = lambda tree: multihost_utils.process_allgather(tree, tiled=True)
    outputs, trajectory = [], None
    base_key = jax.random.key(seed)
    with bar:  # closed (ending its line) before an error's message is printed
        for b in range(num_batches):
            batch_labels = None if all_labels is None else jax.make_array_from_process_local_data(
                NamedSharding(mesh, P()), all_labels[b * batch_size:(b + 1) * batch_size])
            out = run_jit(chosen, jax.random.fold_in(base_key, b), batch_labels,
                          b == 0 and trajectory_every is not None)
            if isinstance(out, tuple):
                out, trajectory = out
                trajectory = gather(trajectory)
            outputs.append(gather(out))
    images = np.concatenate(outputs)[:num_samples]
    settings = dict(**source_settings(trained), step=trained.step, seed=seed,
                    num_samples=num_samples, params=params, batch_size=batch_size,
                    guidance_scale=scale,
                    labels=None if all_labels is None else all_labels[:num_samples].tolist(), **s)
    return Samples(images, visualize.to_uint8(images), trajectory, settings)


@dataclasses.dataclass(frozen=True)
class ReverseProcess:
    """Every step of the ancestral chain of a few samples, as uint8 images for viewing.

    Frame f of ``x_t`` / ``pred_x0`` [T + 1, N, H, W, C] is the sample x_t at the paper's ``t[f]``
    (T, T - 1, ..., 1; frame 0 is the initial noise x_T) and the model's x_0 prediction from it;
    the last frame (t = 0) is the final sample in both. ``log_snr`` [T + 1] is
    log(abar_t / (1 - abar_t)) of each frame (+inf for the final sample). ``settings`` are
    ``generate``'s settings of the run (sampler ``'ddpm'``, ``num_steps`` T)."""

    t: np.ndarray
    log_snr: np.ndarray
    x_t: np.ndarray
    pred_x0: np.ndarray
    settings: dict


def reverse_process(workdir: str | Trained | Pretrained, *, num_samples: int, seed: int = 0,
                    step: int | None = None, params: str = "ema", variance: str | None = None,
                    guidance_scale: float | None = None, labels: list[int] | None = None,
                    progress: bool = False, mesh: Mesh | None = None) -> ReverseProcess:
    """Records all T steps of ancestral sampling (Ho et al. Algorithm 2) of ``num_samples``
    samples, whatever sampler the run's config names: ``generate`` with the ``'ddpm'`` sampler over
    all T timesteps and a trajectory frame at every step, in one batch.

    The chain starts from the same noise x_T as the first ``num_samples`` images of a
    ``generate`` call with the same seed (JAX's random bits do not depend on the batch size), so
    with ``sampler='ddpm'`` over all T steps it ends on those images too. Memory and time grow with
    T * num_samples: 16 Fashion-MNIST samples over T = 1000 steps hold 100 MB of float frames.

    Args:
      workdir, seed, step, params, variance, guidance_scale, labels, progress, mesh: as in
        ``generate``.
      num_samples: how many chains, >= 1.
    """
    trained = resolve(workdir, step)
    num_timesteps = trained.schedule.num_timesteps
    run = generate(trained, num_samples=num_samples, seed=seed, params=params, sampler="ddpm",
                   num_steps=num_timesteps, spacing="time", variance=variance,
                   guidance_scale=guidance_scale, labels=labels, trajectory_every=1,
                   progress=progress, mesh=mesh)
    final = run.images_uint8[None]
    chain = lambda frames: np.concatenate([visualize.to_uint8(frames[:, :num_samples]), final])
    index = np.asarray(run.trajectory.timesteps)  # T - 1, ..., 0
    log_snr = np.asarray(schedules.log_snr(trained.schedule.alphas_cumprod), np.float64)[index]
    return ReverseProcess(t=np.append(index + 1, 0), log_snr=np.append(log_snr, np.inf),
                          x_t=chain(run.trajectory.x_t), pred_x0=chain(run.trajectory.pred_x0),
                          settings=run.settings)


def _reverse_process_note(samples: Samples, process: ReverseProcess) -> str:
    """The viewer's paragraph: what its frames are and how they relate to samples.png."""
    s, r = samples.settings, process.settings
    n, steps = len(process.x_t[0]), process.settings["num_steps"]
    note = (f"x_t and the model's prediction of x_0 at every one of the T = {steps} steps of "
            f"ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) of {n} samples, seed "
            f"{r['seed']}: a run of its own for this page")
    if (s.get("sampler"), s.get("num_steps") or steps) != ("ddpm", steps):
        note += (f"; samples.png was made with {s.get('sampler')} in "
                 f"{s.get('num_steps') or steps} steps")
    if s.get("seed") == r["seed"] and s.get("batch_size", 0) >= n:
        note += (f". The chain starts from the same noise x_T as the first {n} images of "
                 f"samples.png")
    return note + "."


def write_outputs(out: str | os.PathLike[str], samples: Samples, *,
                  reverse_process: ReverseProcess | None = None,
                  grid_scale: int | None = None) -> list[str]:
    """Writes samples.png, samples.npz, sample_settings.json and, given a ``reverse_process``,
    reverse_process.html (a viewer of every frame) and reverse_process.gif (``GIF_FRAMES``
    frames spaced evenly in log-SNR, the final sample held) into ``out`` (local or ``gs://``).
    Returns the paths written.

    ``grid_scale`` upscales samples.png's tiles (default: ``visualize.make_grid``'s, at least
    96 pixels per image); the GIF and the HTML viewer scale their own frames."""
    out = as_path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: os.fspath(out / name) for name in (
        "samples.png", "samples.npz", "sample_settings.json", "reverse_process.gif",
        "reverse_process.html")}
    visualize.save_png(paths["samples.png"],
                       visualize.make_grid(samples.images_uint8, scale=grid_scale))
    with (out / "samples.npz").open("wb") as f:
        np.savez(f, images=samples.images_uint8, samples=samples.images)
    (out / "sample_settings.json").write_text(json.dumps(samples.settings, indent=2))
    if reverse_process is None:
        return [paths[n] for n in ("samples.png", "samples.npz", "sample_settings.json")]
    grids = lambda frames: np.stack([
        visualize.make_grid(f, scale=1, pad_value=GRID_PAD_VALUE) for f in frames])
    x_t = grids(reverse_process.x_t)
    gif_frames = visualize.log_snr_frames(reverse_process.log_snr, GIF_FRAMES)
    visualize.save_gif(paths["reverse_process.gif"], x_t[gif_frames], scale=2,
                       hold_last_ms=GIF_HOLD_LAST_MS)
    visualize.save_reverse_process_html(
        paths["reverse_process.html"], x_t=x_t, x0_pred=grids(reverse_process.pred_x0),
        timesteps=reverse_process.t, log_snr=reverse_process.log_snr,
        note=_reverse_process_note(samples, reverse_process))
    return list(paths.values())
