"""One task's EigenLoRAx loadings: the container, its check against a basis, and the one fresh initialiser.

A task is alpha_A[p], alpha_B[p] of shape (K, r) per module p (unwind basis: (K, 1)). Fresh loadings are
U(-s, s) with s = INIT_SCALE = 0.5, the released EigenLoRAx code's init, so training starts from a random
delta; `zero_b_loadings` sets alpha_B = 0 instead, so that training starts exactly at the base model.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:  # basis.py imports this module
    from lax_pretrain.adapters.eigenlorax.basis import Basis

INIT_SCALE = 0.5


@dataclasses.dataclass(frozen=True)
class Loadings:
    """One task's trainable coefficients: alpha_A[p], alpha_B[p] of shape (K, r) (unwind: (K, 1))."""

    alpha_A: dict[str, jax.Array]
    alpha_B: dict[str, jax.Array]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.alpha_A)


jax.tree_util.register_dataclass(Loadings, data_fields=["alpha_A", "alpha_B"], meta_fields=[])


def uniform_loadings(key: jax.Array, k: int, cols: int, scale: float = INIT_SCALE) -> jax.Array:
    """Fresh (K, cols) float32 loadings U(-scale, scale); every random loading of EigenLoRAx is drawn here."""
    return jax.random.uniform(key, (k, cols), jnp.float32, -scale, scale)


def init_loadings(basis: Basis, rank: int, *, seed: int, scale: float = INIT_SCALE) -> Loadings:
    """Fresh loadings for a new task, alpha_A and alpha_B U(-scale, scale).

    For an unwind basis `rank` must be the basis's rank and the loadings are (K, 1).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    cols = basis.loading_columns(rank)
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(basis.modules)))
    alpha_a, alpha_b = {}, {}
    for p in basis.modules:
        alpha_a[p] = uniform_loadings(next(keys), basis.C_A[p].shape[1], cols, scale)
        alpha_b[p] = uniform_loadings(next(keys), basis.C_B[p].shape[1], cols, scale)
    return Loadings(alpha_a, alpha_b)


def zero_b_loadings(basis: Basis, rank: int, *, rngs: nnx.Rngs, scale: float = INIT_SCALE) -> Loadings:
    """Fresh loadings that leave the model unchanged: alpha_A U(-scale, scale), alpha_B = 0."""
    cols = basis.loading_columns(rank)
    alpha_a = {p: uniform_loadings(rngs.params(), basis.C_A[p].shape[1], cols, scale) for p in basis.modules}
    alpha_b = {p: jnp.zeros((basis.C_B[p].shape[1], cols), jnp.float32) for p in basis.modules}
    return Loadings(alpha_a, alpha_b)


def check_loadings(basis: Basis, loadings: Loadings) -> int:
    """The loadings' column count (r, or 1 for unwind), after checking them against the basis."""
    if set(loadings.alpha_A) != set(basis.modules) or set(loadings.alpha_B) != set(basis.modules):
        raise ValueError(
            f"loadings modules {sorted(loadings.alpha_A)} / {sorted(loadings.alpha_B)} "
            f"do not match the basis modules {sorted(basis.modules)}"
        )
    cols = {loadings.alpha_A[p].shape[-1] for p in basis.modules}
    if len(cols) != 1:
        raise ValueError(f"loadings have different ranks across modules: {sorted(cols)}")
    (r,) = cols
    if basis.unwind and r != 1:
        raise ValueError(f"an unwind basis takes loadings of shape (K, 1), got rank {r}")
    for p in basis.modules:
        for side, c, alpha in (
            ("A", basis.C_A[p], loadings.alpha_A[p]),
            ("B", basis.C_B[p], loadings.alpha_B[p]),
        ):
            if alpha.shape != (c.shape[1], r):
                raise ValueError(
                    f"{p}: alpha_{side} has shape {alpha.shape}, expected (K, r) = {(c.shape[1], r)}"
                )
    return r
