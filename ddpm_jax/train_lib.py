"""Training as a library: ``create_train_state``, ``make_train_step``, ``train_and_evaluate``.

The checks a run's config passes before anything is written, and the run files, are in
``run_config``.

Randomness is derived, never stored: the step's key is ``fold_in(key(seed), step)`` and the data
order is a function of (seed, step), so a resumed run is bit-identical to an uninterrupted one.
The batch is sharded over a ``data`` mesh axis spanning every device of every process; parameters
are replicated. Random draws are over the global batch (JAX's partitionable threefry), so no two
devices draw the same t or noise and the result does not depend on the device count.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from ddpm_jax import checkpointing, data, losses, run_config, sampling, train_loop, visualize
from ddpm_jax.checkpointing import Checkpointer
from ddpm_jax.metric_writer import MetricWriter
from ddpm_jax.models import UNet
from ddpm_jax.schedules import Schedule, make_schedule

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds besides the config. ``step`` counts completed updates."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> UNet:
    """The U-Net of ``config.model`` for images of ``image_shape`` [H, W, C]."""
    fields = config.model.to_dict()
    dtype = fields.pop("dtype")
    if dtype not in DTYPES:
        raise ValueError(f"unknown model dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    learned = config.diffusion.variance == "learned_range"
    return UNet(**fields, dtype=DTYPES[dtype], out_channels=image_shape[-1] * (2 if learned else 1))


def make_schedule_from_config(config: ml_collections.ConfigDict) -> Schedule:
    return make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """A linear warm-up from 0 to ``optim.learning_rate`` over ``optim.warmup_steps``, then that
    rate (Ho et al.) or, with ``optim.decay_steps`` > 0, a cosine decay from it that reaches
    ``optim.end_learning_rate`` at step ``decay_steps`` (warm-up included) and stays there."""
    o = config.optim
    warmup = max(o.warmup_steps, 1)
    if not o.get("decay_steps"):  # absent from the config.json of runs saved before it existed
        return optax.warmup_constant_schedule(0.0, o.learning_rate, warmup)
    if o.decay_steps <= warmup:
        raise ValueError(f"optim.decay_steps={o.decay_steps} must exceed optim.warmup_steps="
                         f"{o.warmup_steps} (it counts the warm-up), or be 0 for a constant rate")
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup, o.decay_steps,
                                              end_value=o.end_learning_rate)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam on ``learning_rate_schedule``, after global-norm clipping (Ho et al.)."""
    o = config.optim
    adam = optax.adam(learning_rate_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adam) if o.grad_clip > 0 else adam


