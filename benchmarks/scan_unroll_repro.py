"""Minimal reproducer: XLA:CPU runs a training step much slower inside a rolled ``lax.scan``.

Self-contained (jax and numpy only), so it can be attached to an upstream issue as it is::

    python benchmarks/scan_unroll_repro.py [--steps 4] [--batch 16] [--repeats 5]

A small convolutional block (3x3 convolutions, GroupNorm, swish, a residual add; NHWC, float32),
its loss's gradient and an SGD update make one training step. K such steps run three ways: K
separate jitted calls, one jitted ``lax.scan`` over K steps (rolled: XLA sees a while loop), and
the same scan with ``unroll=K`` (straight-line code). Prints the median time per step of each
and the ratios. The same happens with the U-Net of ``configs/fashion_mnist.py`` (see the docs'
performance page); related upstream reports: jax-ml/jax#12868 (a convolution inside a loop body
is much slower on CPU) and openxla/xla#34273 (a >30x convolution slowdown in another shape).
Pass ``--ynn_off`` to set ``--xla_cpu_experimental_ynn_fusion_type=`` as ddpm_jax's CLIs do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="K, training steps per call")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each variant")
    parser.add_argument("--forward_only", action="store_true",
                        help="each step only evaluates the loss (no gradient): the sampler's case")
    parser.add_argument("--ynn_off", action="store_true",
                        help="disable XLA:CPU's YNN fusions (as ddpm_jax's CLIs do)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.ynn_off:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_experimental_ynn_fusion_type=").strip()
    import jax
    import jax.numpy as jnp

    c, groups = args.channels, 8

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def group_norm_swish(x):
        b, h, w, _ = x.shape
        g = x.reshape(b, h, w, groups, c // groups)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = g.var(axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(x.shape)
        return jax.nn.silu(y)

    def loss(params, x):
        h = conv(x, params["w_in"])
        for w1, w2 in params["blocks"]:
            h = h + conv(group_norm_swish(conv(group_norm_swish(h), w1)), w2)
        return jnp.mean((conv(group_norm_swish(h), params["w_out"]) - x) ** 2)

    def train_step(params, x):
        if args.forward_only:  # carry a dependency on the loss so the steps stay sequential
            return jax.tree.map(lambda p: p * (1 - 1e-3 * loss(params, x)), params)
        grads = jax.grad(loss)(params, x)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

    keys = iter(jax.random.split(jax.random.key(0), 16))
    init = lambda shape: jax.random.normal(next(keys), shape) * 0.05
    params = dict(w_in=init((3, 3, 1, c)), w_out=init((3, 3, c, 1)),
                  blocks=[(init((3, 3, c, c)), init((3, 3, c, c))) for _ in range(2)])
    k = args.steps
    batches = jax.random.normal(next(keys), (k, args.batch, args.size, args.size, 1))

    one_step = jax.jit(train_step)

    def separate(p):
        for i in range(k):
            p = one_step(p, batches[i])
        return p

    def scan_fn(unroll):
        body = lambda p, x: (train_step(p, x), None)
        return jax.jit(lambda p, xs: jax.lax.scan(body, p, xs, unroll=unroll)[0])

    rolled, unrolled = scan_fn(1), scan_fn(k)
    variants = {"K separate jitted calls": separate,
                "lax.scan over K (rolled)": lambda p: rolled(p, batches),
                "lax.scan(unroll=K)": lambda p: unrolled(p, batches)}
    times = {}
    for name, run in variants.items():
        jax.block_until_ready(run(params))  # compile and warm up
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(run(params))
            samples.append((time.perf_counter() - start) / k)
        times[name] = statistics.median(samples)

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}; "
          f"{'forward only' if args.forward_only else 'forward + backward + update'}, "
          f"K = {k}, batch {args.batch}, "
          f"{args.size}x{args.size}x{c}, median of {args.repeats}")
    base = times["K separate jitted calls"]
    for name, seconds in times.items():
        print(f"  {name:26s} {1e3 * seconds:9.2f} ms/step   {seconds / base:6.2f}x the separate calls")


if __name__ == "__main__":
    main()
