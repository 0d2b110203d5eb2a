"""JAX's persistent compilation cache for the command-line programs: a restart of ``train.py`` or a
second ``sample.py`` / ``evaluate.py`` run loads its compiled programs instead of compiling them.

``--compilation_cache_dir`` (default: $JAX_COMPILATION_CACHE_DIR, else
``jax_compilation_cache`` in the project's cache, ``$XDG_CACHE_HOME/ddpm_jax`` or
``~/.cache/ddpm_jax``) and ``--nocompilation_cache`` to turn it off.
Library imports never change the cache: only the CLIs call ``enable_from_flags``.
"""

import os

import jax
from absl import flags

from ddpm_jax.user_cache import default_cache_dir

_ENABLED = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled programs on disk across runs "
    "(--nocompilation_cache: compile everything afresh).")
_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Directory of the compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else "
    "$XDG_CACHE_HOME/ddpm_jax/jax_compilation_cache or ~/.cache/ddpm_jax/jax_compilation_cache).")


def default_dir() -> str:
    """$JAX_COMPILATION_CACHE_DIR, else ``jax_compilation_cache`` in the project's cache
    (``$XDG_CACHE_HOME/ddpm_jax`` or ``~/.cache/ddpm_jax``)."""
    return (os.environ.get("JAX_COMPILATION_CACHE_DIR")
            or os.fspath(default_cache_dir() / "jax_compilation_cache"))


def enable_from_flags() -> str | None:
    """Points JAX's persistent compilation cache at the flags' directory; returns it (None: off).

    Call before the first compilation.
    """
    if not _ENABLED.value:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    directory = os.path.expanduser(_DIR.value or default_dir())
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory
