"""Tensor parallelism of the factorized layers, GSPMD by the rules ('auto') or explicit `jax.shard_map`.

`FactorizedLinear.__call__` reaches its latent through `encode(layer, x)` and leaves it through
`decode(layer, z, aux)`: the one hook. Which dimension is tensor-parallel comes from the rules table and the
layer's logical axes (`layer.axes`, e.g. ('embed', 'heads') for q, ('mlp', 'embed') for the MLP down):

    input dim on `tensor`  (o, down: row-parallel)      the down-projection x A is computed on the local slice
                                                        of the input and the partial r-wide latent is summed
                                                        across `tensor` (psum) before anything else touches it.
    output dim on `tensor` (q, k, v, gate, up: column)  the up-projection z B writes the local slice of the
                                                        output; in the backward pass its transpose sums the
                                                        r-wide latent gradient (psum) across `tensor`.

So every tensor-parallel all-reduce of a low-rank layer is r wide where a dense layer's is d wide
(docs/methods.md and README "Running on many devices"). With `tp_impl='auto'` GSPMD derives that program from the factor shardings (svd/cola
factors are stored sharded by the rules; a TT factor, contracted from replicated cores, is constrained to
the same layout) and a constraint that keeps the latent replicated over `tensor`. With `tp_impl='shard_map'`
the collectives are written out (manual over `tensor` only; data and fsdp stay automatic). Both compute
the same function; dense layers are left to GSPMD in both modes.

A layer takes part through `layer.tp_factors() -> (down (d_in, r), up (r, d_out))` when its encode/decode
are exactly x @ down and z @ up (svd, cola, tt factor-first). Without a tensor split, or without factors
(sequential TT), the layer's own encode/decode run.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec as P

from lax_pretrain.parallel.constraints import (
    active_mesh,
    auto_axes,
    constrain,
    current_rules,
    current_tp_impl,
)
from lax_pretrain.parallel.rules import logical_to_spec

TP_AXIS = "tensor"
LATENT = ("batch", "rank")  # (N, r): tokens flattened, batch-major, so N carries the batch sharding


def _tp_size_on(logical_name: str | None, size: int) -> int:
    """How many ways the current rules split a dimension `logical_name` of `size` over `tensor` (1: not)."""
    mesh = active_mesh()
    if mesh is None or logical_name is None:
        return 1
    sizes = auto_axes(mesh)
    if sizes.get(TP_AXIS, 1) == 1:
        return 1
    entry = logical_to_spec((logical_name,), (size,), sizes, current_rules())[0]
    entry_t = (entry,) if isinstance(entry, str) else tuple(entry or ())
    return sizes[TP_AXIS] if TP_AXIS in entry_t else 1


def encode(layer: Any, x_NxI: jax.Array) -> tuple[jax.Array, Any]:
    """The pre-crossing latent u (N, r) and the layer's aux, row-parallel where the input is on `tensor`."""
    factors = layer.tp_factors() if _tp_size_on(layer.axes[0], layer.d_in) > 1 else None
    if factors is None:
        u_NxR, aux = layer.encode(x_NxI)
    else:
        down_IxR, aux = factors[0].astype(x_NxI.dtype), None
        if current_tp_impl() == "shard_map":
            u_NxR = jax.shard_map(
                _row_parallel_down,
                in_specs=(P(None, TP_AXIS), P(TP_AXIS, None)),
                out_specs=P(),
                axis_names={TP_AXIS},
            )(x_NxI, down_IxR)
        else:  # a no-op for svd/cola (their factor is stored so); splits a TT factor computed from its cores
            u_NxR = x_NxI @ jax.lax.with_sharding_constraint(down_IxR, P(TP_AXIS, None))
    return constrain(u_NxR, LATENT), aux


def decode(layer: Any, z_NxR: jax.Array, aux: Any) -> jax.Array:
    """y (N, d_out) from the latent, column-parallel where the output is on `tensor`."""
    factors = layer.tp_factors() if _tp_size_on(layer.axes[1], layer.d_out) > 1 else None
    if factors is None:
        return layer.decode(z_NxR, aux)
    up_RxO = factors[1].astype(z_NxR.dtype)
    if current_tp_impl() == "shard_map":
        return jax.shard_map(
            _column_parallel_up,
            in_specs=(P(), P(None, TP_AXIS)),
            out_specs=P(None, TP_AXIS),
            axis_names={TP_AXIS},
        )(z_NxR, up_RxO)
    return z_NxR @ jax.lax.with_sharding_constraint(up_RxO, P(None, TP_AXIS))


def _row_parallel_down(x_local_NxI: jax.Array, down_local_IxR: jax.Array) -> jax.Array:
    return jax.lax.psum(x_local_NxI @ down_local_IxR, TP_AXIS)  # the all-reduce is r wide


def _column_parallel_up(z_NxR: jax.Array, up_local_RxO: jax.Array) -> jax.Array:
    # z is the same on every tensor shard; its cotangent is psum'd (r wide) by shard_map's transpose.
    return z_NxR @ up_local_RxO
