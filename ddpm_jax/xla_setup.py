"""XLA flags for the command-line programs; applied before JAX initialises its backends.

Library imports never change flags: only ``train.py`` / ``sample.py`` call ``configure``.
"""

import os

# On XLA:CPU, the YNN fusions slow convolution gradients; turning them off was 1.6x faster for the
# demo model's training step on this project's 2-core machine (benchmarks/results/).
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def configure() -> None:
    """Adds the default flags to ``XLA_FLAGS`` unless the user already set the same flag."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
