"""Optimizers by name (`optim.name`), built from the config's `optim` section: the registry, the shared
learning-rate schedule and weight-decay mask, and the built-in entries (importing this package registers them).

    tx, schedule = make_optimizer(config.optim, config.train.steps)
"""

from __future__ import annotations

from typing import Any

import optax
from jax.sharding import Mesh

from lax_pretrain.optim import adamw, apollo, fira, galore  # noqa: F401  (registers the built-in optimizers)
from lax_pretrain.optim.base import (
    OPTIMIZERS,
    Optimizer,
    mirror_param_shardings,
    optimizer_name,
    own_section,
    register_optimizer,
)
from lax_pretrain.optim.decay import WEIGHT_DECAY_MASKS, decay_mask, decays, path_names
from lax_pretrain.optim.schedule import lr_schedule


def make_optimizer(optim_cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The `optim.name` entry's transformation, behind global-norm clipping when `optim.clip_norm` > 0."""
    entry = OPTIMIZERS.get(optimizer_name(optim_cfg), key="optim.name")
    decay_mask(optim_cfg.weight_decay_mask)  # an unknown mask is refused before anything is built
    schedule = lr_schedule(optim_cfg, total_steps)
    chain = [entry.build(optim_cfg, schedule)]
    if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(optim_cfg.clip_norm))
    return optax.chain(*chain), schedule


def state_shardings(optim_cfg: Any, tx: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """The optimizer state's shardings, as the `optim.name` entry lays its state out."""
    return OPTIMIZERS.get(optimizer_name(optim_cfg), key="optim.name").state_shardings(tx, params, mesh)


def validate_optimizer(optim_cfg: Any) -> None:
    """The entry exists, its own section holds only its keys, and its own checks pass (no data, no devices)."""
    name = optimizer_name(optim_cfg)
    entry = OPTIMIZERS.get(name, key="optim.name")
    own_section(optim_cfg, name)
    if entry.validate is not None:
        entry.validate(optim_cfg)


def optimizer_sections() -> dict[str, dict]:
    """`optim.<name>` defaults of every registered optimizer that has its own keys (base_config adds them, so
    `--config.optim.<name>.<key>=...` works from the command line)."""
    return {name: dict(entry.hparams) for name, entry in OPTIMIZERS.items() if entry.hparams}


__all__ = [
    "OPTIMIZERS",
    "Optimizer",
    "WEIGHT_DECAY_MASKS",
    "decay_mask",
    "decays",
    "lr_schedule",
    "make_optimizer",
    "mirror_param_shardings",
    "optimizer_name",
    "optimizer_sections",
    "own_section",
    "path_names",
    "register_optimizer",
    "state_shardings",
    "validate_optimizer",
]
