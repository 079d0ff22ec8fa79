"""Shared pytest set-up. Runs before any test module imports jax.

The XLA flag must be in the environment before jax is first imported: it gives the host platform 8 (fake)
CPU devices, so sharding tests can build a mesh on a laptop. Tests compute in float32 (x64 stays off) with
the default matmul precision; each test states its own tolerance.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Implicit rank promotion ((B, L, D) + (D,)) is an error in every test and in the subprocesses tests start.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)  # float32 everywhere: no silent float64 promotion in tests
