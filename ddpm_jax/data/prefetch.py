"""Background prefetch: any iterable consumed on a thread, a bounded number of items ahead."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import queue
import threading
from typing import Any, TypeVar
import weakref

T = TypeVar("T")


def prefetch_in_background(items: Iterable[T], *, size: int) -> Iterator[T]:
    """Iterates over ``items`` on a background thread, up to ``size`` items ahead.

    The thread starts at once and stops when the returned iterator is exhausted, closed or
    garbage-collected. An exception raised by ``items`` reaches the consumer.

    Args:
        items: any iterable; only the background thread touches it.
        size: how many items may wait, >= 1.

    Returns:
        An iterator over the same items, in order.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
            put((True, None))
        except Exception as err:  # pylint: disable=broad-except  # raised again by consume()
            put((True, err))

    def consume() -> Iterator[T]:
        try:
            while True:
                done, item = ready.get()
                if done:
                    if item is not None:
                        raise item
                    return
                yield item
        finally:
            stop.set()

    threading.Thread(target=produce, daemon=True).start()
    iterator = consume()
    weakref.finalize(iterator, stop.set)
    return iterator
