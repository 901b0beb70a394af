"""Tests and doctests run in float64 so gradients can be compared to 1e-10."""

import os

# Tests compile hundreds of small programs and run each once: a lower XLA
# backend optimisation level cuts compile time (about a third of the suite's
# CPU) without changing any result the tests check. Set XLA_FLAGS to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
