"""The full-rank baseline: y = x W + b. No latent, so it never crosses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import init
from lax_pretrain.layers.spec import LinearSpec
from lax_pretrain.nnx_compat import param


class DenseLinear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, spec: LinearSpec, *, rngs: nnx.Rngs, axes: tuple[str, str],
                 dtype: Any = None, param_dtype: Any = jnp.float32, name: str = "spec"):
        self.d_in, self.d_out, self.spec, self.name, self.dtype = d_in, d_out, spec, name, dtype
        self.kernel = param(init.dense_kernel(rngs.params(), spec, d_in, d_out, param_dtype), axes)
        if spec.use_bias:
            self.bias = param(init.bias(rngs.params(), spec, d_out, param_dtype), (axes[1],))

    def __call__(self, x: jax.Array, latent_in: jax.Array | None = None) -> tuple[jax.Array, None]:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        y = x @ self.kernel[...].astype(x.dtype)
        if self.spec.use_bias:
            y = y + self.bias[...].astype(y.dtype)
        return y, None

    def materialize(self) -> jax.Array:
        return self.kernel[...]

    @property
    def param_count(self) -> int:
        return self.d_in * self.d_out + (self.d_out if self.spec.use_bias else 0)

    @property
    def flops_per_token(self) -> int:
        return 2 * self.d_in * self.d_out
