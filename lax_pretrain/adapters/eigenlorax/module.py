"""EigenLoRAx layers: frozen components C_A, C_B and one task's trainable loadings alpha_A, alpha_B.

`EigenLoRA` is the pure delta (x A_hat) B_hat of one module; `EigenLoRALinear` puts it next to a frozen factory
map: y = base(x) + delta(drop(x)), with no LoRA scale (docs/eigenlorax/method.md), transparent to the base's
latent. The components are `Frozen` variables, not nnx.Params, so an optimizer over nnx.Param never sees
them; the loadings are plain nnx.Params under the attribute EIGEN_ATTR, which is how `ADAPTER_PARAMS` finds
them.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from lax_pretrain.adapters.base import base_axes, check_base, merged_kernel
from lax_pretrain.adapters.eigenlorax.basis import Basis, f32, lora_factors
from lax_pretrain.adapters.eigenlorax.loadings import INIT_SCALE, Loadings, check_loadings, uniform_loadings
from lax_pretrain.adapters.signature import ArrayLike
from lax_pretrain.nnx_compat import AXES_KEY, param

EIGEN_ATTR = "eigenlora"  # attribute name of the EigenLoRA delta inside `EigenLoRALinear`


class Frozen(nnx.Variable):
    """A fixed EigenLoRAx component matrix: not an nnx.Param, so optimizers over nnx.Param never see it."""


def frozen(value: ArrayLike, axes: tuple[str | None, ...]) -> Frozen:
    return Frozen(f32(value), **{AXES_KEY: axes}, eager_sharding=False)


def eigenlora_delta(
    x: jax.Array, C_A: jax.Array, C_B: jax.Array, alpha_A: jax.Array, alpha_B: jax.Array
) -> jax.Array:
    """delta(x) = (x C_A alpha_A)(C_B alpha_B)^T for x (..., d_in); returns (..., d_out) in x's dtype.

    B_hat = alpha_B^T C_B^T is formed once (r K d_out flops, independent of the token count). On the A side
    the per-token cost is d_in min(K, r): with K < r project first, (x C_A) alpha_A; otherwise fold the
    loadings into A_hat = C_A alpha_A once and do x A_hat (the usual K >= r case; K=32, r=8: 4x fewer flops
    on x).
    """
    d_in, k_a = C_A.shape
    r = alpha_A.shape[1]
    if x.shape[-1] != d_in or alpha_A.shape[0] != k_a or alpha_B.shape != (C_B.shape[1], r):
        raise ValueError(
            f"shape mismatch: x {x.shape}, C_A {C_A.shape}, C_B {C_B.shape}, "
            f"alpha_A {alpha_A.shape}, alpha_B {alpha_B.shape} (expected alpha (K, r))"
        )
    dtype = x.dtype
    b_hat_RxO = (C_B @ alpha_B).T.astype(dtype)
    if k_a < r:
        h = (x @ C_A.astype(dtype)) @ alpha_A.astype(dtype)  # (..., r)
    else:
        h = x @ (C_A @ alpha_A).astype(dtype)
    return h @ b_hat_RxO


class EigenLoRA(nnx.Module):
    """One module's delta: frozen C_A, C_B (Frozen) and trainable loadings alpha_A, alpha_B (nnx.Param).

    Pure delta: `__call__(x)` returns (x A_hat) B_hat for x (..., d_in); the wrapper adds it to the frozen
    base map. `axes` are the logical names of (d_in, d_out), to shard the components like the base map.
    """

    def __init__(
        self,
        C_A: ArrayLike,
        C_B: ArrayLike,
        rank: int,
        *,
        rngs: nnx.Rngs | None = None,
        loadings: tuple[ArrayLike, ArrayLike] | None = None,
        unwind_shape: tuple[int, int] | None = None,
        axes: tuple[str | None, str | None] = (None, None),
        init_scale: float = INIT_SCALE,
    ):
        """unwind_shape = (d_in, d_out) selects the unwind ablation (C_A (d_in r, K), loadings (K, 1)).

        Loadings start U(-init_scale, init_scale) from `rngs`, or from `loadings` = (alpha_A, alpha_B) to
        warm-start (e.g. from `project`).
        """
        self.rank = rank
        self.unwind_shape = unwind_shape
        cols = 1 if unwind_shape else rank
        if unwind_shape:
            d_in, d_out = unwind_shape
            if C_A.shape[0] != d_in * rank or C_B.shape[0] != rank * d_out:
                raise ValueError(
                    f"unwind components {C_A.shape}, {C_B.shape} do not fit (d_in, d_out, r) = "
                    f"{(d_in, d_out, rank)}"
                )
            axes_a, axes_b = (None, None), (None, None)  # a component is a flattened whole factor
        else:
            axes_a, axes_b = (axes[0], None), (axes[1], None)
        k_a, k_b = C_A.shape[1], C_B.shape[1]
        if loadings is None:
            if rngs is None:
                raise ValueError("EigenLoRA needs rngs (random loadings) or loadings=(alpha_A, alpha_B)")
            alpha_a = uniform_loadings(rngs.params(), k_a, cols, init_scale)
            alpha_b = uniform_loadings(rngs.params(), k_b, cols, init_scale)
        else:
            alpha_a, alpha_b = map(f32, loadings)
            if alpha_a.shape != (k_a, cols) or alpha_b.shape != (k_b, cols):
                raise ValueError(
                    f"loadings of shapes {alpha_a.shape}, {alpha_b.shape}; expected "
                    f"{(k_a, cols)} and {(k_b, cols)}"
                )
        self.C_A = frozen(C_A, axes_a)
        self.C_B = frozen(C_B, axes_b)
        self.alpha_A = param(alpha_a, (None, None))  # tiny: replicated
        self.alpha_B = param(alpha_b, (None, None))

    @classmethod
    def from_basis(
        cls,
        basis: Basis,
        path: str,
        rank: int,
        *,
        rngs: nnx.Rngs | None = None,
        loadings: Loadings | None = None,
        axes: tuple[str | None, str | None] = (None, None),
        init_scale: float = INIT_SCALE,
    ) -> EigenLoRA:
        """The module for `path` of `basis`, optionally warm-started from a task's `loadings`."""
        c_a, c_b = basis.components(path)
        basis.loading_columns(rank)  # an unwind basis is for its own rank only
        pair = None
        if loadings is not None:
            check_loadings(basis, loadings)
            pair = (loadings.alpha_A[path], loadings.alpha_B[path])
        return cls(
            c_a,
            c_b,
            rank,
            rngs=rngs,
            loadings=pair,
            axes=axes,
            init_scale=init_scale,
            unwind_shape=tuple(basis.model_signature[path]) if basis.unwind else None,
        )

    def factors(self) -> tuple[jax.Array, jax.Array]:
        """(A_hat (d_in, r), B_hat (r, d_out)): the plain LoRA factors this module currently represents."""
        unwind_shape = (*self.unwind_shape, self.rank) if self.unwind_shape else None
        return lora_factors(
            self.C_A[...], self.C_B[...], self.alpha_A[...], self.alpha_B[...], unwind_shape=unwind_shape
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.unwind_shape:
            # components are whole factors: materialise them (d_in K r flops, once per call)
            a_hat_DxR, b_hat_RxO = self.factors()
            return (x @ a_hat_DxR.astype(x.dtype)) @ b_hat_RxO.astype(x.dtype)
        return eigenlora_delta(x, self.C_A[...], self.C_B[...], self.alpha_A[...], self.alpha_B[...])


class EigenLoRALinear(nnx.Module):
    """A frozen factory map plus an EigenLoRAx delta (frozen components, trainable loadings):
    y = base(x) + eigenlora(drop(x)). Transparent to the base's latent. Build with `from_basis`."""

    def __init__(
        self,
        base: nnx.Module,
        delta: EigenLoRA,
        *,
        dropout: float = 0.0,
        rngs: nnx.Rngs | None = None,
        name: str = "eigenlora",
    ):
        check_base(base)
        if dropout > 0 and rngs is None:
            raise ValueError(f"{name}: dropout needs rngs")
        self.base = base
        self.d_in, self.d_out, self.name = base.d_in, base.d_out, name
        self.rank = delta.rank
        setattr(self, EIGEN_ATTR, delta)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    @classmethod
    def from_basis(
        cls,
        base: nnx.Module,
        basis: Basis,
        path: str,
        rank: int,
        *,
        rngs: nnx.Rngs | None = None,
        loadings: Loadings | None = None,
        dropout: float = 0.0,
        init_scale: float = INIT_SCALE,
    ) -> EigenLoRALinear:
        dims = tuple(basis.model_signature[path]) if path in basis.model_signature else None
        if dims != (base.d_in, base.d_out):
            raise ValueError(
                f"model signature mismatch at {path}: the basis has (d_in, d_out) = {dims}, the model "
                f"({base.d_in}, {base.d_out})"
            )
        delta = EigenLoRA.from_basis(
            basis, path, rank, rngs=rngs, loadings=loadings, axes=base_axes(base), init_scale=init_scale
        )
        return cls(base, delta, dropout=dropout, rngs=rngs, name=path)

    @property
    def delta(self) -> EigenLoRA:
        return getattr(self, EIGEN_ATTR)

    def __call__(self, x: jax.Array, latent_in: Any = None) -> tuple[jax.Array, Any]:
        y, base_out = self.base(x, latent_in)
        x_in = self.dropout(x) if self.dropout is not None else x
        return y + self.delta(x_in).astype(y.dtype), base_out

    def factors(self) -> tuple[jax.Array, jax.Array]:
        """(A_hat (d_in, r), B_hat (r, d_out)); EigenLoRAx has no separate scale."""
        return self.delta.factors()

    def merge(self) -> jax.Array:
        """The dense (d_in, d_out) kernel W + A_hat B_hat (bias excluded)."""
        return merged_kernel(self.base, *self.factors(), "an EigenLoRAx adapter")

    @property
    def param_count(self) -> int:
        """Trainable loadings only (the components are frozen and shared)."""
        return self.delta.alpha_A[...].size + self.delta.alpha_B[...].size
