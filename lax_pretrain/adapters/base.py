"""The frozen base map an adapter wraps: the factory contract it must meet, its logical axes, its merged kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import CoLALinear
from lax_pretrain.nnx_compat import logical_axes


def check_base(base: nnx.Module) -> None:
    if not (hasattr(base, "d_in") and hasattr(base, "d_out") and callable(base)):
        raise TypeError(
            f"an adapter wraps a linear map of the factory (make_linear), got {type(base).__name__}"
        )


def base_axes(base: nnx.Module) -> tuple[str | None, str | None]:
    """Logical names of the base map's (d_in, d_out), read from its parameters (TT cores: unknown)."""
    if hasattr(base, "kernel"):
        axes = logical_axes(base.kernel)
        return (axes[0], axes[1]) if axes else (None, None)
    if hasattr(base, "down") and hasattr(base, "up"):
        down, up = logical_axes(base.down), logical_axes(base.up)
        return (down[0] if down else None, up[1] if up else None)
    return None, None


def merged_kernel(base: nnx.Module, a_DxR: jax.Array, b_RxO: jax.Array, what: str) -> jax.Array:
    """The dense (d_in, d_out) kernel W + A B of `base` plus the factors of `what` (bias excluded), for export."""
    if isinstance(base, CoLALinear):
        raise ValueError(
            f"cannot merge {what} into a CoLA base: y = act(x A) B + b is not a linear map, so there "
            "is no dense kernel to add the adapter to (keep the adapter separate)"
        )
    if getattr(base.spec, "crossed", False) or getattr(base.spec, "intra", False):
        raise ValueError(
            f"cannot merge {what}: the base uses LaX crossing (crossing={base.spec.crossing!r}, "
            f"intra={base.spec.intra}), so it is not one dense kernel"
        )
    return base.materialize() + jnp.matmul(a_DxR, b_RxO, precision=jax.lax.Precision.HIGHEST)
