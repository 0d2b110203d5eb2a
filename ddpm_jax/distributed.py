"""Multi-process start-up on JAX's own distributed runtime, for the command-line programs.

Single-process use needs nothing. ``--distributed`` lets ``jax.distributed.initialize()`` detect
its settings (TPU pod slices, SLURM, Open MPI); ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) set them.
"""

import os

import jax
from absl import flags

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Initialise jax.distributed, detecting the cluster's settings.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0's coordinator; implies --distributed.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds without a heartbeat after which the other processes stop "
    "with an error instead of waiting for a dead peer.")


def _from_env(value, name):
    return value if value is not None else (int(os.environ[name]) if name in os.environ else None)


def initialize_from_flags() -> None:
    """Calls ``jax.distributed.initialize`` when the flags or environment ask for it."""
    if not (_DISTRIBUTED.value or _COORDINATOR.value):
        return
    # CPU processes exchange data through gloo; accelerators use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_from_env(_NUM_PROCESSES.value, "JAX_NUM_PROCESSES"),
        process_id=_from_env(_PROCESS_ID.value, "JAX_PROCESS_ID"),
        heartbeat_timeout_seconds=_HEARTBEAT.value)
