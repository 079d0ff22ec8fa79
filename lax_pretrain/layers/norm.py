"""The one normalisation module: LayerNorm (scale and bias) or RMSNorm (scale), computed in float32.

Used for the LLaMA block norms (rmsnorm), the ViT block and MLP-hidden norms (layernorm) and LaX's latent norm
(either). Parameters are named `scale` and `bias` and carry the logical axis of the normalised dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers.broadcast import trailing
from lax_pretrain.nnx_compat import param

NORMS = ("layernorm", "rmsnorm")


class Norm(nnx.Module):
    def __init__(self, width: int, kind: str, *, eps: float, axis_name: str | None, param_dtype=jnp.float32):
        if kind not in NORMS:
            raise ValueError(f"norm kind {kind!r} is not one of {', '.join(NORMS)}")
        self.kind, self.width, self.eps = kind, width, eps
        self.scale = param(jnp.ones((width,), param_dtype), (axis_name,))
        if kind == "layernorm":
            self.bias = param(jnp.zeros((width,), param_dtype), (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        y = y * trailing(self.scale[...], y)
        if self.kind == "layernorm":
            y = y + trailing(self.bias[...], y)
        return y.astype(x.dtype)

    @property
    def param_count(self) -> int:
        return self.width * (2 if self.kind == "layernorm" else 1)
