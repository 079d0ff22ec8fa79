"""From a model config to the spec of "projection p of block l": the only place models touch the factory.

`model.linear` holds the keys shared by every projection (kind, rank, crossing, init, ...);
`model.proj.<name>` overrides them per projection (TT modes and ranks, a different rank). Block 0 is built
with crossing 'none', so it has no unused gate or latent-norm parameters.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import Linear, make_linear

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str, key: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"{key}={name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def projection_spec(model_cfg: Any, name: str, *, first: bool) -> dict[str, Any]:
    spec = dict(model_cfg.linear)
    overrides = model_cfg.get("proj", {}) or {}
    spec.update(dict(overrides.get(name, {}) or {}))
    if first:
        spec["crossing"] = "none"
    return spec


def make_projection(
    model_cfg: Any, name: str, d_in: int, d_out: int, axes: tuple[str, str], *, first: bool, rngs: nnx.Rngs
) -> Linear:
    return make_linear(
        d_in,
        d_out,
        projection_spec(model_cfg, name, first=first),
        rngs=rngs,
        axes=axes,
        dtype=dtype_of(model_cfg.dtype, "model.dtype"),
        param_dtype=dtype_of(model_cfg.param_dtype, "model.param_dtype"),
        name=f"model.proj.{name}",
    )