def create_train_state(model: UNet, optimizer: optax.GradientTransformation, key: jax.Array,
                       image_shape: tuple[int, int, int]) -> TrainState:
    """Initial parameters (EMA starts equal to them) and optimizer state. Jit it."""
    x = jnp.zeros((1, *image_shape))
    t = jnp.zeros((1,), jnp.int32)
    labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
    params = model.init(key, x, t, labels)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer.init(params))


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay after ``step`` updates: min(decay, (1 + step) / (10 + step)) with warm-up."""
    if not warmup:
        return jnp.asarray(decay)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def denoiser(model: UNet, params: Any, labels: jax.Array | None = None, **apply_kwargs):
    """``denoise_fn(x_t, t)`` of a U-Net with fixed parameters (and labels, when conditional)."""
    return lambda x, t: model.apply({"params": params}, x, t, labels, **apply_kwargs)


def unconditional_denoiser(model: UNet, params: Any) -> Callable:
    """``denoise_fn(x_t, t)`` without a class: an unconditional model as it is, a conditional one
    with its null label on every row (labels shaped like ``t``, so any batch works). A
    conditional model without a null label (``UNet.has_null_label``) has no unconditional
    prediction: a one-line ValueError."""
    if model.num_classes is None:
        return denoiser(model, params)
    if not model.has_null_label:
        raise ValueError(f"this class-conditional model has no null label (its "
                         f"{model.num_classes} class embeddings are all classes), so no "
                         f"unconditional prediction: bits/dim and editing need one")
    return lambda x, t: model.apply({"params": params}, x, t, jnp.full(t.shape, model.num_classes))


def accumulate_gradients(grad_fn: Callable, params: Any, examples: Any, key: jax.Array,
                         count: int) -> Any:
    """The mean of ``grad_fn(params, micro, key_i)`` over ``count`` micro-batches of ``examples``.

    Micro-batch i holds rows i, i + count, ... of every [B, ...] leaf (strided, so that with the
    batch sharded over devices in contiguous blocks, B / count a multiple of the device count,
    every device keeps its own rows), and ``key_i`` is ``fold_in(key, i)``. A ``lax.scan`` runs
    them, so one micro-batch's activations are alive at a time and the program holds one copy of
    the gradient whatever ``count``. (XLA:CPU runs that loop ~27x slower than straight-line
    code, but only the loop bounds the memory: unrolled, XLA:CPU kept the whole batch's; see the
    docs' performance page.) With ``count = 1``, ``grad_fn(params, examples, key)``.
    """
    if count == 1:
        return grad_fn(params, examples, key)
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, count, *x.shape[1:]), 0, 1),
                         examples)

    def body(total, index_and_micro):
        index, batch = index_and_micro
        part = grad_fn(params, batch, jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, total, part), None

    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), key)
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zero, (jnp.arange(count), micro))
    return jax.tree.map(lambda value: value / count, total)


def make_train_step(model: UNet, schedule: Schedule, optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
    """``train_step(state, batch, key) -> (state, metrics)``: one update and the EMA, unjitted.

    ``batch`` holds ``image`` [B, H, W, C] in [-1, 1] (and ``label`` [B] when conditional);
    ``key`` is the run's base key, folded with ``state.step`` inside. With
    ``training.grad_accum_steps = A`` the gradient is the mean of A micro-batches' gradients of
    B / A examples each (``accumulate_gradients``), before one optimizer and EMA update. Every
    example keeps the timestep, noise and label drop it gets in the whole batch, so A only
    changes float rounding (and the dropout masks, drawn per micro-batch).
    """
    d, tr = config.diffusion, config.training
    accum = tr.get("grad_accum_steps", 1)  # runs saved before the option existed: 1

    def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        loss_key, dropout_key, label_key = jax.random.split(step_key, 3)
        t, noise = losses.draw_t_and_noise(schedule, loss_key, batch["image"])
        examples = dict(image=batch["image"], t=t, noise=noise)
        if model.num_classes is not None:
            drop = jax.random.bernoulli(label_key, tr.label_dropout, batch["label"].shape)
            examples["label"] = jnp.where(drop, model.num_classes, batch["label"])

        def loss_fn(params, micro, dropout_key):
            denoise_fn = denoiser(model, params, micro.get("label"), train=True,
                                  rngs={"dropout": dropout_key})
            per_example = losses.training_loss_given(
                denoise_fn, schedule, micro["image"], micro["t"], micro["noise"],
                target=d.target, variance=d.variance, loss=d.loss, vlb_weight=d.vlb_weight,
                loss_weighting=d.loss_weighting, min_snr_gamma=d.min_snr_gamma)
            return jnp.mean(per_example)

        loss, grads = accumulate_gradients(jax.value_and_grad(loss_fn), state.params, examples,
                                           dropout_key, accum)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, tr.ema_decay, tr.ema_warmup)
        ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                                  state.ema_params, params)
        new_state = TrainState(step=state.step + 1, params=params, ema_params=ema_params,
                               opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``data`` over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A copy of ``tree`` on every device of ``mesh``, which may span processes; every process
    passes the same values."""
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), tree)


def sample_fn(model: UNet, schedule: Schedule, config: ml_collections.ConfigDict) -> Callable:
    """``fn(params, key, shape) -> images`` with the config's sampler settings; unjitted. A
    conditional model samples the classes in turn (``run_config.preview_labels``) with the config's
    ``guidance_scale``."""
    settings = run_config.sampling_settings(config)

    def fn(params, key, shape, **kw):
        if model.num_classes is None:
            denoise_fn = denoiser(model, params)
        else:
            denoise_fn = sampling.classifier_free_guidance(
                lambda x, t, y: model.apply({"params": params}, x, t, y),
                run_config.preview_labels(shape[0], model.num_classes),
                null_label=model.num_classes, guidance_scale=run_config.guidance_scale(config))
        return sampling.sample(denoise_fn, schedule, key, shape, **settings, **kw)

    return fn


