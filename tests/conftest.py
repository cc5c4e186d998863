"""Strict test settings: exact matmuls, no silent rank promotion."""

import os

# Simulated devices for the sharding tests must be set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
    """A numpy Generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(0)
