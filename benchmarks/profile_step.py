"""Where a training step's time goes: XLA's per-op times, attributed to U-Net parts.

    python benchmarks/profile_step.py --config small --batch_size 64
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/profile_step.py ...

Traces a few runs of the compiled training step of ``jax_bench`` with ``jax.profiler``, reads
each XLA op's duration from the trace, and attributes it, through the op_name metadata of the
compiled HLO, to the pass (forward, backward, or update: loss outside the model, optimizer, EMA)
and to the Flax module that emitted it (``ResBlock/Conv``, ``GroupNormSwish/GroupNorm``, ...).
Ops without metadata (layout copies XLA inserted) are ``(no metadata)``.

XLA:CPU runs convolutions asynchronously on Eigen's thread pool, and the trace records only their
dispatch (a 3x3 convolution of 46 ms shows as 0.2 ms). Their time is therefore the step's wall
time less the sum of the traced ops: the row ``untraced``. (Convolutions Eigen cannot run, such
as the input-dilated gradients of strided ones, run in XLA's own loops and are traced.)
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax

from jax_bench import make_train_step, setup
from run import markdown

# An HLO instruction and the op_name in its metadata.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', re.M)
_ANY_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", re.M)


def op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> op_name ('' where the instruction has no metadata)."""
    names = dict.fromkeys(_ANY_INSTRUCTION.findall(hlo_text), "")
    names.update(_INSTRUCTION.findall(hlo_text))
    return names


def attribute(op_name: str) -> tuple[str, str]:
    """(pass, part of the model) of an op_name like 'jit(f)/transpose(jvp(UNet))/ResBlock_4/Conv_0/
    conv_general_dilated'. A fusion is attributed by its root op."""
    if not op_name:
        return "", "(no metadata: layout copies)"
    *scopes, primitive = op_name.split("/")[1:]
    if not scopes or "(UNet)" not in scopes[0]:
        return "update", "loss, optimizer, EMA"
    pass_ = "backward" if scopes[0].startswith("transpose(") else "forward"
    modules = [re.sub(r"\d+$", "", s).rstrip("_") for s in scopes[1:]]
    innermost = modules[-1] if modules else ""
    if "GroupNorm" in modules:
        part = "GroupNorm"
    elif "jit(silu)" in modules:
        part = "swish"
    elif primitive.startswith("conv_general_dilated"):
        part = "convolution"
    elif innermost in ("q", "k", "v", "proj_out"):
        part = "attention projections"
    elif innermost in ("AttnBlock", "mid_attn") or "->" in innermost:
        part = "attention (QK^T, softmax, AV)"
    elif innermost in ("temb_proj", "temb_dense", "nin_shortcut"):
        part = "dense (embedding, shortcut)"
    else:
        part = "other (residual adds, concat, resampling)"
    return pass_, part


def op_times(trace_dir: str, names: dict[str, str]) -> collections.Counter:
    """Total microseconds per HLO instruction over the trace in ``trace_dir``."""
    (path,) = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            times[e["name"]] += e.get("dur", 0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="small")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=3, help="traced steps (after one warm-up)")
    p.add_argument("--top", type=int, default=12, help="rows of the per-op-kind table")
    args = p.parse_args()
    s = setup(args.config, args.batch_size, args.dtype)
    step = jax.jit(make_train_step(s.model, s.schedule, s.optimizer), donate_argnums=0)
    compiled = step.lower(s.train_state(), s.x0, s.key).compile()
    names = op_names(compiled.as_text())
    state = s.train_state()
    state, loss = compiled(state, s.x0, s.key)
    jax.block_until_ready((state, loss))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(args.steps):
                state, loss = compiled(state, s.x0, s.key)
                jax.block_until_ready((state, loss))
            wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
        times = op_times(trace_dir, names)

    per_step = lambda us: us / 1e3 / args.steps
    traced = per_step(sum(times.values()))
    by_part, by_kind = collections.defaultdict(collections.Counter), collections.Counter()
    for name, us in times.items():
        pass_, part = attribute(names[name])
        by_part[part][pass_] += per_step(us)
        by_kind[re.sub(r"\.\d+$", "", name)] += per_step(us)
    by_part["untraced: Eigen convolutions (wall - traced ops)"][""] = wall_ms - traced
    print(f"{args.config}, batch {args.batch_size}, {args.dtype}: {wall_ms:.0f} ms/step wall "
          f"(traced), {traced:.0f} ms/step summed over the traced XLA ops\n")
    percent = lambda ms: f"{100 * ms / wall_ms:.1f}"
    rows = [[part, *(f"{ms[p]:.1f}" if p in ms else "-" for p in ("forward", "backward")),
             f"{sum(ms.values()):.1f}", percent(sum(ms.values()))]
            for part, ms in sorted(by_part.items(), key=lambda kv: -sum(kv[1].values()))]
    print(markdown(["part", "forward ms", "backward ms", "total ms", "% of wall"], rows), "\n")
    print(markdown(["XLA op kind", "ms/step", "% of wall"], [
        [k, f"{ms:.1f}", percent(ms)] for k, ms in by_kind.most_common(args.top)]))


if __name__ == "__main__":
    main()
