"""LaX (latent crossing): the gates that map the previous block's latent, and the latent norm after them.

Per projection p and block l >= 1 (docs/methods.md 3.2):
    u = encode(x) + gate(z_{l-1}^p);  u = latent_norm(u);  z_l^p = act(u);  y = decode(z_l^p) + b
The latent passed on (z) is taken after the norm and the activation. Block 0 has no gate and no norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import init
from lax_pretrain.layers.broadcast import trailing
from lax_pretrain.layers.norm import Norm
from lax_pretrain.layers.spec import LinearSpec, balanced_factors
from lax_pretrain.nnx_compat import param

LATENT_NORM_EPS = 1e-6


class KronGate(nnx.Module):
    """z -> z @ kron(g1, g0): per token, X = z viewed as (f0, f1) row-major, output vec_row(g1^T X g0)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.f0, self.f1 = balanced_factors(width)
        self.g0 = param(
            init.kaiming_uniform(rngs.params(), (self.f1, self.f1), self.f1, param_dtype), ("rank", "rank")
        )
        self.g1 = param(
            init.kaiming_uniform(rngs.params(), (self.f0, self.f0), self.f0, param_dtype), ("rank", "rank")
        )

    def __call__(self, z_NxR: jax.Array) -> jax.Array:
        x = z_NxR.reshape(*z_NxR.shape[:-1], self.f0, self.f1)
        g1, g0 = self.g1[...].astype(z_NxR.dtype), self.g0[...].astype(z_NxR.dtype)
        # Two small matmuls instead of the r x r Kronecker product: 2 r (f0 + f1) FLOPs per token.
        y = jnp.einsum("...ab,bd->...ad", x, g0)
        y = jnp.einsum("...ad,ac->...cd", y, g1)
        return y.reshape(z_NxR.shape)

    @property
    def param_count(self) -> int:
        return self.f0**2 + self.f1**2

    @property
    def flops_per_token(self) -> int:
        return 2 * self.f0 * self.f1 * (self.f0 + self.f1)


class DenseGate(nnx.Module):
    """A full linear map between latents (allows different widths): trunc-normal(0.02) kernel, zero bias."""

    def __init__(self, in_width: int, width: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.in_width, self.width = in_width, width
        self.kernel = param(
            init.truncated_normal(rngs.params(), (in_width, width), 0.02, param_dtype), ("rank", "rank")
        )
        self.bias = param(jnp.zeros((width,), param_dtype), ("rank",))

    def __call__(self, z_NxR: jax.Array) -> jax.Array:
        y_NxR = z_NxR @ self.kernel[...].astype(z_NxR.dtype)
        return y_NxR + trailing(self.bias[...], y_NxR)

    @property
    def param_count(self) -> int:
        return (self.in_width + 1) * self.width

    @property
    def flops_per_token(self) -> int:
        return 2 * self.in_width * self.width


def make_gate(spec: LinearSpec, *, rngs: nnx.Rngs, param_dtype=jnp.float32) -> KronGate | DenseGate | None:
    """The gate of a crossing layer; None for the identity crossing (u + z, no parameters)."""
    width = spec.latent_dim
    if spec.crossing == "kron":
        return KronGate(width, rngs=rngs, param_dtype=param_dtype)
    if spec.crossing == "dense":
        return DenseGate(
            spec.latent_in_dim if spec.latent_in_dim is not None else width,
            width,
            rngs=rngs,
            param_dtype=param_dtype,
        )
    return None


def make_latent_norm(spec: LinearSpec, *, param_dtype=jnp.float32) -> Norm | None:
    """The norm over the latent after the crossing (crossing layers only), eps 1e-6."""
    if spec.latent_norm == "none":
        return None
    return Norm(
        spec.latent_dim, spec.latent_norm, eps=LATENT_NORM_EPS, axis_name="rank", param_dtype=param_dtype
    )
