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
from lax_pretrain.layers.registry import Kind, register_kind
from lax_pretrain.layers.spec import LinearSpec, SpecError, balanced_factors
from lax_pretrain.nnx_compat import param

CORE_AXES = ("tt_rank", "tt_mode", "tt_rank")
TT_ORDERS = ("auto", "factor_first", "sequential")
# The TT kind's own spec fields (docs/methods.md 1.1):
#   rank: without explicit modes, the latent bond of `tt_shape(d_in, d_out, rank)` (so a TT config follows
#       width overrides).
#   tt_in_modes, tt_out_modes, tt_ranks: the TT shape; prod(in) = d_in, prod(out) = d_out, ranks include the
#       leading and trailing 1 (len = len(in) + len(out) + 1). The bond after the last input core is the latent.
#   intra: TT intra-layer LaX (4 cores): the first input intermediate is added after the first output core.
#   intra_gate: the official `IntraResGate`: the intermediate (N, n_2, r_1) passes through a mode gate (n_2, m_1)
#       and a rank gate (r_1, r_3) before it is added (needs intra).
#   tt_order: the contraction order; 'auto' = factor-first unless intra-layer LaX needs per-token intermediates.
TT_FIELDS = {
    "rank": None,
    "tt_in_modes": (),
    "tt_out_modes": (),
    "tt_ranks": (),
    "intra": False,
    "intra_gate": False,
    "tt_order": "auto",
}
ATTENTION_PROJECTIONS = ("q", "k", "v", "o")


def sequential(spec: LinearSpec) -> bool:
    """Whether a TT layer contracts core by core (needed for intra-layer LaX)."""
    return spec.intra if spec.tt_order == "auto" else spec.tt_order == "sequential"


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
        return None if sequential(self.spec) else (self.input_factor(), self.output_factor())

    def encode(self, x_NxI: jax.Array) -> tuple[jax.Array, Any]:
        if not sequential(self.spec):
            return x_NxI @ self.input_factor().astype(x_NxI.dtype), None
        cores = [c.astype(x_NxI.dtype) for c in self._cores()]
        state = x_NxI.reshape(-1, *self.spec.tt_in_modes)  # (N, n_1, .., n_p)
        state = jnp.tensordot(state, cores[0][0], axes=([1], [0]))  # (N, n_2, .., n_p, r_1)
        first_intermediate = state
        for core in cores[1 : self.p]:  # contract n_k and r_{k-1}
            state = jnp.tensordot(state, core, axes=([1, state.ndim - 1], [1, 0]))
        return state, first_intermediate  # (N, r_p)

    def decode(self, z_NxR: jax.Array, first_intermediate: Any) -> jax.Array:
        if not sequential(self.spec):
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
    if not sequential(spec):
        return 2 * r[p] * (math.prod(n) + math.prod(m))
    flops = 0
    for k in range(p):  # core k consumes mode n_k; the modes after it are still pending
        flops += 2 * math.prod(n[k + 1 :]) * r[k] * n[k] * r[k + 1]
    for j in range(len(m)):  # output core j creates mode m_j next to the m_1..m_{j-1} already made
        flops += 2 * math.prod(m[:j]) * r[p + j] * m[j] * r[p + j + 1]
    return flops


