"""JAX's persistent compilation cache, on by default for the ``cnn-jax`` command.

A second ``cnn-jax train`` with the same model and shapes loads its compiled steps
from disk instead of compiling them again. The folder is
``$CNN_JAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/cnn_jax/jax`` (default
``~/.cache/cnn_jax/jax``); ``CNN_JAX_COMPILATION_CACHE=off`` turns it off. The
library itself never turns it on: that is the application's choice.
"""

from __future__ import annotations

import os

ENV = "CNN_JAX_COMPILATION_CACHE"
_OFF = ("", "0", "off", "false", "no", "none")


def compilation_cache_dir() -> str | None:
    """The folder the cache would use, or None when ``$CNN_JAX_COMPILATION_CACHE`` is off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cnn_jax", "jax")


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at :func:`compilation_cache_dir`.

    Every program is cached, however fast it compiled (JAX's default skips those
    under a second, which is all of a small CNN's). Returns the folder, or None when
    the cache is off or the folder cannot be created.
    """
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
