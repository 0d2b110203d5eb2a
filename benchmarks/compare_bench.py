"""Job: our training step and forward pass against diffusers', alternating in one process.

Run by ``run.py --compare diffusers`` as ``python benchmarks/compare_bench.py PARAMS_JSON
OUT_PATH``. The load of a shared machine drifts by tens of percent within minutes, so the two
frameworks are not timed one after the other: each repeat times a JAX call and then the same
work in PyTorch (or the other way round, every other repeat), and each ratio is the median over
repeats of theirs / ours within a pair. The two never run at the same time; each uses every core.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import jax

from common import job_main, timed
from jax_bench import compile_forward, compile_train_step, setup
from torch_bench import diffusers_steps


def paired(ours: Callable[[], None], theirs: Callable[[], None], *, warmup: int,
           repeats: int) -> dict[str, float]:
    """Median seconds of each and the median, min and max of the per-pair ratio theirs / ours.

    Which of the two goes first alternates, so neither always follows the other's tail.
    """
    for _ in range(warmup):
        ours()
        theirs()
    pairs = []
    for i in range(repeats):
        if i % 2:
            t, o = timed(theirs)[1], timed(ours)[1]
        else:
            o, t = timed(ours)[1], timed(theirs)[1]
        pairs.append((o, t))
    ratios = [t / o for o, t in pairs]
    return dict(ours_s=statistics.median(o for o, _ in pairs),
                theirs_s=statistics.median(t for _, t in pairs),
                ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))


def measure(*, config: str, batch_size: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Paired float32 timings of ``config`` at ``batch_size``: training step and forward pass."""
    s = setup(config, batch_size, "float32")
    theirs = diffusers_steps(config, batch_size)
    train, _, _ = compile_train_step(s)
    forward, _, _ = compile_forward(s)
    return dict(params=sum(p.size for p in jax.tree.leaves(s.params)),
                diffusers_params=theirs.params, torch=theirs.torch_version,
                threads=theirs.threads,
                train=paired(train, theirs.train_step, warmup=warmup, repeats=repeats),
                forward=paired(forward, theirs.forward, warmup=warmup, repeats=repeats))


if __name__ == "__main__":
    job_main(measure)
