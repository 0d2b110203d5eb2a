"""A thin wrapper over orbax's ``CheckpointManager``: atomic, multi-process-safe, always closed."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abstract_leaf(x) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding to restore into; unsharded templates (``jax.eval_shape``) go
    to the first local device, whatever devices wrote the checkpoint."""
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class Checkpointer:
    """Saves and restores a pytree train state under ``directory/<step>``.

    Orbax writes each step to a temporary directory and renames it when complete, so a save
    killed half-way never shadows the last good step. Use as a context manager (or call
    ``close``) so that asynchronous saves finish.
    """

    def __init__(self, directory: str, *, max_to_keep: int | None = None,
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, *, wait: bool = False) -> None:
        """Saves ``state`` as ``step``. With ``async_save``, returns once the values are copied
        off the devices (so ``state`` may then be donated) and writes them in the background,
        unless ``wait``; a previous save still in progress is finished first."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        if wait:
            self.wait_until_finished()

    def wait_until_finished(self) -> None:
        """Returns once every save started so far is complete on disk."""
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restores ``step`` (default: the latest) into the structure and shardings of ``template``.

        Raises:
          FileNotFoundError: no such checkpoint, naming the directory and the steps it holds.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}")
        abstract = jax.tree.map(_abstract_leaf, template)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
