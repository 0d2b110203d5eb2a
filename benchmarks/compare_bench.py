"""Job: our training step and forward pass against diffusers', alternating in one process.

Run by ``run.py --compare diffusers`` as ``python benchmarks/compare_bench.py PARAMS_JSON
OUT_PATH``. The load of a shared machine drifts by tens of percent within minutes, so the two
frameworks are not timed one after the other: each repeat times a JAX call and then the same
work in PyTorch (or the other way round, every other repeat), and each ratio is the median over
repeats of theirs / ours within a pair. The two never run at the same time; each uses every core.

Beside the step (L_simple, as in ``jax_bench``): ours with K steps in one jitted call
(``steps_per_call``, as ``train.py``'s loop runs them) against K of theirs; and with ``parts``
the table of the step's parts: the demo's step (Min-SNR-5 weighting, clipped Adam, EMA, drawn t
and noise, state donated) and the same with one part taken out (``PARTS``), both frameworks.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import jax
import optax

from common import LEARNING_RATE, job_main, timed
from jax_bench import compile_forward, compile_multi_step, compile_train_step, setup
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


# The demo's step, then one part out at a time: (name, jax_bench switches, torch_bench switches;
# None: a part PyTorch does not have).
DEMO = (dict(loss_weighting="min_snr"), dict(min_snr=True))
PARTS = (("no EMA update", dict(ema=False), dict(ema=False)),
         ("no global-norm clip", dict(clip=False), dict(clip=False)),
         ("no t / noise draws", dict(draws=False), dict(draws=False)),
         ("no Min-SNR weighting", dict(loss_weighting="none"), dict(min_snr=False)),
         ("no donation", dict(donate=False), None),
         ("none of the four: gradient and Adam", dict(ema=False, clip=False, draws=False,
                                                     loss_weighting="none"),
          dict(ema=False, clip=False, draws=False, min_snr=False)))


def parts_step(s, options: dict[str, Any]):
    """Our demo step with ``options`` overriding ``DEMO``'s (``clip=False``: Adam alone)."""
    options = {**DEMO[0], **options}
    if not options.pop("clip", True):
        s = s._replace(optimizer=optax.adam(LEARNING_RATE))
    return compile_train_step(s, **options)[0]


def measure_parts(s, config: str, batch_size: int, **timing) -> list[dict[str, Any]]:
    """The demo step of both frameworks, paired; then for each of ``PARTS`` its time against
    its own framework's demo step (``ours_vs_demo``, ``theirs_vs_demo``: ratio = without the
    part / with it) and ours against theirs without it."""
    ours_demo = parts_step(s, {})
    theirs_demo = diffusers_steps(config, batch_size, **DEMO[1]).train_step
    rows = [dict(name="demo step", **paired(ours_demo, theirs_demo, **timing))]
    for name, ours, torch_options in PARTS:
        ours_step = parts_step(s, ours)
        row = dict(name=name, ours_vs_demo=paired(ours_demo, ours_step, **timing))
        if torch_options is not None:
            theirs_step = diffusers_steps(config, batch_size,
                                          **{**DEMO[1], **torch_options}).train_step
            row["theirs_vs_demo"] = paired(theirs_demo, theirs_step, **timing)
            row.update(paired(ours_step, theirs_step, **timing))
        rows.append(row)
    return rows


def measure(*, config: str, batch_size: int, repeats: int, warmup: int,
            steps_per_call: list[int] = (), parts: bool = False) -> dict[str, Any]:
    """Paired float32 timings of ``config`` at ``batch_size``: training step, ``steps_per_call``
    K steps per call (K > 1), the step's parts (``parts``) and the forward pass."""
    s = setup(config, batch_size, "float32")
    theirs = diffusers_steps(config, batch_size)
    train, _, _ = compile_train_step(s)
    forward, _, _ = compile_forward(s)
    r = dict(params=sum(p.size for p in jax.tree.leaves(s.params)),
             diffusers_params=theirs.params, torch=theirs.torch_version, threads=theirs.threads,
             train=paired(train, theirs.train_step, warmup=warmup, repeats=repeats),
             forward=paired(forward, theirs.forward, warmup=warmup, repeats=repeats))
    r["steps_per_call"] = {}
    for k in (k for k in steps_per_call if k > 1):
        k_steps = lambda: [theirs.train_step() for _ in range(k)]
        r["steps_per_call"][str(k)] = paired(compile_multi_step(s, k), k_steps, warmup=warmup,
                                             repeats=repeats)
    if parts:
        r["parts"] = measure_parts(s, config, batch_size, warmup=warmup, repeats=repeats)
    return r


if __name__ == "__main__":
    job_main(measure)
