"""Strict test settings: exact matmuls, no silent rank promotion."""

import os

# Simulated devices for the sharding tests must be set before jax initialises; added
# to (not replaced by) any XLA_FLAGS the environment already has.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
# The CLI turns JAX's persistent compilation cache on; tests leave the user's alone.
os.environ["CNN_JAX_COMPILATION_CACHE"] = "off"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
    """A numpy Generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(0)
