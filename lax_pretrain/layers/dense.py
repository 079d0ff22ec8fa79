"""The full-rank baseline: y = x W + b. No latent, so it never crosses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import init
from lax_pretrain.layers.base import LinearBase
from lax_pretrain.layers.registry import Kind, register_kind
from lax_pretrain.layers.spec import LinearSpec
from lax_pretrain.nnx_compat import param


class DenseLinear(LinearBase):
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
        self.kernel = param(init.dense_kernel(rngs.params(), spec, d_in, d_out, param_dtype), axes)

    def __call__(self, x: jax.Array, latent_in: jax.Array | None = None) -> tuple[jax.Array, None]:
        x = self.cast_input(x)
        # As a 2-D (tokens, d_in) matmul, like the factorized kinds: XLA:CPU computes the kernel's gradient of
        # a (B, L, d_in) product ~8% slower (docs/benchmarks/README.md, issue 17).
        y = x.reshape(-1, self.d_in) @ self.kernel[...].astype(x.dtype)
        return self.add_bias(y.reshape(*x.shape[:-1], self.d_out)), None

    def materialize(self) -> jax.Array:
        return self.kernel[...]

    @property
    def param_count(self) -> int:
        return self.d_in * self.d_out + self.bias_param_count

    @property
    def flops_per_token(self) -> int:
        return 2 * self.d_in * self.d_out


register_kind("dense", Kind(layer=DenseLinear, exports=frozenset({"hf_llama"})))
