"""CoLA: a nonlinearity on the low-rank latent, y = act(x A) B + b (SiLU for LLaMA, exact GELU for ViT).

Not a linear map, so it has no `materialize()`.
"""

from __future__ import annotations

import jax

from lax_pretrain.layers.svd import LowRank

_ACTIVATIONS = {"silu": jax.nn.silu, "gelu": lambda u: jax.nn.gelu(u, approximate=False)}


class CoLALinear(LowRank):
    def activate(self, u: jax.Array) -> jax.Array:
        return _ACTIVATIONS[self.spec.activation](u)
