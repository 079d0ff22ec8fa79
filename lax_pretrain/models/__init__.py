"""Models built only from the factory: a LLaMA-style decoder and a ViT.

    model = lax_pretrain.models.build(config.model, rngs=nnx.Rngs(0))
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from lax_pretrain.models.llama import Llama
from lax_pretrain.models.vit import ViT

FAMILIES = {"llama": Llama, "vit": ViT}


def build(model_cfg: Any, *, rngs: nnx.Rngs) -> Llama | ViT:
    family = model_cfg.family
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[family](model_cfg, rngs=rngs)


__all__ = ["FAMILIES", "Llama", "ViT", "build"]
