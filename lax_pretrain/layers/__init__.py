"""Factorized linear maps with LaX crossing, built by one factory.

    layer = make_linear(768, 768, {"kind": "cola", "rank": 192, "crossing": "kron"}, rngs=nnx.Rngs(0))
    y, latent = layer(x, latent_in=previous_block_latent)

Every kind returns `(y, latent_out)`, has analytic `param_count` / `flops_per_token`, logical axis names on
its parameters, and (linear kinds) `materialize()`. Kinds and LaX gates are registries (layers/registry.py):
each built-in module registers itself when imported here; `register_kind` / `register_gate` add more.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

# isort: off
# The built-in kinds register in this order (the order every list of kinds shows): dense, svd, cola, tt.
from lax_pretrain.layers.dense import DenseLinear
from lax_pretrain.layers.svd import SVDLinear
from lax_pretrain.layers.cola import CoLALinear
from lax_pretrain.layers.tt import TTLinear, cap_tt_ranks, tt_shape

# isort: on
from lax_pretrain.layers.base import LATENT_NAME, FactorizedLinear
from lax_pretrain.layers.crossing import DenseGate, KronGate
from lax_pretrain.layers.norm import Norm
from lax_pretrain.layers.registry import (
    GATES,
    KINDS,
    Gate,
    Kind,
    crossings,
    linear_config_fields,
    register_gate,
    register_kind,
)
from lax_pretrain.layers.spec import LinearSpec, SpecError, balanced_factors, validate

# Any registered kind's layer (the built-ins importing above registered dense, svd, cola, tt).
Linear = nnx.Module


def make_linear(
    d_in: int,
    d_out: int,
    spec: Any,
    *,
    rngs: nnx.Rngs,
    axes: tuple[str, str] = ("embed", "mlp"),
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    name: str = "spec",
) -> Linear:
    """Builds the (d_in -> d_out) map described by `spec` (dict, ConfigDict or LinearSpec).

    axes: logical names of the input and output dimensions (e.g. ('embed', 'heads') for q, ('mlp', 'embed')
        for the MLP down-projection); latents and gates use 'rank'.
    dtype: compute dtype (None: that of the input); param_dtype: storage dtype.
    name: where the spec lives in the config, used in error messages (e.g. 'model.attn').
    """
    s = validate(spec, d_in, d_out, where=name)
    return KINDS.get(s.kind, key=f"{name}.kind").layer(
        d_in, d_out, s, rngs=rngs, axes=tuple(axes), dtype=dtype, param_dtype=param_dtype, name=name
    )


__all__ = [
    "LATENT_NAME",
    "GATES",
    "KINDS",
    "Gate",
    "Kind",
    "CoLALinear",
    "DenseGate",
    "DenseLinear",
    "FactorizedLinear",
    "KronGate",
    "Linear",
    "Norm",
    "LinearSpec",
    "SVDLinear",
    "SpecError",
    "TTLinear",
    "balanced_factors",
    "cap_tt_ranks",
    "crossings",
    "linear_config_fields",
    "make_linear",
    "register_gate",
    "register_kind",
    "tt_shape",
    "validate",
]
