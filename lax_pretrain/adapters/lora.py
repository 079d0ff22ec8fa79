"""LoRA and LaX-LoRA wrappers around any frozen linear map of the factory (dense, svd, cola, tt).

Row-vector convention, s = alpha / r, A (d_in, r), B (r, d_out):

    LoRA        y = base(x) + s * (drop(x) A) B
    LaX-LoRA    y = base(x) + s * (drop(x) A_l + gate(h_{l-1})) B_l        (docs/methods.md 3.3)

(EigenLoRAx's wrapper, `EigenLoRALinear`, is in eigenlorax/module.py.)

Every wrapper keeps the factory contract `__call__(x, latent_in=None) -> (y, latent_out)`:
- LoRA and EigenLoRAx are transparent to latents: the base's latent goes in and comes out unchanged, so a
  wrapped projection can sit next to unwrapped ones and a LaX-crossed base keeps crossing.
- LaX-LoRA threads its own latent too: `latent_out = {"base": base latent, "lora": h_l}` and a block l >= 1
  expects the same dict from block l-1 (block 0 gets None and has no gate).

LaX-LoRA design choices (the paper's LaX-LoRA code was never released):
- h_l = x_l A_l, the adapter latent before the crossing (`lax_latent='own'`, default). This is the paper's
  definition of a latent (h_i = x_i A_i, so W_l = [A_l B_l; A_{l-1} B_l] on [x_l, x_{l-1}]).
  `lax_latent='crossed'` passes u_l = x_l A_l + gate(h_{l-1}) on instead, as the official LaX code passes
  latents after the crossing (a running sum over depth with the identity gate).
- The gate is 'identity' (default; no parameters), 'kron' or 'dense' (lax.py's KronGate / DenseGate, with
  their inits); no latent norm (the formula of methods.md 3.3 has none, and B = 0 keeps the start exact).
- Dropout acts on the block's input x only, not on the incoming latent.

Initialisation: A is 'kaiming_uniform' (default, PEFT's kaiming_uniform_(a=sqrt(5)) on the (r, d_in) torch
weight: U(-1/sqrt(d_in), 1/sqrt(d_in))) or 'gaussian' (PEFT's init_lora_weights='gaussian': N(0, 1/r^2));
B = 0, so an adapter starts as the identity edit.

Every adapter parameter is a `LoRAParam` (an nnx.Param subclass); EigenLoRAx's loadings are the plain
nnx.Params of `EigenLoRA` under the attribute 'eigenlora'. `ADAPTER_PARAMS` selects both and nothing else:
`train(..., trainable=ADAPTER_PARAMS)`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lax_pretrain.adapters.base import base_axes, check_base, merged_kernel
from lax_pretrain.adapters.eigenlorax.module import EIGEN_ATTR
from lax_pretrain.layers import DenseGate, KronGate
from lax_pretrain.nnx_compat import AXES_KEY

LORA_INITS = ("kaiming_uniform", "gaussian")
LAX_GATES = ("identity", "kron", "dense")
LAX_LATENTS = ("own", "crossed")


class LoRAParam(nnx.Param):
    """A trainable adapter parameter; the frozen base's parameters stay plain nnx.Param."""


# Every trainable adapter variable: LoRA factors and gates (LoRAParam) and EigenLoRAx loadings.
ADAPTER_PARAMS = nnx.Any(LoRAParam, nnx.All(nnx.Param, nnx.PathContains(EIGEN_ATTR)))


def lora_param(value: jax.Array, axes: tuple[str | None, ...]) -> LoRAParam:
    return LoRAParam(value, **{AXES_KEY: tuple(axes)}, eager_sharding=False)


def _as_adapter_params(module: nnx.Module) -> nnx.Module:
    """Re-types a gate's nnx.Params as LoRAParams (keeping values and metadata), so they train with the adapter."""
    for name, value in list(vars(module).items()):
        if isinstance(value, nnx.Param) and not isinstance(value, LoRAParam):
            setattr(module, name, LoRAParam(value.get_value(), **value.get_metadata()))
    return module


