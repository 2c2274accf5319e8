"""Strict JAX settings for the whole suite (Equinox-style): implicit rank promotion is an error."""

import os

# Eight fake CPU devices for the sharding tests; must be set before JAX initializes its backend.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
