"""Plain low-rank: h = x A (the latent), y = h B + b, with A = `down` (d_in, r) and B = `up` (r, d_out)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import init
from lax_pretrain.layers.base import FactorizedLinear
from lax_pretrain.layers.registry import Kind, register_kind
from lax_pretrain.layers.spec import LinearSpec, SpecError
from lax_pretrain.nnx_compat import param


def check_rank(spec: LinearSpec, d_in: int, d_out: int, where: str) -> LinearSpec:
    """The latent width r of a two-factor kind: an integer in [1, min(d_in, d_out)]."""
    if spec.rank is None or not isinstance(spec.rank, int) or spec.rank < 1:
        raise SpecError(f"{where}.rank must be an integer >= 1 for kind {spec.kind!r}, got {spec.rank!r}")
    if spec.rank > min(d_in, d_out):
        raise SpecError(
            f"{where}.rank={spec.rank} exceeds min(d_in, d_out)={min(d_in, d_out)}, the full rank of the "
            f"{d_in} -> {d_out} map: a factorization wider than that only adds parameters"
        )
    return spec


def rank_override(rank: int, projection: str, **context: Any) -> dict[str, Any]:
    """A preset's `rank=` becomes every projection's rank."""
    return {"rank": rank}


def low_rank_kind(layer: type, **changes: Any) -> Kind:
    """The entry of a kind with two factors x A -> B and a latent of width `rank` (svd, cola)."""
    defaults = dict(fields={"rank": None}, check=check_rank, latent_dim=_rank, overrides=rank_override)
    return Kind(layer=layer, **{**defaults, **changes})


def _rank(spec: LinearSpec) -> int:
    return spec.rank


class LowRank(FactorizedLinear):
    """The two factors shared by svd and cola."""

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
        down, up = init.low_rank_factors(rngs.params(), spec, d_in, d_out, param_dtype)
        self.down = param(down, (axes[0], "rank"))
        self.up = param(up, ("rank", axes[1]))

    def encode(self, x_NxI: jax.Array) -> tuple[jax.Array, None]:
        return x_NxI @ self.weight(self.down).astype(x_NxI.dtype), None

    def decode(self, z_NxR: jax.Array, aux: None) -> jax.Array:
        return z_NxR @ self.weight(self.up).astype(z_NxR.dtype)

    def tp_factors(self) -> tuple[jax.Array, jax.Array]:
        return self.weight(self.down), self.weight(self.up)

    @property
    def core_param_count(self) -> int:
        return self.spec.rank * (self.d_in + self.d_out)

    @property
    def core_flops_per_token(self) -> int:
        return 2 * self.spec.rank * (self.d_in + self.d_out)


class SVDLinear(LowRank):
    def materialize(self) -> jax.Array:
        """The (d_in, d_out) kernel A B (bias excluded); only without a latent activation."""
        if not self.spec.is_linear:
            raise ValueError(
                f"{self.name}: an svd layer with latent_act=True is not a linear map; "
                "it has no kernel to materialize"
            )
        return self.down[...] @ self.up[...]


register_kind("svd", low_rank_kind(SVDLinear, exports=frozenset({"hf_llama", "cola", "lax"})))
