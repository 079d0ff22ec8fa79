"""`optim.name=adamw` (the default): optax AdamW, eps inside the bias-corrected denominator, decoupled weight
decay scaled by the learning rate, masked by `optim.weight_decay_mask`: PyTorch's AdamW, which the CoLA and LaX
codes use."""

from __future__ import annotations

from typing import Any

import optax

from lax_pretrain.optim.base import Optimizer, register_optimizer
from lax_pretrain.optim.decay import decay_mask


def build_adamw(optim_cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(
        schedule,
        b1=optim_cfg.b1,
        b2=optim_cfg.b2,
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        mask=decay_mask(optim_cfg.weight_decay_mask),
    )


register_optimizer(
    "adamw", Optimizer(build=build_adamw, sources={"optim.name": "CoLA and LaX codes: torch.optim.AdamW"})
)
