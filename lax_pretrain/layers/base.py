"""The flow shared by every factorized kind: encode -> (LaX crossing) -> activate -> decode (+ bias).

Subclasses (svd, cola, tt) only say how to reach the latent (`encode`) and how to leave it (`decode`);
crossing, norm, bias, latent tagging and the analytic counts of those parts live here, once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lax_pretrain.layers import init
from lax_pretrain.layers.broadcast import trailing
from lax_pretrain.layers.crossing import make_gate, make_latent_norm
from lax_pretrain.layers.spec import LinearSpec
from lax_pretrain.nnx_compat import param
from lax_pretrain.parallel import tp

ACTIVATIONS = {"silu": jax.nn.silu, "gelu": lambda u: jax.nn.gelu(u, approximate=False), "relu": jax.nn.relu}

# Name under which every latent is tagged, so a remat policy can save exactly the latents (CoLA-M).
LATENT_NAME = "lax_latent"


class LinearBase(nnx.Module):
    """What every kind shares: widths, spec, logical axes, compute dtype, the optional output bias."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        spec: LinearSpec,
        *,
        rngs: nnx.Rngs,
        axes: tuple[str, str],
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        name: str = "spec",
    ):
        self.d_in, self.d_out, self.spec, self.name = d_in, d_out, spec, name
        self.axes = tuple(axes)  # logical names of (input, output): where tensor parallelism splits them
        self.dtype = dtype
        if spec.use_bias:
            self.bias = param(init.bias(rngs.params(), spec, d_out, param_dtype), (axes[1],))

    def weight(self, p: nnx.Param) -> jax.Array:
        """A parameter's value in the compute dtype."""
        v = p[...]
        return v.astype(self.dtype) if self.dtype is not None else v

    def cast_input(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) if self.dtype is not None else x

    def add_bias(self, y: jax.Array) -> jax.Array:
        return y + trailing(self.bias[...], y) if self.spec.use_bias else y

    @property
    def bias_param_count(self) -> int:
        return self.d_out if self.spec.use_bias else 0


class FactorizedLinear(LinearBase):
    """Base of the kinds that have a latent. `__call__(x, latent_in=None) -> (y, latent_out)`.

    A kind defines `encode(x_NxI) -> (u_NxR, aux)` (the pre-crossing latent and whatever `decode` needs),
    `decode(z_NxR, aux) -> y_NxO` (no bias), and the analytic
    `core_param_count` / `core_flops_per_token` of its factors. Kinds whose encode/decode are plain matmuls
    expose their factors through `tp_factors()` for the explicit tensor-parallel path (lax_pretrain.parallel.tp).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        spec: LinearSpec,
        *,
        rngs: nnx.Rngs,
        axes: tuple[str, str],
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        name: str = "spec",
    ):
        super().__init__(
            d_in, d_out, spec, rngs=rngs, axes=axes, dtype=dtype, param_dtype=param_dtype, name=name
        )
        if spec.crossed:
            self.gate = make_gate(spec, rngs=rngs, param_dtype=param_dtype)
            self.latent_norm = make_latent_norm(spec, param_dtype=param_dtype)

    def activate(self, u: jax.Array) -> jax.Array:
        """The latent activation (official `LatentAct`): CoLA's definition, optional for svd and tt."""
        return ACTIVATIONS[self.spec.activation](u) if self.spec.latent_act else u

    def tp_factors(self) -> tuple[jax.Array, jax.Array] | None:
        """(down (d_in, r), up (r, d_out)) when encode/decode are x @ down and z @ up; None otherwise."""
        return None

    def __call__(self, x: jax.Array, latent_in: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        x = self.cast_input(x)
        lead = x.shape[:-1]
        u, aux = tp.encode(self, x.reshape(-1, self.d_in))  # self.encode, tensor-parallel per the mesh
        if self.spec.crossed:
            if latent_in is None:
                raise ValueError(
                    f"{self.name}: crossing={self.spec.crossing!r} needs latent_in, the latent of the "
                    "same projection in the previous block (block 0 must be built with crossing 'none')"
                )
            z_prev = latent_in.reshape(-1, latent_in.shape[-1]).astype(u.dtype)
            u = u + (self.gate(z_prev) if self.gate is not None else z_prev)
            if self.latent_norm is not None:
                u = self.latent_norm(u)
        z = checkpoint_name(self.activate(u), LATENT_NAME)
        y = self.add_bias(tp.decode(self, z, aux))
        return y.reshape(*lead, self.d_out), z.reshape(*lead, z.shape[-1])

    @property
    def lax_param_count(self) -> int:
        """Parameters LaX adds: the crossing gate and latent norm (and, for TT, the intra-layer gates)."""
        if not self.spec.crossed:
            return 0
        return sum(m.param_count for m in (self.gate, self.latent_norm) if m is not None)

    @property
    def lax_flops_per_token(self) -> int:
        return self.gate.flops_per_token if self.spec.crossed and self.gate is not None else 0

    @property
    def param_count(self) -> int:
        return self.core_param_count + self.bias_param_count + self.lax_param_count

    @property
    def flops_per_token(self) -> int:
        """Forward matmul FLOPs per token (multiply-add = 2), including the gates."""
        return self.core_flops_per_token + self.lax_flops_per_token
