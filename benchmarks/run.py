"""ddpm_jax benchmarks: training step, forward pass, sampler, compile times, memory, input pipeline.

    python benchmarks/run.py                                  # CPU suite: small and cifar10
    python benchmarks/run.py --configs small --repeats 3 --compare diffusers
    python benchmarks/run.py --suite gpu --json bench_gpu.json  # Ho's CIFAR-10 model, batch 128
    python benchmarks/run.py --suite loop --json bench_loop.json  # train.py's loop vs its step

Each configuration (model x compute dtype x XLA_FLAGS variant) runs in its own process
(``jax_bench.py``), so flags and compile caches cannot leak between them; times are medians of
``--repeats`` runs after ``--warmup`` runs. Prints markdown tables and writes JSON.

Columns: ``train GFLOP/s`` is XLA's flop count of the compiled step over its time, and ``% peak``
compares it with a square matmul in the same dtype and process (``--peak_size``). ``sampler
overhead`` is the wall time of the ancestral sampler's T-step chain (T = ``--sample_steps``) over
that of T separate jitted forward calls, the two alternated ``--sample_repeats`` times (1.0: the
scan costs nothing beyond its denoiser calls).

``--compare diffusers`` adds a table against diffusers' ``UNet2DModel`` (same architecture and
parameter count, PyTorch on every core), timed in one process that alternates the two
(``compare_bench.py``): ``x diffusers`` is the median over repeats of the per-pair ratio of their
time to ours, with its range; then ours at each ``--steps_per_call`` K > 1 (K steps in one call)
against K of theirs, and for the ``--parts`` configs the demo's step with one part out at a
time (EMA, clip, draws, Min-SNR, donation), each paired with its own framework's demo step.
Where the step's time goes: ``profile_step.py``. Checks of this code: ``python -m pytest
benchmarks``.

``--suite loop`` (``loop_bench.py``): ``loop efficiency`` is ``train.py``'s steps/s (its loop on
synthetic images, from ``metrics.jsonl``) over the bare jitted step's, measured in the same
process, for each ``--steps_per_call`` K; ``first step s`` is the time from a fresh process to
its first completed step with the compilation cache off, cold (empty) and warm. The GPU suite's
``loop eff.`` times the same loop pieces (``ddpm_jax.train_loop``) around Ho's model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import MODELS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="  # ddpm_jax.xla_setup.CPU_FLAGS

# Per-suite defaults; every one can be overridden by the flag of the same name. The timed sampler
# is short where the forward pass is slow (cifar10 on CPU) or time is tight (the GPU suite, which
# must finish in 420 s); a T in compile_timesteps costs no extra compile.
SUITES: dict[str, dict[str, Any]] = {
    "cpu": dict(configs=["small", "cifar10"], batch_size={"tiny": 8, "small": 64, "cifar10": 16},
                dtypes=["float32"], xla_flags=["", YNN_OFF], repeats=5, warmup=2,
                sample_steps={"tiny": 100, "small": 100, "cifar10": 20}, sample_repeats=3,
                compile_timesteps=[10, 1000], peak_size=2048, timeout=None,
                steps_per_call=[1, 4], parts=["small"]),
    "gpu": dict(configs=["cifar10"], batch_size=128, dtypes=["float32", "bfloat16"],
                xla_flags=[""], repeats=10, warmup=3, sample_steps=10, sample_repeats=5,
                compile_timesteps=[10, 1000], peak_size=8192, timeout=200, steps_per_call=[1, 4]),
    # Ratios measured within one process. log_every: 8 calls, as a metrics fetch every 2 steps
    # cost the small config 20% of its rate (0.80 vs 0.98 of the bare step at K = 1). K > 1 runs
    # the K steps unrolled in one call (train_loop.make_multi_step).
    "loop": dict(configs=["tiny", "small"], batch_size={"tiny": 8, "small": 16, "cifar10": 16},
                 steps_per_call=[1, 4], log_every={"tiny": 8, "small": 8, "cifar10": 1},
                 repeats=10, compile_only=["cifar10"],
                 timeout=None),
}
PER_CONFIG = ("batch_size", "sample_steps", "log_every")  # an int flag applies to every config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [x for x in s.split(",") if x]
    p.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    p.add_argument("--configs", type=csv, help="comma-separated: tiny, small, cifar10")
    p.add_argument("--batch_size", type=int, help="for every config (default: per config)")
    p.add_argument("--dtypes", type=csv, help="UNet compute dtypes, e.g. float32,bfloat16")
    p.add_argument("--xla_flags", action="append",
                   help="an XLA_FLAGS value to compare, replacing the environment's "
                        "(repeatable; '' for none)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--sample_steps", type=int,
                   help="T of the sampler chain timed (default: per config)")
    p.add_argument("--sample_repeats", type=int)
    p.add_argument("--compile_timesteps", type=lambda s: [int(x) for x in csv(s)],
                   help="schedule lengths T whose full-chain sampler compile time is measured")
    p.add_argument("--peak_size", type=int, help="side of the matmul giving the peak GFLOP/s")
    p.add_argument("--timeout", type=float, help="seconds allowed per job")
    p.add_argument("--compare", choices=["diffusers"], help="also time diffusers' UNet2DModel")
    p.add_argument("--steps_per_call", type=lambda s: [int(x) for x in csv(s)],
                   help="K values: the loop's efficiency (suites loop and gpu); ours at K steps "
                        "per call next to diffusers (--compare)")
    p.add_argument("--parts", type=csv,
                   help="configs whose step's parts are timed against diffusers' (--compare)")
    p.add_argument("--log_every", type=int, help="loop suite: calls per logged interval")
    p.add_argument("--compile_only", type=csv,
                   help="loop suite: configs whose call is only compiled for each K, not trained "
                        "(default: cifar10, ~3 s a step here)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for name, default in SUITES[args.suite].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in PER_CONFIG:
        if isinstance(getattr(args, name), int):
            setattr(args, name, dict.fromkeys(MODELS, getattr(args, name)))
    unknown = sorted(set(args.configs) - set(MODELS))
    if unknown:
        p.error(f"unknown configs {unknown}; expected some of {sorted(MODELS)}")
    return args


def run_job(script: str, params: dict[str, Any], *, xla_flags: str = "",
            timeout: float | None = None) -> dict[str, Any]:
    """Runs one job process; returns its result, or ``{"error": ...}`` if it failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["XLA_FLAGS"] = xla_flags
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    label = " ".join(str(params[k]) for k in ("config", "batch_size", "dtype") if k in params)
    print(f"  {script} {label} XLA_FLAGS={xla_flags!r} ...", end="", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.join(HERE, script), json.dumps(params), out]
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
            error = None if proc.returncode == 0 else proc.stderr[-3000:]
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout} s"
        if not error:
            with open(out) as f:
                result = json.load(f)
    print(f" {time.perf_counter() - start:.0f} s{' FAILED' if error else ''}", flush=True)
    if error:
        print(error, file=sys.stderr)
        return {"error": error}
    return result