class LoRA(nnx.Module):
    """LoRA or LaX-LoRA around a frozen factory map `base`.

    rank, alpha: r and the scale s = alpha / r (alpha None: alpha = r, s = 1).
    lax: LaX-LoRA (thread the adapter latent across blocks); `first` marks block 0 (no gate, no incoming
        latent). gate: 'identity' | 'kron' | 'dense' (crossing blocks only). lax_latent: 'own' | 'crossed'.
    init: 'kaiming_uniform' | 'gaussian' for A (B is zero). dropout: rate on the adapter's input.
    axes: logical names of (d_in, d_out) for A and B (default: those of the base's parameters).
    """

    def __init__(
        self,
        base: nnx.Module,
        rank: int,
        *,
        alpha: float | None = None,
        dropout: float = 0.0,
        lax: bool = False,
        first: bool = True,
        gate: str = "identity",
        lax_latent: str = "own",
        init: str = "kaiming_uniform",
        axes: tuple[str | None, str | None] | None = None,
        rngs: nnx.Rngs,
        name: str = "lora",
    ):
        check_base(base)
        if int(rank) < 1:
            raise ValueError(f"{name}: LoRA rank must be >= 1, got {rank}")
        if init not in LORA_INITS:
            raise ValueError(f"{name}: init={init!r} is not one of {', '.join(LORA_INITS)}")
        if gate not in LAX_GATES:
            raise ValueError(f"{name}: gate={gate!r} is not one of {', '.join(LAX_GATES)}")
        if lax_latent not in LAX_LATENTS:
            raise ValueError(f"{name}: lax_latent={lax_latent!r} is not one of {', '.join(LAX_LATENTS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout={dropout} must be in [0, 1)")
        self.base = base
        self.d_in, self.d_out, self.rank, self.name = base.d_in, base.d_out, int(rank), name
        self.alpha = float(alpha if alpha is not None else rank)
        self.scale = self.alpha / self.rank
        self.lax, self.first, self.gate_kind, self.lax_latent = bool(lax), bool(first), gate, lax_latent
        in_axis, out_axis = axes if axes is not None else base_axes(base)
        key = rngs.params()
        if init == "kaiming_uniform":
            bound = 1.0 / math.sqrt(self.d_in)
            a = jax.random.uniform(key, (self.d_in, self.rank), jnp.float32, -bound, bound)
        else:
            a = jax.random.normal(key, (self.d_in, self.rank), jnp.float32) / self.rank
        self.lora_a = lora_param(a, (in_axis, "rank"))
        self.lora_b = lora_param(jnp.zeros((self.rank, self.d_out), jnp.float32), ("rank", out_axis))
        gate_module = None
        if self.crossed and gate == "kron":
            gate_module = _as_adapter_params(KronGate(self.rank, rngs=rngs))
        elif self.crossed and gate == "dense":
            gate_module = _as_adapter_params(DenseGate(self.rank, self.rank, rngs=rngs))
        self.gate = gate_module
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    @property
    def crossed(self) -> bool:
        """Whether this block adds the previous block's adapter latent (LaX-LoRA, blocks 1..L-1)."""
        return self.lax and not self.first

    def _split_latent(self, latent_in: Any) -> tuple[Any, jax.Array | None]:
        if not self.lax:
            return latent_in, None
        if latent_in is None and not self.crossed:
            return None, None
        if not isinstance(latent_in, dict) or "lora" not in latent_in:
            if self.first:  # an unadapted previous block handed on its base latent only
                return latent_in, None
            raise ValueError(
                f"{self.name}: LaX-LoRA needs latent_in = {{'base': ..., 'lora': h}} from the same "
                f"projection of the previous block, got {type(latent_in).__name__}"
            )
        return latent_in["base"], latent_in["lora"]

    def __call__(self, x: jax.Array, latent_in: Any = None) -> tuple[jax.Array, Any]:
        base_in, h_prev = self._split_latent(latent_in)
        y, base_out = self.base(x, base_in)
        x_in = self.dropout(x) if self.dropout is not None else x
        h = x_in @ self.lora_a[...].astype(x_in.dtype)  # (..., r): this block's adapter latent
        u = h
        if self.crossed:
            h_prev = h_prev.astype(h.dtype).reshape(h.shape)
            u = h + (self.gate(h_prev) if self.gate is not None else h_prev)
        y = y + (self.scale * (u @ self.lora_b[...].astype(u.dtype))).astype(y.dtype)
        if not self.lax:
            return y, base_out
        return y, {"base": base_out, "lora": u if self.lax_latent == "crossed" else h}

    def factors(self) -> tuple[jax.Array, jax.Array]:
        """(A (d_in, r), s B (r, d_out)): the EigenLoRAx convention, the scale folded into B.
        For LaX-LoRA these are the per-block factors; the crossing is not part of them."""
        return self.lora_a[...], self.scale * self.lora_b[...]

    def merge(self) -> jax.Array:
        """The dense (d_in, d_out) kernel W + s A B of base + adapter (bias excluded), for export."""
        if self.crossed:
            raise ValueError(
                f"{self.name}: a LaX-LoRA block adds the previous block's adapter latent, which "
                "depends on the previous block's input; it has no single merged kernel"
            )
        return merged_kernel(self.base, *self.factors(), "a LoRA")

    @property
    def param_count(self) -> int:
        """Trainable adapter parameters (A, B, gate); the base is frozen and not counted."""
        gate = self.gate.param_count if self.gate is not None else 0
        return self.rank * (self.d_in + self.d_out) + gate
