"""A thin wrapper over orbax's ``CheckpointManager``: atomic, multi-process-safe, always closed.

Directories go through ``etils.epath`` (as in orbax), so ``gs://bucket/run/checkpoints`` stays a
bucket path and a local path is made absolute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import types
from typing import Any, Iterator

from absl import logging as absl_logging
import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(OSError):
    """A checkpoint could not be saved or restored; the message names the step and the path."""


def as_path(path: str | os.PathLike[str]) -> epath.Path:
    """``path`` as an ``epath.Path``: URIs (``gs://...``) unchanged, local paths made absolute."""
    path = epath.Path(path)
    return path if "://" in os.fspath(path) else epath.Path(os.path.abspath(path))


def check_max_to_keep(max_to_keep: int | None) -> None:
    """Raises a one-line error unless ``max_to_keep`` is None (keep all) or >= 1."""
    if max_to_keep is not None and max_to_keep < 1:
        raise ValueError(f"max_to_keep must be >= 1, or None to keep every checkpoint; got "
                         f"{max_to_keep} (orbax would delete every checkpoint)")


def saved_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The complete checkpoints' steps under ``directory``, read without creating anything."""
    path = as_path(directory)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _abstract_leaf(x) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding to restore into; unsharded templates (``jax.eval_shape``) go
    to the first local device, whatever devices wrote the checkpoint."""
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _first_line(error: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message`` of the error's root cause (orbax wraps tensorstore's
    precise error in a generic one), cut to ``limit`` characters."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return f"{type(error).__name__}: {line if len(line) <= limit else line[:limit] + '...'}"


# orbax's wrapper of a failed array read, and tensorstore's own read errors ("OUT_OF_RANGE: ...").
_READ_ERROR = re.compile(
    r"Encountered error while reading array index|[A-Z_]+: Error (reading|opening)")


def _is_read_after_a_failed_restore(error: BaseException | None,
                                    trace: types.TracebackType | None = None) -> bool:
    """Whether ``error`` is the echo of a restore that has already failed.

    When one array cannot be read, orbax raises that error and closes its event loop while
    tensorstore still finishes the other reads. Each of those then surfaces once more, after the
    real error: as ``RuntimeError('Event loop is closed')`` from ``call_soon_threadsafe``; as a
    read coroutine that turns its closing into orbax's ``Exception('Encountered error while
    reading array index ...')``; or as asyncio's "exception was never retrieved" for a task or
    future holding a read error. A restore that succeeds produces none of these.
    """
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
            and trace is not None and trace.tb_frame.f_code.co_name == "_check_closed"):
        return True
    while error is not None:
        if _READ_ERROR.match(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _keep_record(record: logging.LogRecord) -> bool:
    """The ``asyncio`` logger's filter: False for a failed restore's unretrieved read errors."""
    error = record.exc_info[1] if record.exc_info else None
    first_line = str(record.msg).split("\n", 1)[0]
    return not (first_line.endswith("exception was never retrieved")
                and _is_read_after_a_failed_restore(error))


def _silence_reads_after_a_failed_restore() -> None:
    """Drops the echoes of a failed restore (see ``_is_read_after_a_failed_restore``), which
    would otherwise print tracebacks after its one-line error, at any time until the process
    exits; passes everything else on. Installed once, before the first restore: the echoes can
    come while orbax is still unwinding."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_reads_after_a_failed_restore", False):
        return

    def hook(unraisable):
        if not _is_read_after_a_failed_restore(unraisable.exc_value, unraisable.exc_traceback):
            previous(unraisable)

    hook.drops_reads_after_a_failed_restore = True
    sys.unraisablehook = hook
    asyncio_logger = logging.getLogger("asyncio")
    if _keep_record not in asyncio_logger.filters:
        asyncio_logger.addFilter(_keep_record)


@contextlib.contextmanager
def _without_read_only_notice() -> Iterator[None]:
    """Drops orbax's warning that a read-only manager's directory is read only, which it logs
    whenever one is opened (sample.py, evaluate.py): we asked for read-only."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")

    logger = absl_logging.get_absl_logger()
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class Checkpointer:
    """Saves and restores a pytree train state under ``directory/<step>``.

    Orbax writes each step to a temporary directory and renames it when complete, so a save
    killed half-way never shadows the last good step; such leftovers
    (``<step>.orbax-checkpoint-tmp-*``) are deleted on opening for writing, complete steps never.
    ``read_only=True`` (sampling, evaluation, export) creates, deletes and cleans up nothing, so
    it is safe beside a ``train.py`` that is saving. Use as a context manager (or call ``close``)
    so that asynchronous saves finish. Failures raise ``CheckpointError`` naming the step and
    the path.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int | None = None,
                 async_save: bool = True, read_only: bool = False):
        check_max_to_keep(max_to_keep)
        self.directory = as_path(directory)
        # Read-only: no saves (interval 0) and nothing deleted (max_to_keep None), stated here
        # so orbax does not warn that it changed them.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep, create=not read_only,
            cleanup_tmp_directories=not read_only, read_only=read_only,
            save_interval_steps=0 if read_only else 1, enable_async_checkpointing=async_save)
        with _without_read_only_notice():
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending_step = None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _save_failed(self, step: int, error: BaseException) -> CheckpointError:
        return CheckpointError(
            f"could not save step {step} to {self.directory / str(step)} ({_first_line(error)}); "
            f"the last complete checkpoint, step {self.latest_step()}, is intact")

    def save(self, step: int, state: Any, *, wait: bool = False) -> None:
        """Saves ``state`` as ``step``. With ``async_save``, returns once the values are copied
        off the devices (so ``state`` may then be donated) and writes them in the background,
        unless ``wait``; a previous save still in progress is finished first.

        Raises:
          CheckpointError: this save, or the previous asynchronous one, failed.
        """
        self.wait_until_finished()
        self._pending_step = step
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        except Exception as e:  # noqa: BLE001 -- orbax re-raises the writer's error as is
            raise self._save_failed(step, e) from e
        if wait:
            self.wait_until_finished()

    def wait_until_finished(self) -> None:
        """Returns once every save started so far is complete on disk.

        Raises:
          CheckpointError: the pending asynchronous save failed.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(self._pending_step, e) from e

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restores ``step`` (default: the latest) into the structure and shardings of ``template``.

        Raises:
          FileNotFoundError: no such checkpoint, naming the directory and the steps it holds.
          CheckpointError: the step's files are unreadable (truncated, metadata missing, or a
            different structure), naming the step, its path and the other steps.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}")
        abstract = jax.tree.map(_abstract_leaf, template)
        _silence_reads_after_a_failed_restore()
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 -- orbax and tensorstore raise many types
            others = [s for s in steps if s != step]
            raise CheckpointError(
                f"checkpoint step {step} at {self.directory / str(step)} cannot be restored "
                f"({_first_line(e)}); other steps: {others} (choose one with sample.py --step, "
                f"or move this step's directory away to resume training from the latest "
                f"other)") from e

    def close(self) -> None:
        """Waits for a pending save, then closes the manager.

        Raises:
          CheckpointError: the pending asynchronous save failed.
        """
        try:
            self.wait_until_finished()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
