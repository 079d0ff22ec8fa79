"""Which parameters weight decay applies to: `optim.weight_decay_mask`, decided by a parameter's role.

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

WEIGHT_DECAY_MASKS = ("all", "no_1d")
# Leaf names that are biases, and top-level tokens timm lists in `no_weight_decay()`.
BIAS_NAMES = ("bias", "patch_bias", "head_bias")
TOKEN_NAMES = ("cls", "pos")


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
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
    if kind not in WEIGHT_DECAY_MASKS:
        raise ValueError(f"optim.weight_decay_mask={kind!r} is not one of {', '.join(WEIGHT_DECAY_MASKS)}")
    if kind == "all":
        return None
    return lambda params: jax.tree_util.tree_map_with_path(lambda path, _: decays(path_names(path)), params)
