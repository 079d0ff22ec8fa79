"""Many tasks served from one EigenLoRAx basis: a batch mixing tasks, and what serving them costs in memory.

Every task shares the module's C_A, C_B; a task is only its (K, r) loadings. In a mixed batch z = x C_A is one
dense matmul for all rows, each row then gathers its own task's loadings.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.adapters.eigenlorax.basis import Basis, f32
from lax_pretrain.adapters.eigenlorax.loadings import Loadings, check_loadings
from lax_pretrain.adapters.eigenlorax.module import frozen
from lax_pretrain.adapters.signature import ArrayLike, Signature
from lax_pretrain.nnx_compat import param


def serve_delta(
    x_BxLxD: jax.Array,
    task_ids_B: jax.Array,
    C_A: jax.Array,
    C_B: jax.Array,
    alpha_A_TxKxR: jax.Array,
    alpha_B_TxKxR: jax.Array,
) -> jax.Array:
    """Deltas for a batch mixing tasks, row b using task task_ids_B[b]: x (B, ..., D) -> (B, ..., d_out).

    z = x C_A is one dense matmul shared by all rows; each row then gathers only its task's (K, r) loadings
    for two tiny batched matmuls; C_B^T is again shared. Ids >= T give NaN rows (a visible error, not a
    silent clamp); negative ids count from the end, as in numpy.
    """
    t, k_a, r = alpha_A_TxKxR.shape
    if (
        x_BxLxD.shape[-1] != C_A.shape[0]
        or C_A.shape[1] != k_a
        or alpha_B_TxKxR.shape != (t, C_B.shape[1], r)
        or task_ids_B.shape != x_BxLxD.shape[:1]
    ):
        raise ValueError(
            f"shape mismatch: x {x_BxLxD.shape}, task_ids {task_ids_B.shape}, C_A {C_A.shape}, "
            f"C_B {C_B.shape}, alpha_A {alpha_A_TxKxR.shape}, alpha_B {alpha_B_TxKxR.shape} "
            "(expected (T, K, r) loadings and one task id per row)"
        )
    dtype = x_BxLxD.dtype
    gather = dict(axis=0, mode="fill", fill_value=jnp.nan)
    a_BxKxR = jnp.take(alpha_A_TxKxR, task_ids_B, **gather).astype(dtype)
    b_BxKxR = jnp.take(alpha_B_TxKxR, task_ids_B, **gather).astype(dtype)
    z_BxLxK = x_BxLxD @ C_A.astype(dtype)
    h_BxLxR = jnp.einsum("b...k,bkr->b...r", z_BxLxK, a_BxKxR)
    u_BxLxK = jnp.einsum("b...r,bkr->b...k", h_BxLxR, b_BxKxR)
    return u_BxLxK @ C_B.T.astype(dtype)


class MultiTaskEigenLoRA(nnx.Module):
    """One module's shared basis plus T tasks' loadings (nnx.Param, (T, K, r)); each batch row has a task."""

    def __init__(
        self,
        C_A: ArrayLike,
        C_B: ArrayLike,
        alpha_A_TxKxR: ArrayLike,
        alpha_B_TxKxR: ArrayLike,
        *,
        axes: tuple[str | None, str | None] = (None, None),
    ):
        t, k_a, r = alpha_A_TxKxR.shape
        if C_A.shape[1] != k_a or alpha_B_TxKxR.shape != (t, C_B.shape[1], r):
            raise ValueError(
                f"loadings {alpha_A_TxKxR.shape}, {alpha_B_TxKxR.shape} do not fit components "
                f"{C_A.shape}, {C_B.shape} (expected (T, K, r) each)"
            )
        self.C_A = frozen(C_A, (axes[0], None))
        self.C_B = frozen(C_B, (axes[1], None))
        self.alpha_A = param(f32(alpha_A_TxKxR), (None, None, None))
        self.alpha_B = param(f32(alpha_B_TxKxR), (None, None, None))

    @classmethod
    def from_basis(
        cls,
        basis: Basis,
        path: str,
        tasks: Sequence[Loadings],
        *,
        axes: tuple[str | None, str | None] = (None, None),
    ) -> MultiTaskEigenLoRA:
        """Stack the loadings of `tasks` (task id = position in the list) for module `path`."""
        if basis.unwind:
            raise ValueError(
                "multi-task serving shares z = x C_A across rows, which needs a rank-vector basis, "
                "not an unwind one"
            )
        c_a, c_b = basis.components(path)
        if not tasks:
            raise ValueError("need at least one task's loadings")
        ranks = {check_loadings(basis, task) for task in tasks}
        if len(ranks) != 1:
            raise ValueError(f"all tasks must share one rank to be stacked, got {sorted(ranks)}")
        alpha_a_TxKxR = jnp.stack([task.alpha_A[path] for task in tasks])
        alpha_b_TxKxR = jnp.stack([task.alpha_B[path] for task in tasks])
        return cls(c_a, c_b, alpha_a_TxKxR, alpha_b_TxKxR, axes=axes)

    def __call__(self, x_BxLxD: jax.Array, task_ids_B: jax.Array) -> jax.Array:
        return serve_delta(
            x_BxLxD, task_ids_B, self.C_A[...], self.C_B[...], self.alpha_A[...], self.alpha_B[...]
        )


def serving_bytes(basis: Basis, n_tasks: int, rank: int, *, bytes_per_value: int = 4) -> int:
    """Bytes to serve n_tasks from one basis: each C_A, C_B once, plus 2 K r loadings per task and module."""
    cols = 1 if basis.unwind else rank
    shared = sum(basis.C_A[p].size + basis.C_B[p].size for p in basis.modules)
    per_task = sum((basis.C_A[p].shape[1] + basis.C_B[p].shape[1]) * cols for p in basis.modules)
    return (shared + n_tasks * per_task) * bytes_per_value


def lora_serving_bytes(signature: Signature, n_tasks: int, rank: int, *, bytes_per_value: int = 4) -> int:
    """Bytes to serve n_tasks full rank-r LoRAs: (d_in + d_out) r values per module per task."""
    return n_tasks * sum((d_in + d_out) * rank for d_in, d_out in signature.values()) * bytes_per_value