def cap_tt_ranks(
    in_modes: tuple[int, ...], out_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> tuple[int, ...]:
    """Caps each TT bond by the largest rank it can carry: r_k <= r_{k-1} s_k (left sweep) and
    r_k <= s_{k+1} r_{k+1} (right sweep), which also bounds it by the unfolding sizes. More adds nothing."""
    modes = tuple(in_modes) + tuple(out_modes)
    capped = [1, *ranks[1:-1], 1]
    for k in range(1, len(modes)):
        capped[k] = min(capped[k], capped[k - 1] * modes[k - 1])
    for k in range(len(modes) - 1, 0, -1):
        capped[k] = min(capped[k], modes[k] * capped[k + 1])
    return tuple(capped)


def tt_shape(d_in: int, d_out: int, r_mid: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A 4-core TT shape in the official layout: input modes descending, output ascending (768 -> [32, 24 | 24, 32]),
    outer ranks as large as the unfoldings allow, the latent bond `r_mid`."""
    f0, f1 = balanced_factors(d_in)
    g0, g1 = balanced_factors(d_out)
    in_modes, out_modes = (f1, f0), (g0, g1)
    return in_modes, out_modes, cap_tt_ranks(in_modes, out_modes, (1, f1, r_mid, g1, 1))


def _validate_tt(s: LinearSpec, d_in: int, d_out: int, where: str) -> None:
    if not s.tt_in_modes or not s.tt_out_modes:
        raise SpecError(f"{where}.tt_in_modes/tt_out_modes must be given for kind 'tt'")
    for key, modes in (("tt_in_modes", s.tt_in_modes), ("tt_out_modes", s.tt_out_modes)):
        if any(m < 1 for m in modes):
            raise SpecError(f"{where}.{key}={list(modes)} must be positive")
    if math.prod(s.tt_in_modes) != d_in:
        raise SpecError(
            f"{where}.tt_in_modes={list(s.tt_in_modes)} multiply to {math.prod(s.tt_in_modes)}, "
            f"not d_in={d_in}"
        )
    if math.prod(s.tt_out_modes) != d_out:
        raise SpecError(
            f"{where}.tt_out_modes={list(s.tt_out_modes)} multiply to {math.prod(s.tt_out_modes)}, "
            f"not d_out={d_out}"
        )
    n_cores = len(s.tt_in_modes) + len(s.tt_out_modes)
    if len(s.tt_ranks) != n_cores + 1:
        raise SpecError(
            f"{where}.tt_ranks={list(s.tt_ranks)} must have {n_cores + 1} entries (one per bond of "
            f"{n_cores} cores, including the leading and trailing 1)"
        )
    if s.tt_ranks[0] != 1 or s.tt_ranks[-1] != 1:
        raise SpecError(f"{where}.tt_ranks={list(s.tt_ranks)} must start and end with 1")
    if any(r < 1 for r in s.tt_ranks):
        raise SpecError(f"{where}.tt_ranks={list(s.tt_ranks)} must be positive")
    modes = (*s.tt_in_modes, *s.tt_out_modes)
    for k in range(1, n_cores):
        # Bond k joins cores 0..k-1 to cores k..; the unfolding it factorizes is that big, so a wider bond
        # only adds parameters.
        full = min(math.prod(modes[:k]), math.prod(modes[k:]))
        if s.tt_ranks[k] > full:
            raise SpecError(
                f"{where}.tt_ranks={list(s.tt_ranks)}: bond {k} ({s.tt_ranks[k]}) is wider than the full rank "
                f"{full} of the unfolding it splits (modes {list(modes[:k])} | {list(modes[k:])})"
            )
    if s.intra:
        p = len(s.tt_in_modes)
        if p != 2 or len(s.tt_out_modes) != 2:
            raise SpecError(
                f"{where}.intra=True needs 4 TT cores (2 input + 2 output modes), got "
                f"{list(s.tt_in_modes)} | {list(s.tt_out_modes)}"
            )
        n2, m1 = s.tt_in_modes[1], s.tt_out_modes[0]
        r1, r3 = s.tt_ranks[1], s.tt_ranks[3]
        if n2 != m1 or r1 != r3:
            raise SpecError(
                f"{where}.intra=True needs tt_in_modes[1] == tt_out_modes[0] and "
                f"tt_ranks[1] == tt_ranks[3], got {n2} vs {m1} and {r1} vs {r3}"
            )


def check_tt(spec: LinearSpec, d_in: int, d_out: int, where: str) -> LinearSpec:
    """The TT shape (explicit, or `tt_shape` from the rank), its bonds, and intra-layer LaX's needs."""
    shape = {
        k: tuple(int(v) for v in (getattr(spec, k) or ()))
        for k in ("tt_in_modes", "tt_out_modes", "tt_ranks")
    }
    spec = spec.replace(**shape)
    if spec.tt_order not in TT_ORDERS:
        raise SpecError(f"{where}.tt_order={spec.tt_order!r} is not one of {', '.join(TT_ORDERS)}")
    if not any(shape.values()):
        if spec.rank is None or int(spec.rank) < 1:
            raise SpecError(
                f"{where}.rank={spec.rank!r}: kind 'tt' needs tt_in_modes/tt_out_modes/tt_ranks or a "
                "rank >= 1 (the latent bond of the default 4-core `tt_shape`)"
            )
        if spec.rank > min(d_in, d_out):
            raise SpecError(
                f"{where}.rank={spec.rank} exceeds min(d_in, d_out)={min(d_in, d_out)}: the latent TT bond "
                "splits the input modes from the output modes, whose unfolding has at most that rank"
            )
        in_modes, out_modes, ranks = tt_shape(d_in, d_out, int(spec.rank))
        spec = spec.replace(tt_in_modes=in_modes, tt_out_modes=out_modes, tt_ranks=ranks)
    _validate_tt(spec, d_in, d_out, where)
    if spec.intra_gate and not spec.intra:
        raise SpecError(f"{where}.intra_gate=True gates the intra-layer skip: it needs intra=True")
    if spec.intra and spec.tt_order == "factor_first":
        raise SpecError(
            f"{where}.intra=True needs per-token intermediates: tt_order must be 'sequential' or 'auto'"
        )
    return spec


def tt_overrides(
    rank: int,
    projection: str,
    *,
    official_tt: dict | None = None,
    intra: tuple[bool, bool] = (False, False),
    **context: Any,
) -> dict[str, Any]:
    """A preset's `rank=` as the latent bond (the spec derives `tt_shape` from the widths, so width overrides
    need no TT overrides), or the official ViT shapes where given; intra-layer LaX as released: the square
    attention projections only (n_2 == m_1, r_1 == r_3)."""
    group = "attn" if projection in ATTENTION_PROJECTIONS else projection
    if official_tt and group in official_tt:
        in_modes, out_modes, ranks = official_tt[group]
        out = {"tt_in_modes": list(in_modes), "tt_out_modes": list(out_modes), "tt_ranks": list(ranks)}
    else:
        out = {"rank": rank}
    attention = projection in ATTENTION_PROJECTIONS
    return {**out, "intra": intra[0] and attention, "intra_gate": intra[1] and attention}


register_kind(
    "tt",
    Kind(
        layer=TTLinear,
        fields=TT_FIELDS,
        check=check_tt,
        latent_dim=lambda spec: spec.tt_ranks[len(spec.tt_in_modes)],
        config_keys=("rank", "intra", "intra_gate"),
        overrides=tt_overrides,
        exports=frozenset({"hf_llama"}),
    ),
)
