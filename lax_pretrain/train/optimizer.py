"""optax AdamW with linear warmup + cosine decay to `min_lr_ratio * lr`, global-norm clipping, and the
weight-decay mask as a config choice.

`optim.weight_decay_mask`:
  'all'    every parameter is decayed (the CoLA LLaMA code: AdamW over `model.parameters()`).
  'no_1d'  the LaX ViT code (timm's `param_groups_weight_decay` with `no_weight_decay() = {pos_embed,
           cls_token}`), decided by a parameter's role from its path, never by its shape: biases, every norm's
           scale and bias, the cls token and the position embedding are not decayed; factors (down/up, every
           TT core), gates, dense kernels, the patch embedding and the head are. A shape rule would decay the
           (L-1, d) biases of a scanned stack and spare the (1, n_1, r_1) first TT core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

WEIGHT_DECAY_MASKS = ("all", "no_1d")
# Leaf names that are biases, and top-level tokens timm lists in `no_weight_decay()`.
BIAS_NAMES = ("bias", "patch_bias", "head_bias")
TOKEN_NAMES = ("cls", "pos")


def lr_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
    warmup = min(optim_cfg.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=optim_cfg.get("warmup_init_lr", 0.0),
        peak_value=optim_cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim_cfg.lr * optim_cfg.min_lr_ratio,
    )


def _names(path: Sequence[Any]) -> tuple[str, ...]:
    """The attribute names along a pytree path (list indices and the Variable's 'value' dropped)."""
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", None))
        if isinstance(name, str) and name != "value":
            names.append(name)
    return tuple(names)


def decays(names: Sequence[str]) -> bool:
    """Whether the 'no_1d' recipe decays the parameter at this path of attribute names."""
    leaf, owner = names[-1], (names[-2] if len(names) > 1 else "")
    is_norm = owner.endswith("norm")  # attn_norm, mlp_norm, final_norm, hidden_norm, latent_norm
    return not (leaf in BIAS_NAMES or is_norm or (len(names) == 1 and leaf in TOKEN_NAMES))


def decay_mask(kind: str):
    """None (decay everything) or a function params -> a pytree of bools, True where decayed."""
    if kind == "all":
        return None
    return lambda params: jax.tree_util.tree_map_with_path(lambda path, _: decays(_names(path)), params)


def make_optimizer(optim_cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if optim_cfg.weight_decay_mask not in WEIGHT_DECAY_MASKS:
        raise ValueError(
            f"optim.weight_decay_mask={optim_cfg.weight_decay_mask!r} is not one of "
            f"{', '.join(WEIGHT_DECAY_MASKS)}"
        )
    schedule = lr_schedule(optim_cfg, total_steps)
    chain = [
        optax.adamw(
            schedule,
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
            mask=decay_mask(optim_cfg.weight_decay_mask),
        )
    ]
    if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(optim_cfg.clip_norm))
    return optax.chain(*chain), schedule
