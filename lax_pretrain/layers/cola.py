"""CoLA: a nonlinearity on the low-rank latent, y = act(x A) B + b (SiLU for LLaMA, exact GELU for ViT).

The activation itself is the shared `FactorizedLinear.activate` (any kind may switch it on with
`latent_act`); for CoLA it is always on. Not a linear map, so it has no `materialize()`.
"""

from __future__ import annotations

from lax_pretrain.layers.registry import register_kind
from lax_pretrain.layers.spec import LinearSpec, SpecError
from lax_pretrain.layers.svd import LowRank, check_rank, low_rank_kind


class CoLALinear(LowRank):
    pass


def check_cola(spec: LinearSpec, d_in: int, d_out: int, where: str) -> LinearSpec:
    if not spec.latent_act:
        raise SpecError(f"{where}.latent_act=False: CoLA is defined by its latent activation; use kind 'svd'")
    return check_rank(spec, d_in, d_out, where)


register_kind(
    "cola", low_rank_kind(CoLALinear, check=check_cola, latent_act=True, exports=frozenset({"cola", "lax"}))
)
