"""The learning-rate schedule every optimizer shares: linear warm-up, then cosine decay to `min_lr_ratio * lr`."""

from __future__ import annotations

from typing import Any

import optax


def lr_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
    warmup = min(optim_cfg.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=optim_cfg.get("warmup_init_lr", 0.0),
        peak_value=optim_cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim_cfg.lr * optim_cfg.min_lr_ratio,
    )
