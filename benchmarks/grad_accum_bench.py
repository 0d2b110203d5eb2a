"""Gradient accumulation: how its A micro-batches should run, measured on the demo model.

    python benchmarks/grad_accum_bench.py [--model small] [--batch 64] [--accum 1 2 4]

For each A, the batch's gradient (L_simple of the U-Net, as ``train_lib.make_train_step`` takes
it) computed as the mean of A micro-batch gradients two ways: a ``lax.scan`` over the
micro-batches (``train_lib.accumulate_gradients``: one copy of the gradient in a loop body) and
unrolled (A copies in straight-line code). Prints compile seconds, XLA's temporary memory of
the compiled program (what accumulation exists to cut) and the median seconds per batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddpm_jax import xla_setup  # noqa: E402

xla_setup.configure()  # the CLIs' XLA flags

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from common import median_seconds, unet_fields  # noqa: E402
from ddpm_jax import losses, make_schedule, train_lib  # noqa: E402
from ddpm_jax.models import UNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--accum", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    image_shape, fields = unet_fields(args.model)
    model = UNet(out_channels=image_shape[-1], **fields)
    schedule = make_schedule("linear", 1000)
    key = jax.random.key(0)
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape)),
                                          jnp.zeros((1,), jnp.int32))["params"])(key)
    x0 = jax.random.uniform(key, (args.batch, *image_shape), minval=-1.0, maxval=1.0)
    t, noise = losses.draw_t_and_noise(schedule, key, x0)
    examples = dict(image=x0, t=t, noise=noise)

    def loss_fn(p, micro):
        denoise_fn = train_lib.denoiser(model, p, train=True)
        return jnp.mean(losses.training_loss_given(denoise_fn, schedule, micro["image"],
                                                   micro["t"], micro["noise"]))

    grad_fn = jax.value_and_grad(lambda p, micro, _: loss_fn(p, micro))

    def scanned(p, accum):  # what train_lib runs
        return train_lib.accumulate_gradients(grad_fn, p, examples, key, accum)

    def unrolled(p, accum):
        micro = lambda x, i: x.reshape(-1, accum, *x.shape[1:])[:, i]
        parts = [grad_fn(p, jax.tree.map(lambda x: micro(x, i), examples), None)
                 for i in range(accum)]
        return jax.tree.map(lambda *v: sum(v) / accum, *parts)

    print(f"{args.model} model, batch {args.batch}, jax {jax.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("| A | how | compile s | temp memory MB | s per batch |")
    print("|---|---|---:|---:|---:|")
    for accum in args.accum:
        for name, fn in (("lax.scan (train_lib)", scanned), ("unrolled", unrolled)):
            if accum == 1 and name == "unrolled":
                continue
            start = time.perf_counter()
            compiled = jax.jit(fn, static_argnums=1).lower(params, accum).compile()
            compile_s = time.perf_counter() - start
            memory = compiled.memory_analysis()
            temp_mb = memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan")
            seconds = median_seconds(lambda: jax.block_until_ready(compiled(params)), warmup=1,
                                     repeats=args.repeats)
            name = "whole batch" if accum == 1 else name
            print(f"| {accum} | {name} | {compile_s:.1f} | {temp_mb:.0f} | {seconds:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