def run_all(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Runs every job in order, appending to ``report["results"]`` (and saving it) as it goes."""
    installed = lambda *modules: all(importlib.util.find_spec(m) for m in modules)
    has_tfds, compare = installed("tensorflow_datasets"), args.compare
    if compare and not installed("torch", "diffusers"):
        print("torch or diffusers is not installed (pip install -e '.[bench]'): "
              "skipping the diffusers comparison")
        compare = None
    jobs = [] if args.suite != "loop" else loop_jobs(args)
    for config in args.configs if args.suite != "loop" else ():
        batch = args.batch_size[config]
        for dtype in args.dtypes:
            for flags in args.xla_flags:
                jobs.append(("jax", flags, dict(
                    config=config, batch_size=batch, dtype=dtype, repeats=args.repeats,
                    warmup=args.warmup, sample_steps=args.sample_steps[config],
                    sample_repeats=args.sample_repeats,
                    compile_timesteps=args.compile_timesteps, peak_size=args.peak_size,
                    steps_per_call=args.steps_per_call if args.suite == "gpu" else [])))
        if compare:  # under the flags train.py sets, float32 (diffusers' dtype)
            jobs.append(("compare", YNN_OFF, dict(
                config=config, batch_size=batch, repeats=args.repeats, warmup=args.warmup,
                steps_per_call=args.steps_per_call or [], parts=config in (args.parts or ()))))
        if has_tfds:
            jobs.append(("pipeline", "", dict(config=config, batch_size=batch, repeats=50)))
    if not has_tfds:
        print("tensorflow_datasets is not installed: skipping the input pipeline")
    for kind, flags, params in jobs:
        result = run_job(f"{kind}_bench.py", params, xla_flags=flags, timeout=args.timeout)
        report["results"].append({"kind": kind, "xla_flags": flags, **params, **result})
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)


def loop_jobs(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """The loop suite: efficiency per config (or compile times only, ``--compile_only``), then
    start-up of the last config without, with a cold and with a warm compilation cache (under
    train.py's XLA flags)."""
    jobs = [("loop", YNN_OFF, dict(mode="compile" if c in args.compile_only else "efficiency",
                                   config=c, batch_size=args.batch_size[c],
                                   steps_per_call=args.steps_per_call,
                                   log_every=args.log_every[c], repeats=args.repeats))
            for c in args.configs]
    config = args.configs[-1]
    cache_dir = tempfile.mkdtemp(prefix="ddpm_jax_bench_cache_")
    for cache in (None, "cold", "warm"):
        jobs.append(("loop", YNN_OFF, dict(mode="startup", config=config, cache=cache,
                                           batch_size=args.batch_size[config],
                                           cache_dir=cache and cache_dir)))
    return jobs


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(m: dict[str, float]) -> str:
    """A paired ratio (``compare_bench.paired``) with its range, for markdown."""
    return f"**{m['ratio']:.2f}** ({m['ratio_min']:.2f}-{m['ratio_max']:.2f})"


def tables(results: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(markdown tables, problems found: failed jobs, parameter-count mismatches)."""
    problems = [f"{r['kind']} {r['config']} {r.get('dtype', '')} {r['xla_flags']!r}: failed"
                for r in results if r.get("error")]
    ok = [r for r in results if not r.get("error")]
    rows, compile_rows = [], []
    for r in (r for r in ok if r["kind"] == "jax"):
        b = r["batch_size"]
        rows.append([r["config"], b, r["dtype"], f"`{r['xla_flags']}`" if r["xla_flags"] else "",
                     fmt(1 / r["train_step_s"], 3), fmt(b / r["train_step_s"], 1),
                     f"{r['train_gflops']:.0f} ({100 * r['train_gflops'] / r['peak_gflops']:.0f}%)",
                     fmt(b / r["forward_s"], 1), f"{r['sampler_s']:.1f} ({r['sample_steps']})",
                     fmt(r["sampler_overhead"], 3), fmt(r["peak_host_gb"]),
                     fmt(r.get("peak_device_gb")),
                     " ".join(f"K={k}: {e:.3f}" for k, e in r.get("loop_efficiency", {}).items())
                     or "-"])
        sampler = [r["sampler_compile_s"][str(T)] for T in r["compile_timesteps"]]
        compile_rows.append([r["config"], r["dtype"], rows[-1][3], fmt(r["train_compile_s"], 1),
                             fmt(r["forward_compile_s"], 1), *(fmt(s, 1) for s in sampler),
                             fmt(sampler[-1] / sampler[0])])
    header = ["config", "batch", "dtype", "XLA_FLAGS", "train steps/s", "train img/s",
              "train GFLOP/s (% peak)", "forward img/s", "sampler s (steps)", "sampler overhead",
              "peak host GB", "peak device GB", "loop eff."]
    out = [markdown(header, rows)] if rows else []
    if compile_rows:
        timesteps = next(r for r in ok if r["kind"] == "jax")["compile_timesteps"]
        out.append(markdown(["config", "dtype", "XLA_FLAGS", "compile s: train", "forward",
                             *(f"sampler T={t}" for t in timesteps),
                             f"T={timesteps[-1]} / T={timesteps[0]}"], compile_rows))
    compare_rows = []
    for r in (r for r in ok if r["kind"] == "compare"):
        line = (f"{r['config']} parameters: ddpm_jax {r['params']:,}, "
                f"diffusers {r['diffusers_params']:,}")
        print(line)
        if abs(r["params"] - r["diffusers_params"]) > 0.01 * r["diffusers_params"]:
            problems.append(line + " (differ by more than 1%)")
        b, train, forward = r["batch_size"], r["train"], r["forward"]
        compare_rows.append([r["config"], b, f"`{r['xla_flags']}`",
                             f"torch {r['torch']}, {r['threads']} threads",
                             fmt(1 / train["ours_s"], 3), fmt(1 / train["theirs_s"], 3),
                             ratio(train), fmt(b / forward["ours_s"], 1),
                             fmt(b / forward["theirs_s"], 1), ratio(forward)])
    if compare_rows:
        out.append(markdown(["config", "batch", "XLA_FLAGS", "diffusers on",
                             "train steps/s: ddpm_jax", "diffusers", "train x diffusers (range)",
                             "forward img/s: ddpm_jax", "diffusers",
                             "forward x diffusers (range)"], compare_rows))
    per_call = [[r["config"], r["batch_size"], k, fmt(int(k) / m["ours_s"], 3),
                 fmt(int(k) / m["theirs_s"], 3), ratio(m)]
                for r in ok if r["kind"] == "compare"
                for k, m in [("1", r["train"]), *r.get("steps_per_call", {}).items()]]
    if any(r.get("steps_per_call") for r in ok if r["kind"] == "compare"):
        out.append(markdown(["config", "batch", "steps per call (ours)", "steps/s: ddpm_jax",
                             "diffusers", "x diffusers (range)"], per_call))
    parts = [part_row(r, p) for r in ok if r["kind"] == "compare"
             for p in r.get("parts", ())]
    if parts:
        out.append(markdown(["config", "batch", "step", "ddpm_jax ms", "vs its demo step (range)",
                             "diffusers ms", "vs its demo step (range)",
                             "x diffusers (range)"], parts))
    loop_rows = [[r["config"], r["batch_size"], run["steps_per_call"],
                  fmt(run.get("bare_steps_per_s")), fmt(run.get("loop_steps_per_s")),
                  f"**{run['efficiency']:.3f}**" if "efficiency" in run else "-",
                  fmt(run.get("compile_s"), 1)]
                 for r in ok if r["kind"] == "loop" and r["mode"] in ("efficiency", "compile")
                 for run in r["runs"]]
    if loop_rows:
        out.append(markdown(["config", "batch", "steps_per_call", "bare step steps/s",
                             "train.py loop steps/s", "loop efficiency", "compile s"],
                            loop_rows))
    startup = [[r["config"], r["cache"] or "off", fmt(r["first_step_s"], 1)]
               for r in ok if r["kind"] == "loop" and r["mode"] == "startup"]
    if startup:
        out.append(markdown(["config", "compilation cache", "first step s (from process start)"],
                            startup))
    pipeline = [[r["config"], r["batch_size"], fmt(r["batch_size"] / r["batch_s"], 0)]
                for r in ok if r["kind"] == "pipeline"]
    if pipeline:
        out.append(markdown(["config", "batch", "input pipeline img/s (ArraySource, flips)"],
                            pipeline))
    return "\n\n".join(out), problems


def part_row(r: dict[str, Any], part: dict[str, Any]) -> list[Any]:
    """A row of the step's parts table (``compare_bench.measure_parts``)."""
    ms = lambda m, key: fmt(1e3 * m[key], 0)
    if "ours_vs_demo" not in part:  # the demo step itself
        return [r["config"], r["batch_size"], part["name"], ms(part, "ours_s"), "1",
                ms(part, "theirs_s"), "1", ratio(part)]
    theirs = part.get("theirs_vs_demo")
    return [r["config"], r["batch_size"], part["name"], ms(part["ours_vs_demo"], "theirs_s"),
            ratio(part["ours_vs_demo"]), ms(theirs, "theirs_s") if theirs else "-",
            ratio(theirs) if theirs else "-", ratio(part) if theirs else "-"]


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = dict(suite=args.suite, argv=sys.argv, machine=platform.platform(),
                  cpus=len(os.sched_getaffinity(0)), args=vars(args), results=[])
    start = time.perf_counter()
    print(f"ddpm_jax benchmarks, suite {args.suite}, on {report['cpus']} CPUs")
    run_all(args, report)
    text, problems = tables(report["results"])
    print(f"\n{text}\n\ntotal {time.perf_counter() - start:.0f} s")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
