"""The pieces GaLore, Fira and APOLLO share: which parameters are projected, on which side, the projectors (an SVD
of the gradient, or a random matrix), the channel / tensor scaling and the norm-growth limiter.

Layout. Our kernels are (..., d_in, d_out): the transpose of the authors' PyTorch weight (d_out, d_in). Their
rule, on W = K^T of shape (m, n), projects the smaller side, the input side on a tie (m >= n: R = G P^T with
P = Vh[:r]; m < n: R = P^T G with P = U[:, :r]). On K that is: project the rows (d_in) where d_in <= d_out
(`left`: R = P^T G, P of shape (d_in, r)), else the columns (R = G P, P of shape (d_out, r)). Every projector
is stored as (..., k, r): k the side it projects, sharded as the parameter's axis of that size.

Leading axes are layers (a scanned stack is (L, d_in, d_out)): every function here works per matrix over them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Parameters the authors' scripts project: the weights of nn.Linear modules whose name contains "attn" or "mlp".
# Here: dense kernels and the svd/cola factors of the attention and MLP projections; TT cores (3-D), LaX gates,
# norms, biases, embeddings and the head stay in the plain AdamW group.
PROJECTED_BLOCKS = ("attn", "mlp")
PROJECTED_LEAVES = ("kernel", "down", "up")
# Fira's and APOLLO's norm-growth limiter: the limited term's norm grows at most 1.01x per step (both codes).
NORM_GROWTH_LIMIT = 1.01
# The authors' guard in the scaling factors' denominators (both codes).
SCALING_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """How one projected parameter is handled: `left` projects axis -2 (d_in), else axis -1 (d_out)."""

    left: bool
    rank: int

    def projector_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        *lead, a, b = shape
        return (*lead, a if self.left else b, self.rank)

    def low_rank_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        *lead, a, b = shape
        return (*lead, self.rank, b) if self.left else (*lead, a, self.rank)


def is_projected(names: Sequence[str], ndim: int) -> bool:
    """Whether the parameter at this path of attribute names is a 2-D weight (per layer) the authors project."""
    return (
        ndim >= 2 and names[-1] in PROJECTED_LEAVES and any(block in names[:-1] for block in PROJECTED_BLOCKS)
    )


def plan_leaf(names: Sequence[str], shape: Sequence[int], rank: int, *, clip_rank: bool) -> LeafPlan | None:
    """None for a plain AdamW parameter. `clip_rank`: r = min(rank, d_in, d_out), as an SVD's rank is (GaLore,
    Fira); APOLLO's random projection keeps the rank it is given."""
    if not is_projected(names, len(shape)):
        return None
    a, b = shape[-2], shape[-1]
    return LeafPlan(left=a <= b, rank=min(rank, a, b) if clip_rank else rank)


def project(g: jax.Array, projector: jax.Array, left: bool) -> jax.Array:
    """The low-rank gradient: P^T G (r, d_out) or G P (d_in, r), per matrix."""
    if left:
        return jnp.einsum("...kr,...kb->...rb", projector, g)
    return jnp.einsum("...ak,...kr->...ar", g, projector)


def project_back(low: jax.Array, projector: jax.Array, left: bool) -> jax.Array:
    """P N (d_in, d_out) from N (r, d_out), or N P^T from N (d_in, r)."""
    if left:
        return jnp.einsum("...kr,...rb->...kb", projector, low)
    return jnp.einsum("...ar,...kr->...ak", low, projector)


def canonical_signs(p_KxR: jax.Array) -> jax.Array:
    """Singular vectors are defined up to sign: each column is flipped so that its largest-magnitude entry is
    positive (scikit-learn's `svd_flip` rule), so the projector, and the moments carried across a refresh,
    do not depend on the LAPACK / cuSOLVER build that computed the SVD."""
    idx = jnp.argmax(jnp.abs(p_KxR), axis=-2, keepdims=True)
    sign = jnp.sign(jnp.take_along_axis(p_KxR, idx, axis=-2))
    return p_KxR * jnp.where(sign == 0, 1, sign)


def svd_projector(g: jax.Array, plan: LeafPlan) -> jax.Array:
    """GaLore's projector: the top-r left (or right) singular vectors of the gradient, from a float32 SVD,
    cast back to the gradient's dtype. One SVD per matrix of the leading (layer) axes, unrolled: a batched
    SVD deadlocked XLA:CPU in a scanned model's step on 8 devices (a refresh is rare; the unrolled calls cost
    compile time, not step time)."""
    matrices = g.reshape(-1, *g.shape[-2:]).astype(jnp.float32)
    projectors = []
    for m in matrices:
        u, _, vh = jnp.linalg.svd(m, full_matrices=False)
        projectors.append(u[:, : plan.rank] if plan.left else vh[: plan.rank].T)
    p = jnp.stack(projectors).reshape(plan.projector_shape(g.shape))
    return canonical_signs(p).astype(g.dtype)


def random_projector(key: jax.Array, g: jax.Array, plan: LeafPlan) -> jax.Array:
    """APOLLO's projector: standard normal / sqrt(r), drawn from `key` (the authors draw it from a
    torch.Generator seeded per parameter: the same distribution, not the same numbers)."""
    shape = plan.projector_shape(g.shape)
    return (jax.random.normal(key, shape, jnp.float32) / math.sqrt(plan.rank)).astype(g.dtype)


def channel_ratio(n_low: jax.Array, r_low: jax.Array, left: bool) -> jax.Array:
    """||N|| / (||R|| + 1e-8) over the rank axis: one factor per channel of the side not projected, shaped to
    broadcast over the full gradient ((..., 1, d_out) or (..., d_in, 1))."""
    axis = -2 if left else -1
    norm = lambda x: jnp.linalg.norm(x, axis=axis, keepdims=True)  # noqa: E731
    return norm(n_low) / (norm(r_low) + SCALING_EPS)


def tensor_ratio(n_low: jax.Array, r_low: jax.Array) -> jax.Array:
    """APOLLO-Mini's tensor-wise factor: Frobenius norms per matrix, shaped (..., 1, 1)."""
    norm = lambda x: jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)  # noqa: E731
    return norm(n_low) / (norm(r_low) + SCALING_EPS)


def limit_norm_growth(s: jax.Array, previous: jax.Array, first: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Fira's norm-growth limiter, per matrix: the first step only records ||S||; later ones divide S by
    l = max(||S|| / (previous + 1e-8), 1.01) / 1.01 and record ||S|| / l. `previous` and the returned norm are
    shaped as the leading axes."""
    norm = jnp.linalg.norm(s, axis=(-2, -1))
    limiter = jnp.maximum(norm / (previous + SCALING_EPS), NORM_GROWTH_LIMIT) / NORM_GROWTH_LIMIT
    limiter = jnp.where(first, jnp.ones_like(limiter), limiter)
    return s / limiter[..., None, None].astype(s.dtype), norm / limiter
