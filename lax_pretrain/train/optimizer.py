"""optax AdamW with linear warmup + cosine decay to `min_lr_ratio * lr`, global-norm clipping, and the
weight-decay mask as a config choice ('all' as in the CoLA code; 'no_1d' skips biases, norms, cls/pos as
in the LaX ViT recipe)."""

from __future__ import annotations

from typing import Any

import jax
import optax

WEIGHT_DECAY_MASKS = ("all", "no_1d")


def lr_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
    warmup = min(optim_cfg.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim_cfg.lr * optim_cfg.min_lr_ratio)


def _decay_mask(kind: str):
    if kind == "all":
        return None
    # 1-D parameters (biases, norm scales) and the position/cls tokens (leading dims of size 1) are not decayed.
    return lambda params: jax.tree.map(lambda p: p.ndim > 1 and p.shape[0] != 1, params)


def make_optimizer(optim_cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if optim_cfg.weight_decay_mask not in WEIGHT_DECAY_MASKS:
        raise ValueError(f"optim.weight_decay_mask={optim_cfg.weight_decay_mask!r} is not one of "
                         f"{', '.join(WEIGHT_DECAY_MASKS)}")
    schedule = lr_schedule(optim_cfg, total_steps)
    chain = [optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                         weight_decay=optim_cfg.weight_decay, mask=_decay_mask(optim_cfg.weight_decay_mask))]
    if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(optim_cfg.clip_norm))
    return optax.chain(*chain), schedule
