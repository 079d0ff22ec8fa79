"""Tensor-train linear map as used by LaX / CoMERA (docs/methods.md 1.1).

The weight reshaped to an order-(p+q) tensor with the input modes first, then the output modes, is a TT with
cores G_k of shape (r_{k-1}, s_k, r_k); flattening is row-major (the first mode is the slowest). The bond r_p
between the last input core and the first output core is the latent.

Two contraction orders compute the same function:
  factor-first  contract the input cores into L (d_in, r_p) and the output cores into R (r_p, d_out) once per
                call (batch-independent), then y = (x L) R: two GEMMs, 2 r_p (d_in + d_out) FLOPs per token.
  sequential    reshape x to (N, n_1, .., n_p) and contract core by core (the official LaX code); exposes the
                per-token intermediates that intra-layer LaX adds across the latent.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.layers import init
from lax_pretrain.layers.base import FactorizedLinear
from lax_pretrain.layers.spec import LinearSpec
from lax_pretrain.nnx_compat import param

CORE_AXES = ("tt_rank", "tt_mode", "tt_rank")


def chain(cores: list[jax.Array]) -> jax.Array:
    """Contracts consecutive cores over their shared bonds: (r_a, s_1, .., s_k, r_b)."""
    out = cores[0]
    for core in cores[1:]:
        out = jnp.tensordot(out, core, axes=([-1], [0]))
    return out


class TTLinear(FactorizedLinear):
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
        self.p = len(spec.tt_in_modes)
        self.cores = nnx.List(
            [param(c, CORE_AXES) for c in init.tt_cores(rngs.params(), spec, d_in, d_out, param_dtype)]
        )
        if (
            spec.intra_gate
        ):  # the official IntraResGate: (N, n_2, r_1) -> (N, m_1, r_3) through two small maps
            (n2, m1), (r1, r3) = self.intra_gate_shapes
            self.intra_mode_gate = param(
                init.kaiming_uniform(rngs.params(), (n2, m1), m1, param_dtype), ("tt_mode", "tt_mode")
            )
            self.intra_rank_gate = param(
                init.kaiming_uniform(rngs.params(), (r1, r3), r3, param_dtype), ("tt_rank", "tt_rank")
            )

    @property
    def intra_gate_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((n_2, m_1), (r_1, r_3)): the mode and rank maps of the gated intra-layer skip."""
        s = self.spec
        return (s.tt_in_modes[1], s.tt_out_modes[0]), (s.tt_ranks[1], s.tt_ranks[3])

    def _cores(self) -> list[jax.Array]:
        return [self.weight(c) for c in self.cores]

    def input_factor(self) -> jax.Array:
        """L (d_in, r_p): the input cores contracted."""
        return chain(self._cores()[: self.p]).reshape(self.d_in, -1)

    def output_factor(self) -> jax.Array:
        """R (r_p, d_out): the output cores contracted."""
        return chain(self._cores()[self.p :]).reshape(-1, self.d_out)

    def tp_factors(self) -> tuple[jax.Array, jax.Array] | None:
        return None if self.spec.sequential_tt else (self.input_factor(), self.output_factor())

    def encode(self, x_NxI: jax.Array) -> tuple[jax.Array, Any]:
        if not self.spec.sequential_tt:
            return x_NxI @ self.input_factor().astype(x_NxI.dtype), None
        cores = [c.astype(x_NxI.dtype) for c in self._cores()]
        state = x_NxI.reshape(-1, *self.spec.tt_in_modes)  # (N, n_1, .., n_p)
        state = jnp.tensordot(state, cores[0][0], axes=([1], [0]))  # (N, n_2, .., n_p, r_1)
        first_intermediate = state
        for core in cores[1 : self.p]:  # contract n_k and r_{k-1}
            state = jnp.tensordot(state, core, axes=([1, state.ndim - 1], [1, 0]))
        return state, first_intermediate  # (N, r_p)

    def decode(self, z_NxR: jax.Array, first_intermediate: Any) -> jax.Array:
        if not self.spec.sequential_tt:
            return z_NxR @ self.output_factor().astype(z_NxR.dtype)
        cores = [c.astype(z_NxR.dtype) for c in self._cores()[self.p :]]
        state = jnp.tensordot(z_NxR, cores[0], axes=([-1], [0]))  # (N, m_1, r_{p+1})
        if self.spec.intra_gate:  # gated intra-layer LaX: G_mode^T t1 G_rank per token
            mode_gate = self.weight(self.intra_mode_gate).astype(z_NxR.dtype)
            rank_gate = self.weight(self.intra_rank_gate).astype(z_NxR.dtype)
            state = state + jnp.einsum("nbc,cd,be->ned", first_intermediate, rank_gate, mode_gate)
        elif self.spec.intra:  # intra-layer LaX: (N, n_2, r_1) joins (N, m_1, r_3)
            state = state + first_intermediate
        for core in cores[1:]:
            state = jnp.tensordot(state, core, axes=([-1], [0]))  # (N, m_1, .., m_j, r)
        return state.reshape(-1, self.d_out)

    def materialize(self) -> jax.Array:
        """The (d_in, d_out) kernel L R of the cores (bias excluded). Intra-layer LaX makes the map differ from
        it; with a latent activation the layer is not linear, and there is none."""
        if self.spec.latent_act:
            raise ValueError(
                f"{self.name}: a TT layer with latent_act=True is not a linear map; it has no kernel "
                "to materialize"
            )
        return self.input_factor() @ self.output_factor()

    @property
    def core_param_count(self) -> int:
        modes, ranks = self.spec.tt_in_modes + self.spec.tt_out_modes, self.spec.tt_ranks
        return sum(ranks[k] * modes[k] * ranks[k + 1] for k in range(len(modes)))

    @property
    def lax_param_count(self) -> int:
        (n2, m1), (r1, r3) = self.intra_gate_shapes if self.spec.intra_gate else ((0, 0), (0, 0))
        return super().lax_param_count + n2 * m1 + r1 * r3

    @property
    def lax_flops_per_token(self) -> int:
        (n2, m1), (r1, r3) = self.intra_gate_shapes if self.spec.intra_gate else ((0, 0), (0, 0))
        # t1 (n_2, r_1) @ rank gate -> (n_2, r_3), then the mode gate -> (m_1, r_3); the skip's add is not a matmul.
        return super().lax_flops_per_token + 2 * n2 * r3 * (r1 + m1)

    @property
    def core_flops_per_token(self) -> int:
        return tt_flops_per_token(self.spec)


def tt_flops_per_token(spec: LinearSpec) -> int:
    """Per-token matmul FLOPs of a TT layer in its contraction order.

    Factor-first excludes contracting the cores into L and R: that is once per call, independent of tokens.
    """
    n, m, r = spec.tt_in_modes, spec.tt_out_modes, spec.tt_ranks
    p = len(n)
    if not spec.sequential_tt:
        return 2 * r[p] * (math.prod(n) + math.prod(m))
    flops = 0
    for k in range(p):  # core k consumes mode n_k; the modes after it are still pending
        flops += 2 * math.prod(n[k + 1 :]) * r[k] * n[k] * r[k + 1]
    for j in range(len(m)):  # output core j creates mode m_j next to the m_1..m_{j-1} already made
        flops += 2 * math.prod(m[:j]) * r[p + j] * m[j] * r[p + j + 1]
    return flops
