"""A run's configuration: the checks made before anything is written, and the run files.

``validate`` (settings that cannot run on the mesh), ``check_num_classes`` (the model's classes
against the data's), ``check_attention`` (attention levels that exist), ``check_resume_config``
(what a resumed run may change, its data included), ``split_options`` (the data arguments a config
fixes), ``with_absolute_data_paths``, ``sampling_settings`` / ``guidance_scale`` /
``preview_labels`` (how a run samples), and ``config.json`` / ``image_shape.json`` / ``data.json``,
which describe a workdir's checkpoints to every later reader (``generate``, ``evaluate.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from ddpm_jax import checkpointing, data

CONFIG_FILE = "config.json"
IMAGE_SHAPE_FILE = "image_shape.json"  # beside config.json: the [H, W, C] the model was trained on
DATA_FILE = "data.json"  # beside config.json: what identifies the training examples (folders)
# config.data's paths: stored absolute, so a later reader in another directory finds the data.
DATA_PATH_KEYS = ("data_dir", "path", "cache_dir")

# On resume, changes under these keys would make the checkpoints mean something else: refused.
MEANING_KEYS = ("model.", "diffusion.", "data.image_size", "image_shape", "class_names")
# How long to run and what to log or keep: free to change on resume (extending a run is the
# ordinary restart). Any other change needs ``allow_config_changes``.
BOOKKEEPING_KEYS = ("training.num_steps", "training.log_every", "training.checkpoint_every",
                    "training.sample_every", "training.num_preview_samples",
                    "training.max_to_keep", "training.steps_per_call", "training.grad_accum_steps",
                    "training.async_checkpoints", "sampling.", "data.data_dir", "data.cache_dir")


def read_image_shape(workdir: str | os.PathLike[str]) -> tuple[int, int, int]:
    return tuple(json.loads((checkpointing.as_path(workdir) / IMAGE_SHAPE_FILE).read_text()))


def write_run_files(workdir: epath.Path, config: ml_collections.ConfigDict,
                    image_shape: tuple[int, int, int], *, class_names: list[str] | None = None,
                    fingerprint: str | None = None) -> None:
    """Writes ``config.json`` and ``image_shape.json``, which describe the run's checkpoints,
    and, when given, ``labels.json`` (``class_names``) and ``data.json`` (the data source's
    ``fingerprint``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    (workdir / IMAGE_SHAPE_FILE).write_text(json.dumps(list(image_shape)))
    if class_names is not None:
        data.write_class_names(workdir, class_names)
    if fingerprint is not None:
        (workdir / DATA_FILE).write_text(json.dumps({"fingerprint": fingerprint}))


def with_absolute_data_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``data.data_dir``, ``data.path`` and ``data.cache_dir`` are
    absolute (``~`` expanded; ``gs://`` URIs unchanged), and None (the default) where empty, so
    ``config.json`` names the same data from any working directory."""
    config = config.copy_and_resolve_references()
    for key in DATA_PATH_KEYS:
        if key in config.data:  # runs saved before a key existed lack it
            value = config.data[key]
            config.data[key] = (os.fspath(checkpointing.as_path(os.path.expanduser(value)))
                                if value else None)
    return config


def source_facts(source: data.ImageSource) -> dict[str, Any]:
    """What a run records about its training data besides the config: ``image_shape``, and
    ``class_names`` and the data's ``fingerprint`` where the source has them."""
    facts = {"image_shape": list(source.image_shape)}
    if source.class_names is not None:
        facts["class_names"] = list(source.class_names)
    if source.fingerprint is not None:
        facts["data.fingerprint"] = source.fingerprint
    return facts


def _saved_facts(workdir: epath.Path) -> dict[str, Any]:
    """``source_facts`` as the workdir's run files recorded them (runs saved before
    ``data.json`` or ``labels.json`` existed lack those)."""
    facts = {"image_shape": list(read_image_shape(workdir))}
    class_names = data.read_class_names(workdir)
    if class_names is not None:
        facts["class_names"] = class_names
    if (workdir / DATA_FILE).exists():
        facts["data.fingerprint"] = json.loads((workdir / DATA_FILE).read_text())["fingerprint"]
    return facts


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def config_changes(workdir: epath.Path, config: ml_collections.ConfigDict,
                   facts: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, new)}`` for each setting that differs from the workdir's ``config.json``,
    and each of ``facts`` (``source_facts``) that differs from what the run files recorded;
    empty when there is nothing saved to compare with."""
    if not (workdir / CONFIG_FILE).exists():
        return {}
    saved_facts = _saved_facts(workdir)
    saved = {**_flatten(json.loads((workdir / CONFIG_FILE).read_text())), **saved_facts}
    # A fact the run did not record (saved before its file existed) is not compared.
    new = {**_flatten(json.loads(config.to_json_best_effort())),
           **{k: v for k, v in facts.items() if k in saved_facts}}
    absent = "<absent>"
    return {k: (saved.get(k, absent), new.get(k, absent)) for k in sorted(saved.keys() | new.keys())
            if saved.get(k, absent) != new.get(k, absent)}


def check_resume_config(workdir: epath.Path, config: ml_collections.ConfigDict,
                        facts: dict[str, Any], *, allow_config_changes: bool = False) -> None:
    """Raises a one-line ValueError, before anything is written, when ``workdir`` holds
    checkpoints of a config or data (``facts``: ``source_facts``) that differs from ``config``
    in a way that is not allowed: ``MEANING_KEYS`` (the model, the diffusion, the image shape, the
    class names) always, any other key (a changed folder listing too) but ``BOOKKEEPING_KEYS``
    unless ``allow_config_changes``; or whose latest step is not a multiple of
    ``training.steps_per_call``."""
    steps = checkpointing.saved_steps(workdir / "checkpoints")
    if not steps:
        return
    if steps[-1] % config.training.steps_per_call:
        raise ValueError(f"the checkpoint's step {steps[-1]} is not a multiple of "
                         f"training.steps_per_call={config.training.steps_per_call}; resume with "
                         "a steps_per_call that divides it")
    changes = config_changes(workdir, config, facts)
    describe = lambda keys: ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)
    refused = [k for k in changes if k.startswith(MEANING_KEYS)]
    if refused:
        raise ValueError(f"{workdir} holds checkpoints of another model, diffusion or classes; "
                         f"changed: {describe(refused)}. Use a new workdir")
    flagged = [k for k in changes if not k.startswith(BOOKKEEPING_KEYS)]
    if flagged and not allow_config_changes:
        raise ValueError(f"resuming {workdir} with a changed training setup: {describe(flagged)}. "
                         f"Pass --allow_config_changes to resume with it")


def check_num_classes(config: ml_collections.ConfigDict,
                      source: data.ImageSource) -> None:
    """Raises a one-line error when ``config.model.num_classes`` is not the dataset's, or when
    folder labels (``data.labels_from_subdirs``) would train an unconditional model."""
    wanted = config.model.num_classes
    if wanted is None and config.data.get("labels_from_subdirs") and source.num_classes:
        raise ValueError(f"data.labels_from_subdirs=True gives K={source.num_classes} classes "
                         f"but config.model.num_classes is None (an unconditional model); pass "
                         f"--config.model.num_classes={source.num_classes}, or drop "
                         "labels_from_subdirs")
    if wanted is not None and wanted != source.num_classes:
        has = "no labels" if source.num_classes is None else f"{source.num_classes} classes"
        raise ValueError(f"config.model.num_classes={wanted} but the {source.description} "
                         f"has {has}")


def feature_map_heights(config: ml_collections.ConfigDict, image_size: int) -> list[int]:
    """The U-Net's feature-map height at each level, for images of ``image_size`` pixels: a
    stride-2 convolution rounds odd heights up, average pooling rounds them down."""
    heights = [image_size]
    for _ in config.model.channel_mults[1:]:
        half = heights[-1] / 2
        heights.append(math.ceil(half) if config.model.resample_with_conv else math.floor(half))
    return heights


def check_attention(config: ml_collections.ConfigDict, image_size: int, *,
                    resuming: bool) -> None:
    """Raises a one-line error (a warning when ``resuming``: the checkpoints' model is fixed)
    when an entry of ``model.attn_resolutions`` is no feature-map height at ``image_size``,
    where the U-Net would silently add no attention for it."""
    heights = feature_map_heights(config, image_size)
    unmatched = [r for r in config.model.attn_resolutions if r not in heights]
    if not unmatched:
        return
    message = (f"model.attn_resolutions={tuple(config.model.attn_resolutions)}: {unmatched} "
               f"match no feature-map height of the U-Net at {image_size}x{image_size} "
               f"(heights {heights}), so they would add no attention")
    if resuming:
        logging.warning("%s; resuming the run as it was trained", message)
        return
    raise ValueError(f"{message}; use heights from that list, or () for none")


def validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Raises a one-line error for settings that cannot run on ``mesh``."""
    tr = config.training
    batch, devices = tr.batch_size, mesh.size
    if batch < 1 or batch % devices:
        raise ValueError(f"training.batch_size={batch} must be a positive multiple of the "
                         f"device count {devices}")
    accum = tr.get("grad_accum_steps", 1)
    if accum < 1:
        raise ValueError(f"training.grad_accum_steps must be >= 1, got {accum}")
    if batch % (accum * devices):
        raise ValueError(f"training.batch_size={batch} must be a multiple of "
                         f"training.grad_accum_steps={accum} times the device count {devices} "
                         f"(each micro-batch is split over the devices)")
    for name in ("num_steps", "log_every", "checkpoint_every", "steps_per_call"):
        if tr[name] < 1:
            raise ValueError(f"training.{name} must be >= 1, got {tr[name]}")
    if tr.sample_every < 0:
        raise ValueError(f"training.sample_every must be >= 0, got {tr.sample_every}")
    for name in ("num_steps", "log_every", "checkpoint_every", "sample_every"):
        if tr[name] % tr.steps_per_call:
            raise ValueError(f"training.{name}={tr[name]} must be a multiple of "
                             f"training.steps_per_call={tr.steps_per_call}")
    checkpointing.check_max_to_keep(tr.max_to_keep)


def split_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``data.load_split``'s arguments besides the name, split and data dir, from ``config.data``:
    the image size and a folder's path and preparation settings (None where a run saved before
    they existed lacks them)."""
    return {key: config.data.get(key) for key in (
        "image_size", "path", "channels", "labels_from_subdirs", "cache_dir", "skip_bad_images")}


@contextlib.contextmanager
def explain_out_of_memory(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int],
                          count_params: Callable[[], int]) -> Iterator[None]:
    """Turns XLA's out-of-memory error (``RESOURCE_EXHAUSTED``, at compile or at a step) inside
    the block into a one-line ``MemoryError`` naming the batch, image and model sizes (the
    parameter count from ``count_params``) and what to lower."""
    try:
        yield
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        m, tr = config.model, config.training
        raise MemoryError(
            f"out of accelerator memory (RESOURCE_EXHAUSTED) training a U-Net of "
            f"{count_params():,} parameters (model.base_channels={m.base_channels}, "
            f"channel_mults={tuple(m.channel_mults)}, num_res_blocks={m.num_res_blocks}) on "
            f"training.batch_size={tr.batch_size} images of {'x'.join(map(str, image_shape))} "
            f"(previews: training.num_preview_samples={tr.num_preview_samples}); lower the batch "
            "size, data.image_size or the model's size (configs/folder.py is sized for one GPU "
            "or a CPU)") from None


def sampling_settings(config: ml_collections.ConfigDict, **overrides) -> dict[str, Any]:
    """The keyword arguments of ``sampling.sample`` that a run's config fixes: its ``sampling``
    block (``spacing`` 'time' for runs saved before it existed; ``guidance_scale`` is not one of
    them: see ``guidance_scale``) with the diffusion's ``variance`` and ``target``; ``overrides``
    that are not None replace them."""
    settings = {"spacing": "time", **config.sampling.to_dict(),
                "variance": config.diffusion.variance, "target": config.diffusion.target}
    settings.pop("guidance_scale", None)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def guidance_scale(config: ml_collections.ConfigDict) -> float:
    """``sampling.guidance_scale`` of a conditional run (1, plain conditional sampling, for runs
    saved before it existed)."""
    return config.sampling.get("guidance_scale", 1.0)


def preview_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """int32 [num_samples]: 0, 1, ..., K-1, 0, 1, ...: a preview shows every class in turn."""
    return np.arange(num_samples, dtype=np.int32) % num_classes
