"""Scalar metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax


class MetricWriter:
    """Appends ``{"step": s, name: value, ...}`` lines to ``workdir/metrics.jsonl`` and writes the
    same scalars as TensorBoard events under ``workdir/tensorboard``. Only process 0 writes."""

    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        if not self._active:
            return
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._active:
            return
        self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), step)
        self._tb.flush()

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()