def _restore_or_start(ckpt: Checkpointer, state: TrainState, workdir: epath.Path,
                      config: ml_collections.ConfigDict, source: data.ImageSource) -> TrainState:
    """The latest checkpoint (or ``state`` on a fresh run); only then, on process 0, the run's
    files (``run_config.write_run_files``), so a failed restore leaves them as they were."""
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    if jax.process_index() == 0:
        run_config.write_run_files(workdir, config, source.image_shape,
                                   class_names=source.class_names,
                                   fingerprint=source.fingerprint)
    return state


def save_preview(workdir: epath.Path, step: int, images: jax.Array) -> None:
    """Writes ``images`` [N, H, W, C] as the grid ``previews/step_<step>.png``."""
    (workdir / "previews").mkdir(parents=True, exist_ok=True)
    visualize.save_png(workdir / "previews" / f"step_{step}.png",
                       visualize.make_grid(visualize.to_uint8(np.asarray(images))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], *,
                       mesh: Mesh | None = None,
                       allow_config_changes: bool = False) -> TrainState:
    """Trains ``config`` in ``workdir`` (a local path or a ``gs://`` URI), resuming from its
    latest checkpoint.

    Writes ``config.json``, ``checkpoints/<step>``, ``metrics.jsonl``, ``tensorboard/`` and
    ``previews/step_<n>.png`` (process 0 only, except the checkpoints, which every process
    writes its share of). Returns the final state. On resume, ``config`` is compared with the
    saved ``config.json`` first (see ``check_resume_config``; ``allow_config_changes`` lets a
    changed training setup through, never a changed model, diffusion or image shape).

    Raises:
      ValueError: a bad or (on resume) refused config; nothing is written.
      checkpointing.CheckpointError: a checkpoint could not be restored or saved; names the step
        and the path, and the last complete checkpoint stays intact.
      FloatingPointError: the loss became non-finite; names the step and the last checkpoint,
        which stays intact.
      MemoryError: the accelerator ran out of memory; names the batch, image and model sizes.
    """
    mesh = data_mesh() if mesh is None else mesh
    run_config.validate(config, mesh)
    config = run_config.with_absolute_data_paths(config)
    workdir = checkpointing.as_path(workdir)
    tr = config.training
    d = config.data
    source = data.load_split(d.name, d.train_split, data_dir=d.data_dir,
                             **run_config.split_options(config))
    data.check_holds_a_batch(source, batch_size=tr.batch_size)
    run_config.check_num_classes(config, source)
    image_shape = source.image_shape
    resuming = bool(checkpointing.saved_steps(workdir / "checkpoints"))
    run_config.check_attention(config, image_shape[0], resuming=resuming)
    run_config.check_resume_config(workdir, config, run_config.source_facts(source),
                                   allow_config_changes=allow_config_changes)
    model = make_model(config, image_shape)
    schedule = make_schedule_from_config(config)
    optimizer = make_optimizer(config)
    replicated = NamedSharding(mesh, P())
    key = jax.random.key(config.seed)
    init_key, train_key, preview_key = jax.random.split(key, 3)

    # Keys are closed over rather than passed: every process holds the same constant, so no
    # host-local array enters a program that spans several processes.
    state = jax.jit(lambda: create_train_state(model, optimizer, init_key, image_shape),
                    out_shardings=replicated)()
    train_call = train_loop.make_train_call(make_train_step(model, schedule, optimizer, config),
                                            train_key, mesh)
    draw = sample_fn(model, schedule, config)
    preview_shape = (tr.num_preview_samples, *image_shape)
    preview = jax.jit(lambda params, step: draw(params, jax.random.fold_in(preview_key, step),
                                                preview_shape), out_shardings=replicated)
    is_chief = jax.process_index() == 0

    def write_preview(step: int, params: Any) -> None:
        images = preview(params, step)  # every process samples; process 0 writes
        if is_chief:
            save_preview(workdir, step, images)

    count_params = lambda: sum(x.size for x in jax.tree.leaves(state.params))
    with run_config.explain_out_of_memory(config, image_shape, count_params), \
            Checkpointer(workdir / "checkpoints", max_to_keep=tr.max_to_keep,
                         async_save=tr.async_checkpoints) as ckpt, \
            train_loop.StopRequested().installed() as stop:
        state = _restore_or_start(ckpt, state, workdir, config, source)
        start = int(state.step)
        writer = MetricWriter(workdir)
        batches = data.train_iterator(
            source, seed=config.seed, start_step=start, batch_size=tr.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            random_flip=config.data.random_flip)
        bar = tqdm(total=tr.num_steps, initial=start, disable=not is_chief, desc="train",
                   dynamic_ncols=True)
        try:
            state = _run_loop(state, train_call, batches, start=start, config=config, mesh=mesh,
                              ckpt=ckpt, stop=stop, writer=writer, bar=bar,
                              write_preview=write_preview)
        finally:
            bar.close()
            writer.close()
            batches.close()
    return state


