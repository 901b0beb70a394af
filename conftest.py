"""Tests and doctests run in float64 so gradients can be compared to 1e-10."""

import jax

jax.config.update("jax_enable_x64", True)
