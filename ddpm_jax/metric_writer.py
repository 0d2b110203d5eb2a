"""Scalar metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax

from ddpm_jax.checkpointing import as_path


class MetricWriter:
    """Appends ``{"step": s, name: value, ...}`` lines to ``workdir/metrics.jsonl`` and writes the
    same scalars as TensorBoard events under ``workdir/tensorboard``. Only process 0 writes.

    ``workdir`` may be a ``gs://`` URI: objects there cannot be appended to, so the JSONL file is
    then rewritten whole at each write (tensorboardX writes ``gs://`` itself)."""

    def __init__(self, workdir: str | os.PathLike[str]):
        self._active = jax.process_index() == 0
        if not self._active:
            return
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

        workdir = as_path(workdir)
        self._path = workdir / "metrics.jsonl"
        self._remote = "://" in os.fspath(workdir)
        if self._remote:
            self._text = self._path.read_text() if self._path.exists() else ""
        else:
            self._jsonl = self._path.open("a")
        self._tb = SummaryWriter(os.fspath(workdir / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._active:
            return
        line = json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n"
        if self._remote:
            self._text += line
            self._path.write_text(self._text)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), step)
        self._tb.flush()

    def close(self) -> None:
        if self._active:
            if not self._remote:
                self._jsonl.close()
            self._tb.close()