def _run_loop(state: TrainState, train_call: Callable, batches, *, start: int,
              config: ml_collections.ConfigDict, mesh: Mesh, ckpt: Checkpointer,
              stop: train_loop.StopRequested, writer: MetricWriter, bar: tqdm,
              write_preview: Callable) -> TrainState:
    """Steps ``start + 1 .. num_steps`` in calls of K, logging, saving and previewing at the
    call boundaries that are multiples of their intervals; returns the last state.

    The host never waits for the devices between calls, except for the stop vote of the call
    before the one just dispatched (so one call is always queued), the metrics every
    ``log_every`` steps, and the finiteness check before each save.
    """
    tr = config.training
    k = tr.steps_per_call
    calls = train_loop.device_prefetch(batches, train_loop.stacked_sharding(mesh),
                                       steps_per_call=k)
    all_finite = jax.jit(train_loop.tree_all_finite)
    pending = train_loop.PendingMetrics()
    clock = (time.perf_counter(), start)
    previous_vote = None
    for step in range(start + k, tr.num_steps + 1, k):
        state, metrics, vote = train_call(state, next(calls),
                                          train_loop.stop_votes(mesh, stop.signal is not None))
        pending.append(step - k + 1, metrics)
        bar.update(k)
        # Every process reads the same agreed vote, one call late, and stops after this call.
        stopping = previous_vote is not None and bool(previous_vote)
        previous_vote = vote
        # A stop or the last step logs the steps since the last log: they never run again.
        if step % tr.log_every == 0 or step == tr.num_steps or stopping:
            clock = _log(pending, writer, bar, ckpt, step, clock)
        if step % tr.checkpoint_every == 0 or step == tr.num_steps or stopping:
            _raise_if_non_finite(pending, ckpt)
            if not all_finite(state):
                raise FloatingPointError(f"non-finite values in the train state at step {step}; "
                                         f"stopping. {_last_good(ckpt)}")
            ckpt.save(step, state, wait=step == tr.num_steps or stopping)
        if stopping:  # saved first: no preview can outlast a preemption's grace period
            bar.write(f"{stop.signal or 'a stop request on another process'}: saved step "
                      f"{step} to {ckpt.directory}; exiting")
            break
        if tr.sample_every and step % tr.sample_every == 0:
            write_preview(step, state.ema_params)
    return state


def _last_good(ckpt: Checkpointer) -> str:
    ckpt.wait_until_finished()
    return f"The last good checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is intact"


def _raise_if_non_finite(pending: train_loop.PendingMetrics,
                         ckpt: Checkpointer) -> dict[str, np.ndarray]:
    """Raises naming the first pending step whose loss was not finite; returns the pending
    metrics, fetched."""
    steps, metrics = pending.fetch()
    bad = np.flatnonzero(~np.isfinite(metrics.get("loss", np.zeros(0))))
    if bad.size:
        raise FloatingPointError(f"non-finite loss {metrics['loss'][bad[0]]} at step "
                                 f"{steps[bad[0]]}; stopping. {_last_good(ckpt)}")
    return metrics


def _log(pending: train_loop.PendingMetrics, writer: MetricWriter, bar: tqdm,
         ckpt: Checkpointer, step: int, clock: tuple[float, int]) -> tuple[float, int]:
    """Writes the pending steps' mean metrics and the step rate since ``clock`` (time, step);
    returns the new clock."""
    metrics = _raise_if_non_finite(pending, ckpt)
    pending.clear()
    now = time.perf_counter()
    means = {name: float(np.mean(values)) for name, values in metrics.items()}
    writer.write(step, {**means, "steps_per_sec": (step - clock[1]) / (now - clock[0])})
    bar.set_postfix(loss=f"{means['loss']:.4f}")
    return now, step

