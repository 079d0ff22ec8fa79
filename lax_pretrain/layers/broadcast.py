"""Explicit broadcasting of a per-feature vector against activations: the code runs under
`jax_numpy_rank_promotion='raise'` (the tests set it), so a (D,) bias never meets a (B, L, D) tensor implicitly."""

from __future__ import annotations

import jax


def trailing(v_D: jax.Array, like: jax.Array) -> jax.Array:
    """v (D,) reshaped to (1, .., 1, D) with the rank of `like`, in `like`'s dtype."""
    return v_D.reshape((1,) * (like.ndim - 1) + v_D.shape).astype(like.dtype)
