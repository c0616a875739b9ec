"""Shared test fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

# Several CPU devices for the sharding tests; must be set before jax initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import pytest

from helpers import TinyNet, random_batch  # noqa: F401  (re-exported for older imports)

@pytest.fixture
def tiny_model():
    """(module, variables) of TinyNet on 8x8x3 inputs."""
    model = TinyNet()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)), train=False)
    return model, variables
