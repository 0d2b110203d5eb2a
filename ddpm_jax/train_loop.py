"""What keeps an accelerator busy in a training loop: several steps per call, batches on the
devices ahead of time, metrics left on the devices, and a stop request all processes agree on.

Needs only jax and numpy, so the GPU benchmark times the same pieces ``train_lib`` runs.
"""

from __future__ import annotations

import collections
import contextlib
import signal
from collections.abc import Iterator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_multi_step(train_step: Callable) -> Callable:
    """``multi_step(state, batches, key) -> (state, metrics)``: ``train_step`` over K batches.

    ``batches`` holds ``train_step``'s batch with a leading axis of K (e.g. ``image`` [K, B, H,
    W, C]); ``metrics`` gets the same leading axis. One jitted call makes K updates; each step
    folds ``state.step`` into ``key`` as a single call would. The K steps are unrolled (a Python
    loop under the caller's jit, K copies of the step in the program), not a rolled
    ``lax.scan``: XLA:CPU runs the step's convolution gradients ~20-30x slower inside a loop
    body (benchmarks/scan_unroll_repro.py), while straight-line code lets it schedule across
    steps. Compile time grows with K. Unjitted.
    """
    def multi_step(state, batches: dict[str, jax.Array], key: jax.Array):
        steps = jax.tree.leaves(batches)[0].shape[0]
        metrics = []
        for i in range(steps):
            state, step_metrics = train_step(state, jax.tree.map(lambda x: x[i], batches), key)
            metrics.append(step_metrics)
        return state, jax.tree.map(lambda *values: jnp.stack(values), *metrics)

    return multi_step


def stacked_sharding(mesh: Mesh) -> NamedSharding:
    """K stacked global batches [K, B, ...]: the batch axis over the mesh's ``data`` axis."""
    return NamedSharding(mesh, P(None, "data"))


def device_prefetch(batches: Iterator[dict[str, np.ndarray]], sharding: NamedSharding, *,
                    steps_per_call: int, depth: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Stacks ``steps_per_call`` consecutive process-local batches and puts them on the devices,
    ``depth`` calls ahead: the transfer of the next call's batches overlaps the current call.

    Args:
      batches: this process's rows of each global batch, ``{name: [B / P, ...]}``, in step order.
      sharding: of the stacked global arrays [K, B, ...] (``stacked_sharding``).
      steps_per_call: K.
      depth: calls whose batches are on the devices before they are needed, >= 1.

    Returns:
      An endless iterator of ``{name: [K, B, ...]}`` global arrays.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")

    def put() -> dict[str, jax.Array]:
        local = [next(batches) for _ in range(steps_per_call)]
        return {name: jax.make_array_from_process_local_data(
                    sharding, np.stack([batch[name] for batch in local]))
                for name in local[0]}

    ready = collections.deque(put() for _ in range(depth))
    while True:
        yield ready.popleft()
        ready.append(put())


def stop_votes(mesh: Mesh, requested: bool) -> jax.Array:
    """bool [mesh.size]: this process's stop request on each of its devices. ``jnp.any`` of it
    inside a jitted call is the same value on every process, so all of them stop together."""
    sharding = NamedSharding(mesh, P("data"))
    local = np.full(len(sharding.addressable_devices), requested)
    return jax.make_array_from_process_local_data(sharding, local)


def make_train_call(train_step: Callable, key: jax.Array, mesh: Mesh) -> Callable:
    """The loop's one jitted program: ``call(state, batches, votes) -> (state, metrics, stop)``.

    K = ``batches``' leading axis updates of ``train_step`` with base ``key`` (closed over: every
    process holds the same constant, so no host-local array enters a program that spans several
    processes); ``metrics`` are [K] per name; ``stop`` is whether any process voted to stop
    (``stop_votes``). The state is donated.
    """
    replicated = NamedSharding(mesh, P())
    multi_step = make_multi_step(train_step)

    def call(state, batches, votes):
        state, metrics = multi_step(state, batches, key)
        return state, metrics, jnp.any(votes)

    return jax.jit(call, in_shardings=(replicated, stacked_sharding(mesh),
                                       NamedSharding(mesh, P("data"))),
                   out_shardings=replicated, donate_argnums=0)


def tree_all_finite(tree: Any) -> jax.Array:
    """A bool scalar: whether every floating-point value in ``tree`` is finite. Jit it."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class PendingMetrics:
    """The metrics of the calls since the last log, left on the devices until fetched."""

    def __init__(self):
        self._calls: list[tuple[int, dict[str, jax.Array]]] = []

    def append(self, first_step: int, metrics: dict[str, jax.Array]) -> None:
        """Records one call's metrics ``{name: [K]}``, whose first step is ``first_step``."""
        self._calls.append((first_step, metrics))

    def fetch(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(steps [n], {name: [n]}) of every pending step, in order; waits for the devices."""
        fetched = jax.device_get([metrics for _, metrics in self._calls])
        steps = [np.arange(first, first + len(next(iter(m.values()))))
                 for (first, _), m in zip(self._calls, fetched)]
        names = fetched[0].keys() if fetched else ()
        return (np.concatenate(steps) if steps else np.zeros(0, int),
                {name: np.concatenate([m[name] for m in fetched]) for name in names})

    def clear(self) -> None:
        self._calls = []


class StopRequested:
    """Records SIGINT / SIGTERM so the loop can checkpoint and return cleanly."""

    def __init__(self):
        self.signal = None

    @contextlib.contextmanager
    def installed(self):
        handler = lambda signum, frame: setattr(self, "signal", signal.Signals(signum).name)
        try:
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals stay with the caller
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
