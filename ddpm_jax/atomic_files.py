"""Files written whole or not at all: a unique temporary name beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import IO, Iterator

from etils import epath


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yields a binary file that replaces ``path`` when the block ends without an error.

    The bytes go to ``.<name>.<random>.partial`` beside ``path``, renamed over it at the end
    (atomic on one filesystem) or deleted on an error: readers see the old file or the whole
    new one, never a part, and processes writing the same file at once each rename a complete
    one. ``path`` may be an ``etils.epath`` URI (``gs://...``), whose objects appear whole.
    """
    path = epath.Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with partial.open("wb") as f:
            yield f
        partial.replace(path)
    finally:
        if partial.exists():
            partial.unlink()
