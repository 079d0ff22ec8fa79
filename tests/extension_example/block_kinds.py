"""An extension as a user writes it, outside the package: a block-diagonal factorization kind and the Lion
optimizer, each registered by name. `--import=tests/extension_example/block_kinds.py` makes `kind=blockdiag`
and `optim.name=lion` work in every command."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lax_pretrain.layers import Kind, LinearSpec, SpecError, register_kind
from lax_pretrain.layers.base import LinearBase
from lax_pretrain.nnx_compat import param
from lax_pretrain.optim import Optimizer, own_section, register_optimizer


class BlockDiagonal(LinearBase):
    """y = x blockdiag(W_1, .., W_k): k independent (d_in/k -> d_out/k) maps, k x fewer parameters."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        spec: LinearSpec,
        *,
        rngs: nnx.Rngs,
        axes,
        dtype=None,
        param_dtype=jnp.float32,
        name: str = "spec",
    ):
        super().__init__(
            d_in, d_out, spec, rngs=rngs, axes=axes, dtype=dtype, param_dtype=param_dtype, name=name
        )
        k = spec.blocks
        w_KxIxO = jax.random.normal(rngs.params(), (k, d_in // k, d_out // k), param_dtype)
        self.blocks = param(w_KxIxO / math.sqrt(d_in // k), (None, axes[0], axes[1]))

    def __call__(self, x: jax.Array, latent_in: jax.Array | None = None) -> tuple[jax.Array, None]:
        x = self.cast_input(x)
        k = self.spec.blocks
        x_NxKxI = x.reshape(-1, k, self.d_in // k)
        y_NxKxO = jnp.einsum("nki,kio->nko", x_NxKxI, self.weight(self.blocks).astype(x.dtype))
        return self.add_bias(y_NxKxO.reshape(*x.shape[:-1], self.d_out)), None

    @property
    def param_count(self) -> int:
        return self.d_in * self.d_out // self.spec.blocks + self.bias_param_count

    @property
    def flops_per_token(self) -> int:
        return 2 * self.d_in * self.d_out // self.spec.blocks


def check_blocks(spec: LinearSpec, d_in: int, d_out: int, where: str) -> LinearSpec:
    k = spec.blocks
    if not isinstance(k, int) or k < 1 or d_in % k or d_out % k:
        raise SpecError(f"{where}.blocks={k!r} must be an integer >= 1 dividing {d_in} and {d_out}")
    return spec


def build_lion(optim_cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    own = own_section(optim_cfg, "lion")
    return optax.lion(schedule, b1=own["b1"], b2=own["b2"], weight_decay=optim_cfg.weight_decay)


register_kind(
    "blockdiag",
    Kind(
        layer=BlockDiagonal,
        fields={"blocks": 1},
        check=check_blocks,
        overrides=lambda rank, projection, **context: {"blocks": 2},
    ),
)
register_optimizer(
    "lion",
    Optimizer(
        build=build_lion,
        hparams={"b1": 0.9, "b2": 0.99},
        sources={
            "optim.lion.b1": "Lion paper (arXiv 2302.06675)",
            "optim.lion.b2": "Lion paper (arXiv 2302.06675)",
        },
    ),
)
