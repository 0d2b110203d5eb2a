"""The project's per-user cache directory: downloaded weights and compiled programs live in it."""

import os
import pathlib


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/ddpm_jax``, or ``~/.cache/ddpm_jax`` when XDG_CACHE_HOME is unset."""
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache",
                        "ddpm_jax")
