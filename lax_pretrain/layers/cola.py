"""CoLA: a nonlinearity on the low-rank latent, y = act(x A) B + b (SiLU for LLaMA, exact GELU for ViT).

The activation itself is the shared `FactorizedLinear.activate` (any kind may switch it on with
`latent_act`); for CoLA it is always on. Not a linear map, so it has no `materialize()`.
"""

from __future__ import annotations

from lax_pretrain.layers.svd import LowRank


class CoLALinear(LowRank):
    pass
