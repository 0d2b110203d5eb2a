"""A run's configuration: the checks made before anything is written, and the run files.

``validate`` (settings that cannot run on the mesh), ``check_labels`` (the model's classes against
the data's), ``check_resume_config`` (what a resumed run may change), ``split_options`` (the data
arguments a config fixes) and ``config.json`` / ``image_shape.json``, which describe a workdir's
checkpoints to every later reader (``generate``, ``evaluate.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from etils import epath
from jax.sharding import Mesh

from ddpm_jax import checkpointing, data

CONFIG_FILE = "config.json"
IMAGE_SHAPE_FILE = "image_shape.json"  # beside config.json: the [H, W, C] the model was trained on

# On resume, changes under these keys would make the checkpoints mean something else: refused.
MEANING_KEYS = ("model.", "diffusion.", "data.image_size", "image_shape")
# How long to run and what to log or keep: free to change on resume (extending a run is the
# ordinary restart). Any other change needs ``allow_config_changes``.
BOOKKEEPING_KEYS = ("training.num_steps", "training.log_every", "training.checkpoint_every",
                    "training.sample_every", "training.num_preview_samples",
                    "training.max_to_keep", "training.steps_per_call",
                    "training.async_checkpoints", "sampling.", "data.data_dir", "data.cache_dir")


def read_image_shape(workdir: str | os.PathLike[str]) -> tuple[int, int, int]:
    return tuple(json.loads((checkpointing.as_path(workdir) / IMAGE_SHAPE_FILE).read_text()))


def write_run_files(workdir: epath.Path, config: ml_collections.ConfigDict,
                    image_shape: tuple[int, int, int]) -> None:
    """Writes ``config.json`` and ``image_shape.json``, which describe the run's checkpoints."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
    (workdir / IMAGE_SHAPE_FILE).write_text(json.dumps(list(image_shape)))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def config_changes(workdir: epath.Path, config: ml_collections.ConfigDict,
                   image_shape: tuple[int, int, int]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, new)}`` for each setting (and ``image_shape``) that differs from the
    workdir's ``config.json``; empty when there is nothing saved to compare with."""
    if not (workdir / CONFIG_FILE).exists():
        return {}
    saved = _flatten(json.loads((workdir / CONFIG_FILE).read_text()))
    saved["image_shape"] = list(read_image_shape(workdir))
    new = _flatten(json.loads(config.to_json_best_effort()))
    new["image_shape"] = list(image_shape)
    absent = "<absent>"
    return {k: (saved.get(k, absent), new.get(k, absent)) for k in sorted(saved.keys() | new.keys())
            if saved.get(k, absent) != new.get(k, absent)}


def check_resume_config(workdir: epath.Path, config: ml_collections.ConfigDict,
                        image_shape: tuple[int, int, int], *,
                        allow_config_changes: bool = False) -> None:
    """Raises a one-line ValueError, before anything is written, when ``workdir`` holds
    checkpoints of a config that differs from ``config`` in a way that is not allowed:
    ``MEANING_KEYS`` always, any other key but ``BOOKKEEPING_KEYS`` unless
    ``allow_config_changes``; or whose latest step is not a multiple of
    ``training.steps_per_call``."""
    steps = checkpointing.saved_steps(workdir / "checkpoints")
    if not steps:
        return
    if steps[-1] % config.training.steps_per_call:
        raise ValueError(f"the checkpoint's step {steps[-1]} is not a multiple of "
                         f"training.steps_per_call={config.training.steps_per_call}; resume with "
                         "a steps_per_call that divides it")
    changes = config_changes(workdir, config, image_shape)
    describe = lambda keys: ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)
    refused = [k for k in changes if k.startswith(MEANING_KEYS)]
    if refused:
        raise ValueError(f"{workdir} holds checkpoints of another model or diffusion; changed: "
                         f"{describe(refused)}. Use a new workdir")
    flagged = [k for k in changes if not k.startswith(BOOKKEEPING_KEYS)]
    if flagged and not allow_config_changes:
        raise ValueError(f"resuming {workdir} with a changed training setup: {describe(flagged)}. "
                         f"Pass --allow_config_changes to resume with it")


def check_labels(config: ml_collections.ConfigDict, source: data.ImageSource) -> None:
    """Raises a one-line error when ``config.model.num_classes`` is not the dataset's."""
    wanted = config.model.num_classes
    if wanted is not None and wanted != source.num_classes:
        has = "no labels" if source.num_classes is None else f"{source.num_classes} classes"
        raise ValueError(f"config.model.num_classes={wanted} but the {source.description} "
                         f"has {has}")


def validate(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Raises a one-line error for settings that cannot run on ``mesh``."""
    tr = config.training
    batch, devices = tr.batch_size, mesh.size
    if batch < 1 or batch % devices:
        raise ValueError(f"training.batch_size={batch} must be a positive multiple of the "
                         f"device count {devices}")
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
